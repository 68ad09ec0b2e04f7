"""The Messages writer writes its delta and stop events by hand: each must be, byte for byte,
the compact (ASCII) JSON that encoding the whole event gives."""

from __future__ import annotations

import json
from typing import Any

from leapasgi.protocols.messages import parse_messages_request
from leapasgi.protocols.messages_stream import MessagesStreamWriter
from leapasgi.types import ChatCompletionChunk

AWKWARD = 'a "quote", a \\ backslash,\nlines\ttabs \x01 \x7f é 😀 \u2028 </script>'


def chunk(delta: dict[str, Any], finish: str | None = None) -> ChatCompletionChunk:
    choice = {"index": 0, "delta": delta, "finish_reason": finish}
    return ChatCompletionChunk.model_validate({"id": "c", "model": "u", "choices": [choice]})


def call(index: int, arguments: str, **function: Any) -> dict[str, Any]:
    return {"tool_calls": [{"index": index, "function": {"arguments": arguments, **function}}]}


def test_every_event_is_its_own_compact_json_whatever_the_text() -> None:
    body = {"model": "m", "max_tokens": 9, "messages": [{"role": "user", "content": AWKWARD}]}
    writer = MessagesStreamWriter(parse_messages_request(body), message_id="msg_1")
    batches = [
        [chunk({"role": "assistant", "content": AWKWARD}), chunk({"refusal": AWKWARD})],
        [chunk(call(0, '{"q":"', id="call_1", name="f")), chunk(call(0, AWKWARD + '"}'))],
        [chunk({"content": "x"}), chunk({}, "stop")],
    ]
    raw = b"".join(writer.feed(batch) for batch in batches) + writer.complete()

    assert raw.endswith(b"\n\n")
    events = []
    for frame in raw.decode()[:-2].split("\n\n"):
        name, data = frame.split("\n")
        event = json.loads(data.removeprefix("data: "))
        assert data.removeprefix("data: ") == json.dumps(event, separators=(",", ":"))
        assert name == "event: " + event["type"]
        events.append(event)
    deltas = [(e["index"], e["delta"]) for e in events if e["type"] == "content_block_delta"]
    assert deltas == [
        (0, {"type": "text_delta", "text": AWKWARD + AWKWARD}),
        (1, {"type": "input_json_delta", "partial_json": '{"q":"' + AWKWARD + '"}'}),
        (2, {"type": "text_delta", "text": "x"}),
    ]
    stops = [e["index"] for e in events if e["type"] == "content_block_stop"]
    assert stops == [0, 1, 2]
    assert events[-1] == {"type": "message_stop"}
