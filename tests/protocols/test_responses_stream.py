"""The Responses writer's events are written partly by hand (delta events from pieces encoded
once): each must be, byte for byte, the compact JSON that encoding the whole event gives."""

from __future__ import annotations

import json
from typing import Any

from leapasgi.protocols.responses import ResponsesStreamWriter, parse_responses_request
from leapasgi.types import ChatCompletionChunk

AWKWARD = 'a "quote", a \\ backslash,\nlines\ttabs \x01 \x7f é 😀 \u2028 </script>'


def chunk(delta: dict[str, Any], finish: str | None = None) -> ChatCompletionChunk:
    choice = {"index": 0, "delta": delta, "finish_reason": finish}
    return ChatCompletionChunk.model_validate({"id": "c", "model": "u", "choices": [choice]})


def call(index: int, arguments: str, **function: Any) -> dict[str, Any]:
    return {"tool_calls": [{"index": index, "function": {"arguments": arguments, **function}}]}


def frames(raw: bytes) -> list[tuple[str, str]]:
    """(event name, data) of each SSE frame."""
    assert raw.endswith(b"\n\n")
    out = []
    for frame in raw.decode()[:-2].split("\n\n"):
        name, data = frame.split("\n")
        out.append((name.removeprefix("event: "), data.removeprefix("data: ")))
    return out


def assert_encoded_whole(raw: bytes) -> list[dict[str, Any]]:
    events = []
    for name, data in frames(raw):
        event = json.loads(data)
        assert data == json.dumps(event, separators=(",", ":"), ensure_ascii=False)
        assert event["type"] == name
        events.append(event)
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    return events


def test_every_event_is_its_own_compact_json_whatever_the_text() -> None:
    req = parse_responses_request({"model": "m", "input": AWKWARD, "instructions": AWKWARD})
    writer = ResponsesStreamWriter(req, response_id="resp_1", created_at=1)
    batches = [
        [chunk({"role": "assistant", "content": ""}), chunk({"content": AWKWARD})],
        [chunk({"content": AWKWARD}), chunk({"refusal": AWKWARD}), chunk({"content": "x"})],
        [chunk(call(0, '{"q":"', id="call_1", name="f")), chunk(call(0, AWKWARD + '"}'))],
        [chunk(call(1, AWKWARD, id="call_2", name="g")), chunk({}, "length")],
    ]
    raw = writer.preamble() + b"".join(writer.feed(batch) for batch in batches)
    events = assert_encoded_whole(raw + writer.complete())

    deltas = [e for e in events if e["type"].endswith(".delta")]
    assert [e["type"] for e in deltas] == [
        "response.output_text.delta",
        "response.output_text.delta",
        "response.refusal.delta",
        "response.output_text.delta",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.delta",
    ]
    assert [e.get("content_index") for e in deltas[:4]] == [0, 0, 1, 2]
    assert [e["output_index"] for e in deltas] == [0, 0, 0, 0, 1, 1, 2]
    assert deltas[0]["delta"] == AWKWARD
    assert deltas[0]["logprobs"] == []
    assert "logprobs" not in deltas[2]
    text = events[-1]["response"]["output"][0]["content"][0]["text"]
    assert text == AWKWARD + AWKWARD


def test_a_failed_stream_is_its_own_compact_json() -> None:
    writer = ResponsesStreamWriter(
        parse_responses_request({"model": "m", "input": "x"}), response_id="resp_2", created_at=1
    )
    raw = writer.feed([chunk({"content": AWKWARD})])
    events = assert_encoded_whole(raw + writer.fail(AWKWARD, code="rate_limit_exceeded"))

    assert [e["type"] for e in events[-2:]] == ["response.failed", "error"]
    assert events[-1]["message"] == AWKWARD
