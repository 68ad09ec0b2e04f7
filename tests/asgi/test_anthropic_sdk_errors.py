"""The official anthropic SDK against the gateway over real HTTP: every error class the SDK
maps, from the gateway and from upstreams (native and translated), and error events on a
stream after its first content."""

from __future__ import annotations

import threading
from typing import Any

import anthropic
import httpx
import pytest
from pydantic import SecretStr

from leapasgi.config import ServerConfig
from tests.asgi.live_server import CLIENT_TIMEOUT, Serve, fast_routing
from tests.asgi.messages_support import (
    HI,
    OVERLOADED_EVENT,
    OVERLOADED_STREAM,
    ask,
    assert_anthropic_error,
    native,
    text_of,
    translated,
)
from tests.fake_upstream import (
    Behavior,
    FakeUpstream,
    anthropic_error,
    anthropic_stream,
    error_body,
)

pytestmark = pytest.mark.anyio


async def test_bad_request(serve: Serve) -> None:
    live = serve()
    async with live.anthropic_client() as client:
        with pytest.raises(anthropic.BadRequestError) as empty:
            await client.messages.create(model="mock-chat", max_tokens=10, messages=[])
        with pytest.raises(anthropic.BadRequestError) as hot:
            await client.messages.create(
                model="mock-chat",
                max_tokens=10,
                messages=HI,
                stream=True,
                extra_body={"temperature": 5},
            )
    async with httpx.AsyncClient(base_url=live.origin, timeout=CLIENT_TIMEOUT) as http:
        missing = await http.post(
            "/v1/messages",
            json={"model": "mock-chat", "max_tokens": 10},
            headers={"anthropic-version": "2023-06-01"},
        )
        not_json = await http.post("/v1/messages", content=b"{not json")
    for error in (empty.value, hot.value):
        assert error.status_code == 400
        assert_anthropic_error(error.body, "invalid_request_error")
        assert error.type == "invalid_request_error"
    assert "messages" in empty.value.body["error"]["message"]  # type: ignore[index]
    assert "temperature" in hot.value.body["error"]["message"]  # type: ignore[index]
    assert missing.status_code == not_json.status_code == 400
    assert missing.headers["content-type"] == "application/json"
    assert_anthropic_error(missing.json(), "invalid_request_error")
    assert "messages" in missing.json()["error"]["message"]
    assert_anthropic_error(not_json.json(), "invalid_request_error")
    assert live.mock().requests == []


async def test_unknown_model(serve: Serve) -> None:
    live = serve()
    async with live.anthropic_client() as client:
        with pytest.raises(anthropic.NotFoundError) as caught:
            await client.messages.create(model="no-such-model", max_tokens=10, messages=HI)
        with pytest.raises(anthropic.NotFoundError) as streamed:
            await ask(client, stream=True, model="no-such-model")
    for error in (caught.value, streamed.value):
        assert error.status_code == 404
        assert_anthropic_error(error.body, "not_found_error")
    assert live.mock().requests == []


