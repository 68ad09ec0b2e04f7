"""The official openai SDK against the gateway over real HTTP: every error as OpenAI's own."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from typing import Any

import openai
import pytest
from pydantic import SecretStr

from leapasgi.config import ServerConfig
from leapasgi.providers.mock import Fault
from tests.asgi.live_server import Serve, fast_routing, mock_config, upstream_config
from tests.asgi.sdk_wire import acollect_until_error, assert_openai_error_body, collect_until_error
from tests.fake_upstream import Behavior, FakeUpstream, error_body, sse, text_stream

HI: Any = [{"role": "user", "content": "hi"}]


def two_upstreams(upstreams: Sequence[FakeUpstream]) -> list[Any]:
    """Two upstreams serving ``m1``, tried in order, each once (no retries on one provider)."""
    return [
        upstream_config("first", upstreams[0], priority=0, max_retries=0),
        upstream_config("second", upstreams[1], priority=1, max_retries=0),
    ]


def one_upstream(upstreams: Sequence[FakeUpstream]) -> list[Any]:
    return [upstream_config("up", upstreams[0], max_retries=0)]


def test_bad_request(serve: Serve) -> None:
    live = serve()
    with live.client() as client:
        with pytest.raises(openai.BadRequestError) as caught:
            client.chat.completions.create(model="mock-chat", messages=HI, temperature=5)
        with pytest.raises(openai.BadRequestError) as streamed:
            client.chat.completions.create(
                model="mock-chat", messages=HI, temperature=5, stream=True
            )
    error = caught.value
    assert error.status_code == 400
    assert error.param == "temperature"
    assert error.type == "invalid_request_error"
    assert str(error).startswith("Error code: 400 - ")
    assert_openai_error_body(error.response)
    assert streamed.value.param == "temperature"
    assert live.mock().requests == []


def test_wrong_api_key(serve: Serve) -> None:
    fake = FakeUpstream()
    live = serve(one_upstream, upstreams=[fake], server=ServerConfig(api_keys=[SecretStr("right")]))
    with live.client(api_key="wrong") as client:
        with pytest.raises(openai.AuthenticationError) as caught:
            client.chat.completions.create(model="m1", messages=HI)
        with pytest.raises(openai.AuthenticationError):
            client.chat.completions.create(model="m1", messages=HI, stream=True)
        with pytest.raises(openai.AuthenticationError):
            client.models.list()
    assert caught.value.status_code == 401
    assert caught.value.code == "invalid_api_key"
    assert_openai_error_body(caught.value.response)
    assert fake.chat_requests == []
    with live.client(api_key="right") as client:
        answer = client.chat.completions.create(model="m1", messages=HI)
    assert answer.choices[0].message.content == "hello"
    assert len(fake.chat_requests) == 1


def test_unknown_model(serve: Serve) -> None:
    live = serve()
    with live.client() as client:
        with pytest.raises(openai.NotFoundError) as caught:
            client.chat.completions.create(model="no-such-model", messages=HI)
        with pytest.raises(openai.NotFoundError) as streamed:
            client.chat.completions.create(model="no-such-model", messages=HI, stream=True)
        with pytest.raises(openai.NotFoundError):
            client.models.retrieve("no-such-model")
    for error in (caught.value, streamed.value):
        assert error.status_code == 404
        assert error.code == "model_not_found"
        assert error.param == "model"
        assert_openai_error_body(error.response)
    assert live.mock().requests == []


def test_body_too_large(serve: Serve) -> None:
    live = serve(server=ServerConfig(max_body_bytes=2048))
    with live.client() as client:
        with pytest.raises(openai.APIStatusError) as caught:
            client.chat.completions.create(
                model="mock-chat", messages=[{"role": "user", "content": "x" * 100_000}]
            )
        small = client.chat.completions.create(model="mock-chat", messages=HI)
    assert type(caught.value) is openai.APIStatusError
    assert caught.value.status_code == 413
    assert caught.value.code == "request_too_large"
    assert_openai_error_body(caught.value.response)
    assert small.choices[0].message.content == "You said: hi"
    assert len(live.mock().requests) == 1


@pytest.mark.parametrize("stream", [False, True])
def test_every_upstream_rate_limited(serve: Serve, stream: bool) -> None:
    limited = Behavior(
        status=429,
        json_body=error_body("slow down", type="requests", code="rate_limit_exceeded"),
        headers={"retry-after": "1"},
    )
    fakes = [FakeUpstream(default=limited), FakeUpstream(default=limited)]
    live = serve(two_upstreams, upstreams=fakes, routing=fast_routing())
    # SDK retries on: x-should-retry false must stop them, or the upstreams see 3x the calls.
    with live.client(max_retries=2) as client, pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(model="m1", messages=HI, stream=stream)
    error = caught.value
    assert error.status_code == 429
    assert error.code == "rate_limit_exceeded"
    assert error.response.headers["retry-after"] == "1"
    assert error.response.headers["x-should-retry"] == "false"
    assert_openai_error_body(error.response)
    assert [len(f.chat_requests) for f in fakes] == [1, 1]


@pytest.mark.parametrize("stream", [False, True])
def test_every_upstream_failing(serve: Serve, stream: bool) -> None:
    fakes = [
        FakeUpstream(
            default=Behavior(status=500, json_body=error_body("boom", type="server_error"))
        ),
        FakeUpstream(
            default=Behavior(status=503, json_body=error_body("busy", type="server_error"))
        ),
    ]
    live = serve(two_upstreams, upstreams=fakes, routing=fast_routing())
    with (
        live.client(max_retries=2) as client,
        pytest.raises(openai.InternalServerError) as caught,
    ):
        client.chat.completions.create(model="m1", messages=HI, stream=stream)
    error = caught.value
    assert error.status_code == 503
    assert error.type == "server_error"
    assert error.response.headers["x-should-retry"] == "false"
    assert_openai_error_body(error.response)
    assert [len(f.chat_requests) for f in fakes] == [1, 1]


@pytest.mark.parametrize("stream", [False, True])
def test_a_retry_after_hold_is_waited_out_and_every_attempt_happens(
    serve: Serve, stream: bool
) -> None:
    # Each 429 holds the provider for 30 ms; every request waits its holds out and makes its
    # three tries (max_retries 2). uvloop's timers fire up to a millisecond early, which once
    # dropped the held provider: 503 no_provider_available with 0 attempts, or fewer tries.
    limited = Behavior(
        status=429,
        json_body=error_body("slow down", type="rate_limit_error"),
        headers={"retry-after-ms": "30"},
    )
    fake = FakeUpstream(default=limited)
    live = serve(
        lambda up: [upstream_config("up", up[0], max_retries=2)],
        upstreams=[fake],
        routing=fast_routing(),
    )
    seen: Counter[tuple[int, str]] = Counter()
    with live.client() as client:
        for _ in range(12):
            with pytest.raises(openai.RateLimitError) as caught:
                client.chat.completions.create(model="m1", messages=HI, stream=stream)
            seen[caught.value.status_code, caught.value.response.headers["x-leap-attempts"]] += 1
    assert seen == {(429, "3"): 12}
    assert len(fake.chat_requests) == 36


def test_failover_is_invisible_to_the_sdk(serve: Serve) -> None:
    fakes = [
        FakeUpstream(
            default=Behavior(status=500, json_body=error_body("boom", type="server_error"))
        ),
        FakeUpstream(),
    ]
    live = serve(two_upstreams, upstreams=fakes, routing=fast_routing())
    with live.client() as client:
        raw = client.chat.completions.with_raw_response.create(model="m1", messages=HI)
    assert raw.parse().choices[0].message.content == "hello"
    assert raw.headers["x-leap-provider"] == "second"
    assert raw.headers["x-leap-attempts"] == "2"


CONTEXT_TOO_LONG = Behavior(
    status=400,
    json_body={
        "error": {
            "message": "This model's maximum context length is 8192 tokens.",
            "type": "invalid_request_error",
            "param": "messages",
            "code": "context_length_exceeded",
        }
    },
    headers={"x-request-id": "req_err"},
)


def test_upstream_error_passes_through(serve: Serve) -> None:
    fakes = [FakeUpstream(default=CONTEXT_TOO_LONG), FakeUpstream()]
    live = serve(two_upstreams, upstreams=fakes, routing=fast_routing())
    with live.client(max_retries=2) as client, pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="m1", messages=HI)
    error = caught.value
    assert error.message == "Error code: 400 - This model's maximum context length is 8192 tokens."
    assert (error.type, error.param, error.code) == (
        "invalid_request_error",
        "messages",
        "context_length_exceeded",
    )
    assert_openai_error_body(error.response)
    # A 400 is the caller's fault: no failover, and the SDK does not retry it.
    assert [len(f.chat_requests) for f in fakes] == [1, 0]


def test_upstream_error_keeps_its_request_id(serve: Serve) -> None:
    fake = FakeUpstream(default=CONTEXT_TOO_LONG)
    live = serve(one_upstream, upstreams=[fake])
    with live.client() as client, pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="m1", messages=HI)
    assert caught.value.request_id == "req_err"


BROKEN_EVENTS = [
    *text_stream(["Hel", "lo"], done=False, finish=False),
    *sse(error_body("the model crashed", type="server_error", code="overloaded"), done=False),
]


def test_error_event_mid_stream(serve: Serve) -> None:
    fakes = [FakeUpstream(default=Behavior(events=BROKEN_EVENTS)), FakeUpstream()]
    live = serve(two_upstreams, upstreams=fakes, routing=fast_routing())
    with live.client(max_retries=2) as client:
        stream = client.chat.completions.create(model="m1", messages=HI, stream=True)
        received, error = collect_until_error(stream)
    assert not isinstance(error, openai.APIStatusError)
    assert error.message == "the model crashed"
    assert error.code == "overloaded"
    assert [c.choices[0].delta.content for c in received] == ["", "Hel", "lo"]
    assert received[0].choices[0].delta.role == "assistant"
    # Past the first chunk there is no failover: the second upstream would duplicate text.
    assert [len(f.chat_requests) for f in fakes] == [1, 0]


def test_error_event_mid_stream_through_the_helper(serve: Serve) -> None:
    fakes = [FakeUpstream(default=Behavior(events=BROKEN_EVENTS)), FakeUpstream()]
    live = serve(two_upstreams, upstreams=fakes, routing=fast_routing())
    with (
        live.client() as client,
        client.chat.completions.stream(model="m1", messages=HI) as stream,
    ):
        events, error = collect_until_error(stream)
        snapshot = stream.current_completion_snapshot
    assert error.message == "the model crashed"
    assert [e.delta for e in events if e.type == "content.delta"] == ["", "Hel", "lo"]
    assert snapshot.choices[0].message.content == "Hello"
    assert [len(f.chat_requests) for f in fakes] == [1, 0]


def test_stream_cut_mid_way(serve: Serve) -> None:
    events = text_stream(["Hel", "lo"], done=False, finish=False)
    fakes = [FakeUpstream(default=Behavior(events=events, then="reset")), FakeUpstream()]
    live = serve(two_upstreams, upstreams=fakes, routing=fast_routing())
    with live.client() as client:
        with client.chat.completions.with_streaming_response.create(
            model="m1", messages=HI, stream=True
        ) as response:
            lines = [line for line in response.iter_lines() if line]
        stream = client.chat.completions.create(model="m1", messages=HI, stream=True)
        received, error = collect_until_error(stream)
    assert not isinstance(error, openai.APIStatusError)
    assert error.type == "server_error"
    assert [c.choices[0].delta.content for c in received] == ["", "Hel", "lo"]
    # The in-band error is the last event: no [DONE] after it, nothing replayed before it.
    assert "[DONE]" not in lines[-1]
    assert "error" in json.loads(lines[-1].removeprefix("data: "))
    assert len(lines) == 4
    assert [len(f.chat_requests) for f in fakes] == [2, 0]


def test_mock_stream_cut_after_two_chunks(serve: Serve) -> None:
    live = serve()
    live.mock().inject(Fault.cut(after_chunks=2))
    with live.client() as client:
        stream = client.chat.completions.create(
            model="mock-chat", messages=[{"role": "user", "content": "one two three"}], stream=True
        )
        received, error = collect_until_error(stream)
    assert error.code == "stream_interrupted"
    assert [c.choices[0].delta.content for c in received] == ["", "You"]
    assert len(live.mock().requests) == 1


def test_keepalive_comments_while_the_upstream_thinks(serve: Serve) -> None:
    slow = Behavior(events=text_stream(["Hel", "lo"]), before=0.7)
    fake = FakeUpstream(default=slow)
    live = serve(one_upstream, upstreams=[fake], server=ServerConfig(keepalive_interval=0.2))
    with live.client(_strict_response_validation=True) as client:
        with client.chat.completions.with_streaming_response.create(
            model="m1", messages=HI, stream=True
        ) as response:
            lines = [line for line in response.iter_lines() if line]
        fake.push(slow)
        with client.chat.completions.stream(model="m1", messages=HI) as stream:
            for _ in stream:
                pass
            final = stream.get_final_completion()
    first_data = next(i for i, line in enumerate(lines) if line.startswith("data:"))
    # About 0.7 s of silence at 0.2 s intervals: comments come first, then the real stream.
    assert len(lines[:first_data]) >= 2
    assert all(line == ": ping" for line in lines[:first_data])
    assert lines[-1] == "data: [DONE]"
    assert final.choices[0].message.role == "assistant"
    assert final.choices[0].message.content == "Hello"


@pytest.mark.anyio
async def test_async_errors(serve: Serve) -> None:
    fakes = [FakeUpstream(default=Behavior(events=BROKEN_EVENTS)), FakeUpstream()]
    live = serve(
        lambda ups: [*two_upstreams(ups), mock_config()], upstreams=fakes, routing=fast_routing()
    )
    async with live.async_client() as client:
        with pytest.raises(openai.NotFoundError) as missing:
            await client.chat.completions.create(model="nope", messages=HI)
        with pytest.raises(openai.BadRequestError) as bad:
            await client.chat.completions.create(model="mock-chat", messages=HI, top_p=3)
        stream = await client.chat.completions.create(model="m1", messages=HI, stream=True)
        received, broken = await acollect_until_error(stream, openai.APIError)
    assert missing.value.code == "model_not_found"
    assert bad.value.param == "top_p"
    assert not isinstance(broken, openai.APIStatusError)
    assert broken.message == "the model crashed"
    assert [c.choices[0].delta.content for c in received] == ["", "Hel", "lo"]
