"""Responses passed through to upstreams that speak it, through the official openai SDK,
live: bodies, unknown fields and streams as the upstream sent them, failover before the first
content event (to a native or a translated provider), and no failover after it, where a cut
stream ends in an error."""

from __future__ import annotations

import json
import re
from typing import Any

import openai
import pytest

from tests.asgi.live_server import Serve, fast_routing, upstream_config
from tests.asgi.responses_support import (
    assert_stream_rules,
    chat_upstreams,
    mock_for_m1,
    native_upstreams,
    take_turn,
    text_of,
    text_order,
    types_of,
    user,
)
from tests.asgi.sdk_wire import collect_until_error, sse_events
from tests.fake_responses import ResponseEvents, encode, failed_stream, response_body
from tests.fake_responses import text_stream as native_stream
from tests.fake_upstream import Behavior, FakeUpstream, chunk, error_body, sse
from tests.fake_upstream import text_stream as chat_stream

# Passed through to an upstream that speaks Responses


CLIENT_FIELDS: Any = {
    "instructions": "Be brief.",
    "reasoning": {"effort": "low", "summary": "auto"},
    "include": ["reasoning.encrypted_content"],
    "prompt_cache_key": "session-42",
    "metadata": {"ticket": "T-7"},
    "max_output_tokens": 200,
    "service_tier": "auto",
}
# A field the SDK and the gateway do not know yet: it must still reach the upstream.
UNKNOWN: Any = {"future_option": {"mode": "x"}}


def test_native_json_passes_through(serve: Serve) -> None:
    body = encode(response_body("Hi!", reasoning=True))
    fake = FakeUpstream(
        default=Behavior(
            raw_body=body,
            headers={"content-type": "application/json", "x-request-id": "req_up_1"},
        )
    )
    live = serve(native_upstreams, upstreams=[fake])
    with live.client(api_key="client-key", _strict_response_validation=True) as client:
        raw = client.responses.with_raw_response.create(
            model="m1", input="hi", extra_body=UNKNOWN, **CLIENT_FIELDS
        )
        response = raw.parse()
        fake.push(
            Behavior(json_body=response_body("Again!", response_id="resp_up_2", reasoning=True))
        )
        follow_up = client.responses.create(
            model="m1", input="again", previous_response_id=response.id, extra_body=UNKNOWN
        )
    assert raw.http_response.content == body
    assert raw.headers["x-leap-provider"] == "up0"
    assert raw.headers["x-request-id"] == "req_up_1"
    assert response.id == "resp_up_1"
    assert response.output_text == "Hi!"
    assert follow_up.output_text == "Again!"
    first, second = fake.seen
    assert first.path == second.path == "/v1/responses"
    assert first.json == {
        "model": "m1",
        "input": [user("hi")],
        "stream": False,
        **CLIENT_FIELDS,
        **UNKNOWN,
    }
    assert "previous_response_id" not in second.json
    assert second.json["input"] == [
        user("hi"),
        *json.loads(body)["output"],
        user("again"),
    ]
    assert second.json["future_option"] == UNKNOWN["future_option"]
    for seen in (first, second):
        assert seen.headers["Authorization"] == "Bearer up-key"
        assert not any("client-key" in value for value in seen.headers.values())


def test_native_stream_passes_through(serve: Serve) -> None:
    frames = native_stream(["Hel", "lo", " there"], reasoning=True)
    fake = FakeUpstream(default=Behavior(events=frames))
    live = serve(native_upstreams, upstreams=[fake])
    with live.client(api_key="client-key", _strict_response_validation=True) as client:
        with client.responses.with_streaming_response.create(
            model="m1", input="hi", stream=True, extra_body=UNKNOWN, **CLIENT_FIELDS
        ) as raw:
            assert raw.headers["content-type"].startswith("text/event-stream")
            assert raw.headers["x-leap-provider"] == "up0"
            received = raw.read()
        with client.responses.stream(model="m1", input="hi", **CLIENT_FIELDS) as stream:
            kinds = [event.type for event in stream]
            final = stream.get_final_response()
        follow_up, _ = take_turn(
            client, stream=True, model="m1", input="more", previous_response_id=final.id
        )
    assert received == b"".join(frames)
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-1] == "response.completed"
    assert final.id == "resp_up_1"
    assert final.output_text == "Hello there"
    assert text_of(follow_up) == "Hello there"
    first, _, third = fake.seen
    assert first.json == {
        "model": "m1",
        "input": [user("hi")],
        "stream": True,
        **CLIENT_FIELDS,
        **UNKNOWN,
    }
    assert first.headers["Accept"] == "text/event-stream"
    assert "previous_response_id" not in third.json
    assert [item["type"] for item in third.json["input"]] == [
        "message",
        "reasoning",
        "message",
        "message",
    ]
    assert third.json["input"][-1] == user("more")
    for seen in fake.seen:
        assert seen.headers["Authorization"] == "Bearer up-key"
        assert not any("client-key" in value for value in seen.headers.values())


# Failover before the first content event