# (upstream status, Anthropic error type the upstream names) -> what the SDK raises.
UPSTREAM_FAILURES = [
    pytest.param(403, "permission_error", anthropic.PermissionDeniedError, 403, id="403"),
    pytest.param(429, "rate_limit_error", anthropic.RateLimitError, 429, id="429"),
    pytest.param(500, "api_error", anthropic.InternalServerError, 500, id="500"),
    pytest.param(503, "overloaded_error", anthropic.OverloadedError, 529, id="503"),
    pytest.param(529, "overloaded_error", anthropic.OverloadedError, 529, id="529"),
]
ANTHROPIC_TYPES = {
    403: "permission_error",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
@pytest.mark.parametrize("path", ["native", "translated"])
@pytest.mark.parametrize(("status", "kind", "raised", "seen_status"), UPSTREAM_FAILURES)
async def test_upstream_error_statuses(
    serve: Serve,
    path: str,
    stream: bool,
    status: int,
    kind: str,
    raised: type[anthropic.APIStatusError],
    seen_status: int,
) -> None:
    if path == "native":
        body = anthropic_error("the upstream says no", type=kind)
        provider = native
    else:
        body = error_body("the upstream says no", type=kind)
        provider = translated
    fake = FakeUpstream(default=Behavior(status=status, json_body=body))
    live = serve(lambda ups: [provider("up", ups[0])], upstreams=[fake], routing=fast_routing())
    async with live.anthropic_client() as client:
        with pytest.raises(anthropic.APIStatusError) as caught:
            await ask(client, stream=stream)
    error = caught.value
    assert type(error) is raised
    assert error.status_code == seen_status
    assert_anthropic_error(error.body, ANTHROPIC_TYPES[seen_status])
    assert error.api_message == "the upstream says no"
    assert error.response.headers["x-leap-attempts"] == "1"
    assert len(fake.seen) == 1


async def test_an_overloaded_event_before_content_is_overloaded(serve: Serve) -> None:
    # BUG: Anthropic signals overload on a stream with a 200, message_start and an
    # overloaded_error event. With no provider left to fail over to, the gateway answers
    # 500 api_error, where the same failure as an HTTP 529 is answered 529 overloaded_error
    # (error_from_payload makes UpstreamStreamError of it, which anthropic_error maps to 500).
    fake = FakeUpstream(default=Behavior(events=OVERLOADED_STREAM))
    live = serve(lambda ups: [native("up", ups[0])], upstreams=[fake])
    async with live.anthropic_client() as client:
        with pytest.raises(anthropic.APIStatusError) as caught:
            await client.messages.create(model="m1", max_tokens=10, messages=HI, stream=True)
    assert type(caught.value) is anthropic.OverloadedError
    assert caught.value.status_code == 529
    assert_anthropic_error(caught.value.body, "overloaded_error")


async def test_every_provider_down_is_overloaded(serve: Serve) -> None:
    live = serve(server=ServerConfig(admin_key=SecretStr("admin")))
    async with httpx.AsyncClient(base_url=live.origin, timeout=CLIENT_TIMEOUT) as http:
        put = await http.put(
            "/v1/providers/mock/status",
            json={"status": "inactive"},
            headers={"Authorization": "Bearer admin"},
        )
    assert put.status_code == 200
    async with live.anthropic_client() as client:
        with pytest.raises(anthropic.OverloadedError) as caught:
            await client.messages.create(model="mock-chat", max_tokens=10, messages=HI)
        with pytest.raises(anthropic.OverloadedError) as streamed:
            await client.messages.create(model="mock-chat", max_tokens=10, messages=HI, stream=True)
    for error in (caught.value, streamed.value):
        assert error.status_code == 529
        assert_anthropic_error(error.body, "overloaded_error")
        assert int(error.response.headers["retry-after"]) >= 1
    assert live.mock().requests == []


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
async def test_upstream_timeout_is_a_gateway_timeout(serve: Serve, stream: bool) -> None:
    fake = FakeUpstream(default=Behavior(hang_now=True))
    live = serve(lambda ups: [native("up", ups[0], timeout=0.3)], upstreams=[fake])
    async with live.anthropic_client() as client:
        with pytest.raises(anthropic.GatewayTimeoutError) as caught:
            await client.messages.create(model="m1", max_tokens=10, messages=HI, stream=stream)
    assert caught.value.status_code == 504
    assert_anthropic_error(caught.value.body, "timeout_error")
    assert len(fake.seen) == 1


def paused_stream(events: list[bytes], at: int) -> tuple[Behavior, threading.Event]:
    """``events`` played up to ``at``, the rest in one write once the test says so."""
    resume = threading.Event()
    pieces = [*events[:at], b"".join(events[at:])]
    return Behavior(events=pieces, pause_before=at, resume=resume), resume


async def stream_until_error(
    client: anthropic.AsyncAnthropic, resume: threading.Event
) -> tuple[list[Any], anthropic.APIStatusError]:
    """Stream ``m1``; once the first text arrives, let the upstream go on; the events and
    the error that ended the stream."""
    received: list[Any] = []
    try:
        stream = await client.messages.create(model="m1", max_tokens=10, messages=HI, stream=True)
        async for event in stream:
            received.append(event)
            if event.type == "content_block_delta":
                resume.set()
    except anthropic.APIStatusError as error:
        return received, error
    finally:
        resume.set()
    raise AssertionError("the stream ended without an error")


async def test_native_text_before_an_error_event_reaches_the_client(serve: Serve) -> None:
    # BUG: the upstream sent "Hel", then "lo" and an error event in one read; the gateway
    # drops "lo" (NativeStreamReader.feed raises before returning the events it had read),
    # where the chat path passes on the chunks that came before an error in the same read.
    events = [*anthropic_stream(["Hel", "lo"], finish=False), OVERLOADED_EVENT]
    behavior, resume = paused_stream(events, at=4)  # "lo" and the error come together
    fake = FakeUpstream(default=behavior)
    live = serve(lambda ups: [native("up", ups[0])], upstreams=[fake])
    async with live.anthropic_client() as client:
        received, error = await stream_until_error(client, resume)
    assert error.status_code == 200  # in-band, after the first byte
    assert text_of(received) == "Hello"


async def test_native_error_event_keeps_its_type(serve: Serve) -> None:
    # BUG: an upstream's overloaded_error event after content reaches the client as api_error
    # (UpstreamStreamError maps to 500 api_error), although the same upstream failure before
    # content is answered as 529 overloaded_error: Claude Code and the SDKs tell them apart.
    events = [*anthropic_stream(["Hel", "lo"], finish=False), OVERLOADED_EVENT]
    behavior, resume = paused_stream(events, at=5)  # the error event alone, after "lo"
    fake = FakeUpstream(default=behavior)
    live = serve(lambda ups: [native("up", ups[0])], upstreams=[fake])
    async with live.anthropic_client() as client:
        received, error = await stream_until_error(client, resume)
    assert text_of(received) == "Hello"
    assert_anthropic_error(error.body, "overloaded_error")
    assert error.api_message == "Overloaded"
