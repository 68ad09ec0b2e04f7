"""Reading a native Responses or Messages stream: the preamble held back until content, error
events as LeapErrors (before content: failover; after it: the stream's end), usage noted, and
a stream cut before its last event never taken for a whole one."""

from __future__ import annotations

import json
from typing import Any

import pytest

from leapasgi.exceptions import (
    LeapError,
    MalformedStreamError,
    RateLimitError,
    StreamInterruptedError,
    UpstreamUnavailableError,
)
from leapasgi.native import WireProtocol
from leapasgi.providers._native import NativeStreamReader, reply_usage
from leapasgi.sse import SSEEvent

SECRET = "sk-upstream-secret-123456"


def ev(name: str, **data: Any) -> SSEEvent:
    return SSEEvent(json.dumps({"type": name, **data}), event=name)


def reader(protocol: WireProtocol) -> NativeStreamReader:
    return NativeStreamReader(
        protocol, provider="up", redact=lambda text: text.replace(SECRET, "[redacted]")
    )


CREATED = ev("response.created", response={"id": "resp_1", "status": "in_progress"})
IN_PROGRESS = ev("response.in_progress", response={"id": "resp_1", "status": "in_progress"})
DELTA = ev("response.output_text.delta", delta="Hi", item_id="msg_1")
COMPLETED = ev(
    "response.completed",
    response={"id": "resp_1", "usage": {"input_tokens": 7, "output_tokens": 3}},
)


def test_the_responses_preamble_is_held_until_the_first_content_event() -> None:
    r = reader(WireProtocol.RESPONSES)
    assert r.feed([CREATED, IN_PROGRESS]) == []
    out = r.feed([DELTA])
    assert [e.name for e in out] == [
        "response.created",
        "response.in_progress",
        "response.output_text.delta",
    ]
    assert out[0].sse().startswith(b"event: response.created\ndata: ")
    assert r.feed([COMPLETED])[0].name == "response.completed"
    assert r.done
    assert r.usage == (7, 3, 0)
    r.finish()


def test_a_quota_error_after_response_created_raises_before_anything_is_passed_on() -> None:
    r = reader(WireProtocol.RESPONSES)
    quota = ev("error", code="insufficient_quota", message=f"No quota for key {SECRET}")
    with pytest.raises(RateLimitError) as caught:
        r.feed([CREATED, IN_PROGRESS, quota])
    assert SECRET not in caught.value.message
    assert caught.value.provider == "up"


def test_response_failed_raises_with_the_responses_error() -> None:
    r = reader(WireProtocol.RESPONSES)
    failed = ev(
        "response.failed",
        response={"id": "resp_1", "error": {"code": "server_error", "message": "boom"}},
    )
    with pytest.raises(LeapError, match="boom"):
        r.feed([CREATED, failed])


def test_an_error_after_content_raises_too() -> None:
    r = reader(WireProtocol.RESPONSES)
    assert len(r.feed([CREATED, DELTA])) == 2
    with pytest.raises(LeapError):
        r.feed([ev("error", code="server_error", message="lost it")])


def test_content_read_together_with_an_error_is_passed_on_before_it() -> None:
    r = reader(WireProtocol.RESPONSES)
    out = r.feed([CREATED, DELTA, ev("error", code="server_error", message="lost it")])
    assert [e.name for e in out] == ["response.created", "response.output_text.delta"]
    assert r.failure is not None
    assert r.failure.message == "lost it"


def test_a_stream_cut_before_its_last_event_is_an_interruption() -> None:
    r = reader(WireProtocol.RESPONSES)
    r.feed([CREATED, DELTA])
    with pytest.raises(StreamInterruptedError):
        r.finish()


def test_messages_hold_message_start_and_ping_and_count_usage_from_both_ends() -> None:
    r = reader(WireProtocol.MESSAGES)
    start = ev("message_start", message={"id": "msg_1", "usage": {"input_tokens": 11}})
    assert r.feed([start, ev("ping")]) == []
    block = ev("content_block_start", index=0, content_block={"type": "text", "text": ""})
    assert [e.name for e in r.feed([block])] == ["message_start", "ping", "content_block_start"]
    r.feed([ev("message_delta", delta={"stop_reason": "end_turn"}, usage={"output_tokens": 5})])
    r.feed([ev("message_stop")])
    assert r.done
    assert r.usage == (11, 5, 0)
    r.finish()


def test_an_anthropic_overloaded_error_before_content_fails_over() -> None:
    r = reader(WireProtocol.MESSAGES)
    start = ev("message_start", message={"id": "msg_1"})
    overloaded = ev("error", error={"type": "overloaded_error", "message": "Overloaded"})
    with pytest.raises(UpstreamUnavailableError) as caught:
        r.feed([start, overloaded])
    assert caught.value.retryable
    assert caught.value.upstream_status == 529


def test_bad_json_is_a_malformed_stream() -> None:
    with pytest.raises(MalformedStreamError):
        reader(WireProtocol.MESSAGES).feed([SSEEvent("{not json", event="message_start")])


def test_usage_of_whole_answers_in_every_protocol() -> None:
    assert reply_usage({"usage": {"input_tokens": 3, "output_tokens": 4}}) == (3, 4, 0)
    assert reply_usage({"usage": {"prompt_tokens": 9, "total_tokens": 9}}) == (9, 0, 0)
    assert reply_usage({"id": "x"}) is None


def test_cached_prompt_tokens_are_read_in_every_protocol() -> None:
    # OpenAI's Responses and chat: cached tokens are part of the input.
    responses = {
        "input_tokens": 100,
        "output_tokens": 5,
        "input_tokens_details": {"cached_tokens": 60},
    }
    assert reply_usage({"usage": responses}) == (100, 5, 60)
    chat = {
        "prompt_tokens": 80,
        "completion_tokens": 2,
        "prompt_tokens_details": {"cached_tokens": 64},
    }
    assert reply_usage({"usage": chat}) == (80, 2, 64)
    # Anthropic's: cache reads and writes are counted apart from input_tokens.
    messages = {
        "input_tokens": 10,
        "output_tokens": 7,
        "cache_read_input_tokens": 500,
        "cache_creation_input_tokens": 40,
    }
    assert reply_usage({"usage": messages}) == (550, 7, 500)