@pytest.mark.parametrize("failure", ["error", "error-nested", "response.failed"])
def test_a_native_failure_before_content_fails_over(serve: Serve, failure: str) -> None:
    answer = native_stream(["Hel", "lo"], response_id="resp_b")
    first = FakeUpstream(default=Behavior(events=failed_stream(failure)))
    second = FakeUpstream(default=Behavior(events=answer))
    live = serve(native_upstreams, upstreams=[first, second], routing=fast_routing())
    with live.client(_strict_response_validation=True) as client:
        with client.responses.with_streaming_response.create(
            model="m1", input="hi", stream=True
        ) as raw:
            headers = raw.headers
            received = raw.read()
        with client.responses.stream(model="m1", input="hi") as stream:
            final = stream.get_final_response()
    assert headers["x-leap-attempts"] == "2"
    assert headers["x-leap-provider"] == "up1"
    assert received == b"".join(answer)
    events = [data for _, data in sse_events(received.decode().splitlines())]
    assert types_of(events).count("response.created") == 1
    assert assert_stream_rules(events) == "resp_b"
    assert final.id == "resp_b"
    assert final.output_text == "Hello"
    assert len(first.seen) >= 1
    assert len(second.seen) == 2


QUOTA_429 = Behavior(
    status=429,
    json_body=error_body(
        "You exceeded your current quota", type="insufficient_quota", code="insufficient_quota"
    ),
)
# A chat stream that says only its role, then runs out of quota: still nothing to show.
ROLE_THEN_QUOTA = Behavior(
    events=sse(
        chunk({"role": "assistant", "content": ""}),
        error_body("You exceeded your current quota", code="insufficient_quota"),
        done=False,
    )
)
NATIVE: Any = {"protocols": ["responses"]}


@pytest.mark.parametrize(
    ("options", "failing", "stream"),
    [
        pytest.param({}, QUOTA_429, False, id="chat 429"),
        pytest.param({}, QUOTA_429, True, id="chat 429, stream"),
        pytest.param({}, ROLE_THEN_QUOTA, True, id="chat role then quota error, stream"),
        pytest.param(NATIVE, QUOTA_429, False, id="native 429"),
        pytest.param(
            NATIVE, Behavior(events=failed_stream("error")), True, id="native error event, stream"
        ),
    ],
)
def test_a_failure_before_content_fails_over_to_a_translated_provider(
    serve: Serve, options: Any, failing: Behavior, stream: bool
) -> None:
    """The first provider runs out of quota before any content; the mock answers, translated
    from chat, and the client sees only the mock's response."""
    fake = FakeUpstream(default=failing)
    live = serve(
        lambda ups: [
            upstream_config("first", ups[0], max_retries=0, **options),
            mock_for_m1(priority=1),
        ],
        upstreams=[fake],
        routing=fast_routing(),
    )
    with live.client(_strict_response_validation=True) as client:
        response, headers = take_turn(client, stream=stream, model="m1", input="hi there")
    assert headers["x-leap-attempts"] == "2"
    assert headers["x-leap-provider"] == "mock"
    assert re.fullmatch(r"resp_[0-9a-f]{24}", response["id"])
    assert text_of(response) == "You said: hi there"
    assert len(fake.seen) == 1


# Cuts after content

# A text response's events up to its second delta, where the streams below are cut.
TWO_DELTAS = text_order(2)[:6]


def test_a_native_stream_cut_after_content(serve: Serve) -> None:
    partial = ResponseEvents(response_id="resp_cut").preamble().text_open(["Hel", "lo"])
    first = FakeUpstream(default=Behavior(events=partial.frames, then="reset"))
    second = FakeUpstream(default=Behavior(events=native_stream(["no"])))
    live = serve(native_upstreams, upstreams=[first, second], routing=fast_routing())
    with live.client(_strict_response_validation=True) as client:
        stream = client.responses.create(model="m1", input="hi", stream=True)
        received, error = collect_until_error(stream)
        with pytest.raises(openai.NotFoundError):
            client.responses.retrieve("resp_cut")
    assert not isinstance(error, openai.APIStatusError)
    assert [e.type for e in received] == TWO_DELTAS
    assert {e.response.id for e in received[:2]} == {"resp_cut"}
    assert isinstance(error.body, dict)
    assert error.body["code"] == "stream_interrupted"
    # Past the first content event there is no failover: it would repeat text.
    assert (len(first.seen), len(second.seen)) == (1, 0)


def test_a_translated_stream_cut_after_content(serve: Serve) -> None:
    events = chat_stream(["Hel", "lo"], done=False, finish=False)
    first = FakeUpstream(default=Behavior(events=events, then="reset"))
    second = FakeUpstream()
    live = serve(chat_upstreams, upstreams=[first, second], routing=fast_routing())
    with live.client(_strict_response_validation=True) as client:
        stream = client.responses.create(model="m1", input="hi", stream=True)
        received, error = collect_until_error(stream)
        with client.responses.stream(model="m1", input="hi") as helper:
            helper_events, helper_error = collect_until_error(helper)
        with pytest.raises(openai.NotFoundError):
            client.responses.retrieve(received[0].response.id)
    assert not isinstance(error, openai.APIStatusError)
    assert isinstance(error.body, dict)
    assert error.body["code"] == "stream_interrupted"
    assert error.message == helper_error.message
    assert [e.type for e in helper_events][-1] == "response.failed"
    kinds = [e.type for e in received]
    assert kinds == [*TWO_DELTAS, "response.failed"]
    failed = received[-1].response
    assert failed.status == "failed"
    assert failed.error is not None
    assert failed.id == received[0].response.id
    assert [e.sequence_number for e in received] == list(range(len(received)))
    assert len(second.chat_requests) == 0
