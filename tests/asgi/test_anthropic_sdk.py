"""The official anthropic SDK against the gateway over real HTTP: Messages as Anthropic answers
them, translated over the mock or an OpenAI-compatible upstream, or passed through to an
upstream that speaks Messages; errors, failover and cut streams as the SDK sees them."""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import anthropic
import httpx
import pytest
from pydantic import SecretStr

from leapasgi.config import ProviderConfig, ServerConfig
from leapasgi.types import ToolMessage
from tests.asgi.live_server import (
    LOOPS,
    LiveGateway,
    fast_routing,
    live_gateway,
    upstream_config,
)
from tests.fake_upstream import (
    Behavior,
    FakeUpstream,
    anthropic_error,
    anthropic_event,
    anthropic_message,
    anthropic_stream,
    chunk,
    error_body,
    sse,
    text_stream,
)

pytestmark = pytest.mark.anyio

Serve = Callable[..., LiveGateway]

HI: Any = [{"role": "user", "content": "hi there"}]
PNG_1PX = (
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5E"
    "rkJggg=="
)
WEATHER_TOOL: Any = {
    "name": "get_weather",
    "description": "The weather in a city",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}
CLIENT_TIMEOUT = 10.0
# What a native Messages upstream may receive: the gateway's own headers, aiohttp's, and the
# protocol's allow-list (anthropic-version, anthropic-beta); nothing else of the client's.
UPSTREAM_HEADERS = frozenset(
    {
        "host",
        "accept",
        "accept-encoding",
        "content-length",
        "content-type",
        "user-agent",
        "authorization",
        "x-api-key",
        "anthropic-version",
        "anthropic-beta",
    }
)


@pytest.fixture(scope="module", params=LOOPS)
def live(request: pytest.FixtureRequest) -> Iterator[LiveGateway]:
    """One gateway with the mock provider, shared by the tests that only read from it."""
    with live_gateway(loop=request.param) as gateway:
        yield gateway


@pytest.fixture(params=LOOPS)
def serve(request: pytest.FixtureRequest) -> Iterator[Serve]:
    """Start gateways with their own providers and upstreams, on each event loop; all stop
    after the test."""
    loop = request.param
    with contextlib.ExitStack() as stack:
        yield lambda *args, **options: stack.enter_context(
            live_gateway(*args, loop=loop, **options)
        )


def root(live: LiveGateway) -> str:
    """The gateway's origin: the anthropic SDK adds ``/v1/messages`` itself."""
    return f"http://127.0.0.1:{live.port}"


def claude(live: LiveGateway, **options: Any) -> anthropic.AsyncAnthropic:
    """An async anthropic client for the gateway, with SDK retries off unless asked for."""
    if "auth_token" not in options:
        options.setdefault("api_key", "k")
    options.setdefault("max_retries", 0)
    options.setdefault("timeout", CLIENT_TIMEOUT)
    return anthropic.AsyncAnthropic(base_url=root(live), **options)


def native(name: str, fake: FakeUpstream, **options: Any) -> ProviderConfig:
    """A provider speaking Messages natively, tried once."""
    options.setdefault("max_retries", 0)
    return upstream_config(name, fake, protocols=["messages"], **options)


def translated(name: str, fake: FakeUpstream, **options: Any) -> ProviderConfig:
    """A chat-only provider: Messages reach it translated, tried once."""
    options.setdefault("max_retries", 0)
    return upstream_config(name, fake, **options)


def assert_anthropic_error(body: Any, kind: str) -> None:
    """Anthropic's error shape: ``{"type": "error", "error": {"type", "message"}}``."""
    assert body["type"] == "error"
    assert set(body) <= {"type", "error", "request_id"}
    assert set(body["error"]) == {"type", "message"}
    assert body["error"]["type"] == kind
    assert isinstance(body["error"]["message"], str)
    assert body["error"]["message"]


async def collect_until_error(
    stream: Any,
) -> tuple[list[Any], anthropic.APIStatusError]:
    """What a stream yielded before it raised, and the error."""
    received = []
    try:
        async for event in stream:
            received.append(event)
    except anthropic.APIStatusError as error:
        return received, error
    raise AssertionError("the stream ended without an error")


async def ask(client: anthropic.AsyncAnthropic, *, stream: bool, model: str = "m1") -> Any:
    """One request, whole or through the SDK's stream helper; the final message."""
    if not stream:
        return await client.messages.create(model=model, max_tokens=10, messages=HI)
    async with client.messages.stream(model=model, max_tokens=10, messages=HI) as helper:
        return await helper.get_final_message()


def text_of(events: Sequence[Any]) -> str:
    return "".join(
        e.delta.text
        for e in events
        if e.type == "content_block_delta" and e.delta.type == "text_delta"
    )


def sse_events(lines: Sequence[str]) -> list[tuple[str | None, Any]]:
    """(event name, JSON data) of each event of an SSE body given as lines."""
    events: list[tuple[str | None, Any]] = []
    name: str | None = None
    for line in lines:
        if line.startswith("event:"):
            name = line.removeprefix("event:").strip()
        elif line.startswith("data:"):
            events.append((name, json.loads(line.removeprefix("data:"))))
            name = None
    return events


# Over the mock: Messages translated to chat and back.


async def test_create(live: LiveGateway) -> None:
    async with claude(live, _strict_response_validation=True) as client:
        raw = await client.messages.with_raw_response.create(
            model="mock-chat", max_tokens=100, system="Be brief.", messages=HI
        )
        message = await raw.parse()
    assert raw.headers["x-leap-provider"] == "mock"
    assert raw.headers["x-leap-attempts"] == "1"
    assert raw.headers["content-type"] == "application/json"
    assert message._request_id == raw.headers["request-id"]  # noqa: SLF001 (the SDK's attribute)
    assert message.id.startswith("msg_")
    assert (message.type, message.role, message.model) == ("message", "assistant", "mock-chat")
    [block] = message.content
    assert block.type == "text"
    assert block.text == "You said: hi there"
    assert message.stop_reason == "end_turn"
    assert message.stop_sequence is None
    # The mock counts a token a word: "Be brief." and "hi there" in, four words out.
    assert (message.usage.input_tokens, message.usage.output_tokens) == (4, 4)
    chat = live.mock().requests[-1]
    assert [m.role for m in chat.messages] == ["system", "user"]
    assert chat.messages[0].content == "Be brief."
    assert chat.max_completion_tokens == 100


async def test_stop_sequence_and_max_tokens(live: LiveGateway) -> None:
    words: Any = [{"role": "user", "content": "one two three four five"}]
    async with claude(live) as client:
        stopped = await client.messages.create(
            model="mock-chat", max_tokens=100, messages=words, stop_sequences=["three"]
        )
        cut = await client.messages.create(model="mock-chat", max_tokens=2, messages=words)
    assert stopped.content[0].type == "text"
    assert stopped.content[0].text == "You said: one two "
    assert stopped.stop_reason == "end_turn"
    assert cut.content[0].type == "text"
    assert cut.content[0].text == "You said:"
    assert cut.stop_reason == "max_tokens"


async def test_stream_text(live: LiveGateway) -> None:
    words: Any = [{"role": "user", "content": "one two three"}]
    async with claude(live) as client:
        async with client.messages.stream(
            model="mock-chat", max_tokens=100, messages=words
        ) as stream:
            pieces = [piece async for piece in stream.text_stream]
            final = await stream.get_final_message()
            headers = stream.response.headers
        events = [
            event
            async for event in await client.messages.create(
                model="mock-chat", max_tokens=100, messages=words, stream=True
            )
        ]
    assert headers["content-type"].startswith("text/event-stream")
    assert headers["x-leap-provider"] == "mock"
    assert len(pieces) > 1
    assert "".join(pieces) == "You said: one two three"
    [block] = final.content
    assert block.type == "text"
    assert block.text == "".join(pieces)
    assert final.stop_reason == "end_turn"
    assert final.usage.output_tokens == 5
    assert final.id.startswith("msg_")
    kinds = [e.type for e in events]
    assert kinds[0] == "message_start"
    assert kinds[1] == "content_block_start"
    assert set(kinds[2:-3]) == {"content_block_delta"}
    assert kinds[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    start = events[0]
    assert start.type == "message_start"
    assert start.message.content == []
    assert text_of(events) == "You said: one two three"


async def test_tool_use_and_round_trip(live: LiveGateway) -> None:
    question: Any = [{"role": "user", "content": "Call get_weather for Paris"}]
    async with claude(live) as client:
        asked = await client.messages.create(
            model="mock-chat", max_tokens=100, tools=[WEATHER_TOOL], messages=question
        )
        async with client.messages.stream(
            model="mock-chat", max_tokens=100, tools=[WEATHER_TOOL], messages=question
        ) as stream:
            streamed = await stream.get_final_message()
        [call] = asked.content
        assert call.type == "tool_use"
        result: Any = [
            *question,
            {"role": "assistant", "content": [block.model_dump() for block in asked.content]},
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": call.id, "content": "18C and sunny"}
                ],
            },
        ]
        answer = await client.messages.create(
            model="mock-chat", max_tokens=100, tools=[WEATHER_TOOL], messages=result
        )
    assert asked.stop_reason == "tool_use"
    assert call.name == "get_weather"
    assert isinstance(call.input, dict)
    assert set(call.input) == {"city"}
    assert isinstance(call.input["city"], str)
    assert call.id
    assert streamed.stop_reason == "tool_use"
    [streamed_call] = streamed.content
    assert streamed_call.type == "tool_use"
    assert streamed_call.name == "get_weather"
    assert streamed_call.input == call.input
    assert answer.stop_reason == "end_turn"
    [text] = answer.content
    assert text.type == "text"
    assert text.text == "The tool returned: 18C and sunny"
    chat = live.mock().requests[-1]
    assert [m.role for m in chat.messages] == ["user", "assistant", "tool"]
    tool = chat.messages[2]
    assert isinstance(tool, ToolMessage)
    assert tool.tool_call_id == call.id


async def test_image_block(live: LiveGateway) -> None:
    image: Any = [
        {
            "role": "user",
            "content": [
                {
                    "type": "image",
                    "source": {"type": "base64", "media_type": "image/png", "data": PNG_1PX},
                },
                {"type": "text", "text": "what is this"},
            ],
        }
    ]
    async with claude(live) as client:
        message = await client.messages.create(model="mock-chat", max_tokens=100, messages=image)
    assert message.content[0].type == "text"
    assert message.content[0].text == "You said: what is this"
    [user] = live.mock().requests[-1].messages
    parts = user.model_dump(exclude_none=True)["content"]
    assert parts[0] == {
        "type": "image_url",
        "image_url": {"url": "data:image/png;base64," + PNG_1PX},
    }
    assert parts[1] == {"type": "text", "text": "what is this"}


async def test_count_tokens_is_an_estimate(live: LiveGateway) -> None:
    served = len(live.mock().requests)
    async with claude(live) as client:
        raw = await client.messages.with_raw_response.count_tokens(model="mock-chat", messages=HI)
        short = await raw.parse()
        longer = await client.messages.count_tokens(
            model="mock-chat",
            system="You are a careful assistant. " * 20,
            tools=[WEATHER_TOOL],
            messages=HI,
        )
        with pytest.raises(anthropic.NotFoundError) as missing:
            await client.messages.count_tokens(model="no-such-model", messages=HI)
    assert raw.headers["x-leap-estimate"] == "true"
    assert raw.http_response.json()["estimated"] is True
    assert short.input_tokens >= 1
    assert longer.input_tokens > short.input_tokens
    assert_anthropic_error(missing.value.body, "not_found_error")
    assert len(live.mock().requests) == served  # counting never calls a model


async def test_models_in_anthropic_shape(live: LiveGateway) -> None:
    async with claude(live) as client:
        page = await client.models.list()
        model = await client.models.retrieve("mock-chat")
        with pytest.raises(anthropic.NotFoundError) as missing:
            await client.models.retrieve("no-such-model")
    assert [m.id for m in page.data] == ["mock-chat"]
    assert page.has_more is False
    assert (model.id, model.type) == ("mock-chat", "model")
    assert_anthropic_error(missing.value.body, "not_found_error")


async def test_client_keys(serve: Serve) -> None:
    live = serve(server=ServerConfig(api_keys=[SecretStr("right")]))
    params: Any = {"model": "mock-chat", "max_tokens": 50, "messages": HI}
    # anthropic 2.17 sends api_key= as a Bearer token; x-api-key is what ANTHROPIC_API_KEY
    # clients (Claude Code among them) send, so it is set by hand here.
    as_x_api_key: Any = {"x-api-key": "right", "Authorization": anthropic.omit}
    async with (
        claude(live, api_key="right") as by_key,
        claude(live, auth_token="right") as by_token,
        claude(live, default_headers=as_x_api_key) as by_header,
        claude(live, api_key="wrong") as wrong,
        claude(live, default_headers={**as_x_api_key, "x-api-key": "wrong"}) as wrong_header,
    ):
        for client in (by_key, by_token, by_header):
            raw = await client.messages.with_raw_response.create(**params)
            message = await raw.parse()
            assert message.content[0].type == "text"
            assert message.content[0].text == "You said: hi there"
            sent = raw.http_request.headers
            if client is by_header:
                assert "authorization" not in sent
                assert sent["x-api-key"] == "right"
            else:
                assert sent["authorization"] == "Bearer right"
            async with client.messages.stream(**params) as stream:
                assert await stream.get_final_text() == "You said: hi there"
        errors = []
        for client in (wrong, wrong_header):
            with pytest.raises(anthropic.AuthenticationError) as caught:
                await client.messages.create(**params)
            errors.append(caught.value)
            with pytest.raises(anthropic.AuthenticationError) as streamed:
                await client.messages.create(**params, stream=True)
            errors.append(streamed.value)
            with pytest.raises(anthropic.AuthenticationError):
                await client.messages.count_tokens(model="mock-chat", messages=HI)
    for error in errors:
        assert error.status_code == 401
        assert_anthropic_error(error.body, "authentication_error")
        assert error.request_id == error.response.headers["request-id"]
    assert len(live.mock().requests) == 6


# Every error class the SDK maps, through the gateway.


async def test_bad_request(serve: Serve) -> None:
    live = serve()
    async with claude(live) as client:
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
    async with httpx.AsyncClient(base_url=root(live), timeout=CLIENT_TIMEOUT) as http:
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
    async with claude(live) as client:
        with pytest.raises(anthropic.NotFoundError) as caught:
            await client.messages.create(model="no-such-model", max_tokens=10, messages=HI)
        with pytest.raises(anthropic.NotFoundError) as streamed:
            await ask(client, stream=True, model="no-such-model")
    for error in (caught.value, streamed.value):
        assert error.status_code == 404
        assert_anthropic_error(error.body, "not_found_error")
    assert live.mock().requests == []


OVERLOADED_STREAM = [
    anthropic_event(
        "message_start",
        {"message": {**anthropic_message(None, message_id="msg_lost"), "stop_reason": None}},
    ),
    anthropic_event("ping"),
    anthropic_event("error", anthropic_error("Overloaded", type="overloaded_error")),
]


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
    async with claude(live) as client:
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
    async with claude(live) as client:
        with pytest.raises(anthropic.APIStatusError) as caught:
            await client.messages.create(model="m1", max_tokens=10, messages=HI, stream=True)
    assert type(caught.value) is anthropic.OverloadedError
    assert caught.value.status_code == 529
    assert_anthropic_error(caught.value.body, "overloaded_error")


async def test_every_provider_down_is_overloaded(serve: Serve) -> None:
    live = serve(server=ServerConfig(admin_key=SecretStr("admin")))
    async with httpx.AsyncClient(base_url=root(live), timeout=CLIENT_TIMEOUT) as http:
        put = await http.put(
            "/v1/providers/mock/status",
            json={"status": "inactive"},
            headers={"Authorization": "Bearer admin"},
        )
    assert put.status_code == 200
    async with claude(live) as client:
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
    async with claude(live) as client:
        with pytest.raises(anthropic.GatewayTimeoutError) as caught:
            await client.messages.create(model="m1", max_tokens=10, messages=HI, stream=stream)
    assert caught.value.status_code == 504
    assert_anthropic_error(caught.value.body, "timeout_error")
    assert len(fake.seen) == 1


# Native pass-through: the client's body as sent, the provider's key, the allow-listed headers.

CLIENT_HEADERS = {
    "anthropic-version": "2023-06-01",
    "anthropic-beta": "fancy-feature-2099-01-01,another-beta-2099-02-02",
    "x-app": "cli",
    "X-Claude-Code-Session-Id": "session-123",
    "anthropic-dangerous-direct-browser-access": "true",
    "Cookie": "session=secret",
    "X-Forwarded-For": "10.0.0.1",
}
RICH_BODY: Any = {
    "model": "m1",
    "max_tokens": 2048,
    "system": [{"type": "text", "text": "sys", "cache_control": {"type": "ephemeral"}}],
    "messages": [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "hi", "cache_control": {"type": "ephemeral", "ttl": "1h"}}
            ],
        }
    ],
    "thinking": {"type": "enabled", "budget_tokens": 1024},
    "metadata": {"user_id": "user-42"},
}
UNKNOWN_FIELDS = {"brand_new_field": {"nested": [1, 2, 3]}, "service_tier": "auto"}


def assert_native_request(seen: Any, body: Any) -> None:
    """What a native upstream must receive: the body unchanged, the provider's key, the
    client's anthropic-version and anthropic-beta, and no other header of the client's."""
    assert seen.path == "/v1/messages"
    assert seen.json == body
    headers = {name.lower(): value for name, value in seen.headers.items()}
    assert set(headers) <= UPSTREAM_HEADERS, set(headers) - UPSTREAM_HEADERS
    assert headers["x-api-key"] == "up-key"
    assert headers.get("authorization", "Bearer up-key") == "Bearer up-key"
    assert headers["anthropic-beta"] == CLIENT_HEADERS["anthropic-beta"]
    assert headers["anthropic-version"] == "2023-06-01"
    assert headers["user-agent"].startswith("leapasgi/")
    assert not any("client-key" in value for value in headers.values())


async def test_native_pass_through(serve: Serve) -> None:
    answer = anthropic_message(
        content=[
            {"type": "thinking", "thinking": "hmm", "signature": "sig"},
            {"type": "text", "text": "from upstream"},
        ],
        input_tokens=11,
        output_tokens=3,
    )
    raw_answer = json.dumps(answer, separators=(",", ":")).encode()
    fake = FakeUpstream(default=Behavior(raw_body=raw_answer, headers={"x-request-id": "up_1"}))
    live = serve(lambda ups: [native("up", ups[0])], upstreams=[fake])
    async with claude(live, api_key="client-key", default_headers=CLIENT_HEADERS) as client:
        raw = await client.messages.with_raw_response.create(
            **RICH_BODY, extra_body=UNKNOWN_FIELDS, extra_query={"beta": "true"}
        )
        message = await raw.parse()
    [seen] = fake.seen
    assert_native_request(seen, {**RICH_BODY, **UNKNOWN_FIELDS})
    assert raw.http_response.content == raw_answer
    assert raw.headers["x-leap-provider"] == "up"
    assert raw.headers["request-id"] == raw.headers["x-request-id"] == "up_1"
    assert [block.type for block in message.content] == ["thinking", "text"]
    assert message.id == "msg_fake"
    assert message.usage.input_tokens == 11


async def test_native_stream_pass_through(serve: Serve) -> None:
    events = anthropic_stream(["Hel", "lo"])
    fake = FakeUpstream(default=Behavior(events=events))
    live = serve(lambda ups: [native("up", ups[0])], upstreams=[fake])
    async with claude(live, api_key="client-key", default_headers=CLIENT_HEADERS) as client:
        async with client.messages.with_streaming_response.create(
            **RICH_BODY, stream=True, extra_body=UNKNOWN_FIELDS
        ) as response:
            wire = b"".join([part async for part in response.http_response.aiter_bytes()])
            headers = response.headers
        async with client.messages.stream(**RICH_BODY, extra_body=UNKNOWN_FIELDS) as stream:
            pieces = [piece async for piece in stream.text_stream]
            final = await stream.get_final_message()
    assert headers["content-type"].startswith("text/event-stream")
    assert headers["x-leap-provider"] == "up"
    assert wire == b"".join(events)
    assert len(fake.messages_requests) == len(fake.seen) == 2
    for seen in fake.seen:
        assert_native_request(seen, {**RICH_BODY, **UNKNOWN_FIELDS, "stream": True})
        assert seen.headers["Accept"] == "text/event-stream"
    assert pieces == ["Hel", "lo"]
    assert final.id == "msg_fake"
    assert final.content[0].type == "text"
    assert final.content[0].text == "Hello"
    assert final.stop_reason == "end_turn"


async def test_native_count_tokens(serve: Serve) -> None:
    fake = FakeUpstream(default=Behavior(json_body={"input_tokens": 321}))
    live = serve(lambda ups: [native("up", ups[0])], upstreams=[fake])
    async with claude(live, api_key="client-key", default_headers=CLIENT_HEADERS) as client:
        raw = await client.messages.with_raw_response.count_tokens(model="m1", messages=HI)
        count = await raw.parse()
    assert count.input_tokens == 321
    assert "x-leap-estimate" not in raw.headers
    [seen] = fake.seen
    assert seen.path == "/v1/messages/count_tokens"
    assert seen.json == {"model": "m1", "messages": HI}
    assert seen.headers["x-api-key"] == "up-key"


async def test_count_tokens_estimated_when_the_native_count_fails(serve: Serve) -> None:
    fake = FakeUpstream(
        default=Behavior(status=404, json_body=anthropic_error("no", type="not_found_error"))
    )
    live = serve(lambda ups: [native("up", ups[0])], upstreams=[fake])
    async with claude(live) as client:
        raw = await client.messages.with_raw_response.count_tokens(model="m1", messages=HI)
        count = await raw.parse()
    assert raw.headers["x-leap-estimate"] == "true"
    assert raw.http_response.json()["estimated"] is True
    assert count.input_tokens >= 1
    assert [seen.path for seen in fake.seen] == ["/v1/messages/count_tokens"]


def tool_call(
    index: int, *, call_id: str | None = None, name: str | None = None, arguments: str = ""
) -> dict[str, Any]:
    function: dict[str, Any] = {"arguments": arguments}
    if name is not None:
        function["name"] = name
    call: dict[str, Any] = {"index": index, "function": function}
    if call_id is not None:
        call |= {"id": call_id, "type": "function"}
    return {"tool_calls": [call]}


async def test_parallel_tool_calls_from_a_translated_stream(serve: Serve) -> None:
    # Two calls whose arguments come interleaved, as some upstreams send parallel calls.
    events = sse(
        chunk({"role": "assistant", "content": None}),
        chunk(tool_call(0, call_id="call_a", name="get_weather")),
        chunk(tool_call(1, call_id="call_b", name="get_weather")),
        chunk(tool_call(0, arguments='{"city": ')),
        chunk(tool_call(1, arguments='{"city": "Oslo"}')),
        chunk(tool_call(0, arguments='"Paris"}')),
        chunk({}, finish="tool_calls"),
    )
    fake = FakeUpstream(default=Behavior(events=events))
    live = serve(lambda ups: [translated("up", ups[0])], upstreams=[fake])
    question: Any = [{"role": "user", "content": "Weather in Paris and Oslo?"}]
    async with (
        claude(live) as client,
        client.messages.stream(
            model="m1", max_tokens=100, tools=[WEATHER_TOOL], messages=question
        ) as stream,
    ):
        final = await stream.get_final_message()
    assert final.stop_reason == "tool_use"
    calls = [(b.id, b.name, b.input) for b in final.content if b.type == "tool_use"]
    assert calls == [
        ("call_a", "get_weather", {"city": "Paris"}),
        ("call_b", "get_weather", {"city": "Oslo"}),
    ]
    [seen] = fake.chat_requests
    assert seen.json["tools"][0]["function"]["name"] == "get_weather"


@pytest.mark.parametrize("path", ["mock", "native"])
async def test_streams_carry_the_request_id(serve: Serve, path: str) -> None:
    # BUG: JSON answers and errors carry ``request-id`` (what the anthropic SDK reads), SSE
    # answers only ``x-request-id``: ``MessageStream.request_id`` is None for every stream.
    if path == "mock":
        live, model = serve(), "mock-chat"
    else:
        fake = FakeUpstream(default=Behavior(events=anthropic_stream(["hi"])))
        live, model = serve(lambda ups: [native("up", ups[0])], upstreams=[fake]), "m1"
    async with (
        claude(live) as client,
        client.messages.stream(model=model, max_tokens=10, messages=HI) as stream,
    ):
        await stream.get_final_message()
        request_id = stream.request_id
        headers = stream.response.headers
    assert headers["x-request-id"].startswith("req_")
    assert request_id == headers["x-request-id"]


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


OVERLOADED_EVENT = anthropic_event("error", anthropic_error("Overloaded", type="overloaded_error"))


async def test_native_text_before_an_error_event_reaches_the_client(serve: Serve) -> None:
    # BUG: the upstream sent "Hel", then "lo" and an error event in one read; the gateway
    # drops "lo" (NativeStreamReader.feed raises before returning the events it had read),
    # where the chat path passes on the chunks that came before an error in the same read.
    events = [*anthropic_stream(["Hel", "lo"], finish=False), OVERLOADED_EVENT]
    behavior, resume = paused_stream(events, at=4)  # "lo" and the error come together
    fake = FakeUpstream(default=behavior)
    live = serve(lambda ups: [native("up", ups[0])], upstreams=[fake])
    async with claude(live) as client:
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
    async with claude(live) as client:
        received, error = await stream_until_error(client, resume)
    assert text_of(received) == "Hello"
    assert_anthropic_error(error.body, "overloaded_error")
    assert error.api_message == "Overloaded"


# Failover before the first content event; no failover after it.

OVERLOADED_529 = Behavior(
    status=529, json_body=anthropic_error("Overloaded", type="overloaded_error")
)


# How the first provider fails before any content: (its path, what it answers).
FAILS_BEFORE_CONTENT = [
    pytest.param("native", Behavior(events=OVERLOADED_STREAM), id="native-error-event"),
    pytest.param("native", OVERLOADED_529, id="native-529"),
    pytest.param("native", Behavior(events=OVERLOADED_STREAM[:2]), id="native-start-then-eof"),
    pytest.param(
        "translated",
        Behavior(
            events=sse(
                chunk({"role": "assistant", "content": ""}),
                error_body("busy", type="server_error", code="overloaded"),
                done=False,
            )
        ),
        id="translated-role-then-error",
    ),
]


@pytest.mark.parametrize(("first_path", "first"), FAILS_BEFORE_CONTENT)
@pytest.mark.parametrize("second_path", ["native", "translated"])
async def test_failover_before_content(
    serve: Serve, first_path: str, first: Behavior, second_path: str
) -> None:
    if second_path == "native":
        second = FakeUpstream(default=Behavior(events=anthropic_stream(["Hel", "lo"])))
    else:
        second = FakeUpstream(default=Behavior(events=text_stream(["Hel", "lo"])))
    paths = {"native": native, "translated": translated}
    fakes = [FakeUpstream(default=first), second]
    live = serve(
        lambda ups: [
            paths[first_path]("first", ups[0], priority=0),
            paths[second_path]("second", ups[1], priority=1),
        ],
        upstreams=fakes,
        routing=fast_routing(),
    )
    async with claude(live) as client:
        stream = await client.messages.create(model="m1", max_tokens=10, messages=HI, stream=True)
        events = [event async for event in stream]
        async with client.messages.stream(model="m1", max_tokens=10, messages=HI) as helper:
            final = await helper.get_final_message()
    assert stream.response.headers["x-leap-attempts"] == "2"
    assert stream.response.headers["x-leap-provider"] == "second"
    kinds = [e.type for e in events]
    assert kinds.count("message_start") == 1
    assert kinds[0] == "message_start"
    assert kinds[-1] == "message_stop"
    start = events[0]
    assert start.type == "message_start"
    assert start.message.id != "msg_lost"
    assert text_of(events) == "Hello"
    assert final.content[0].type == "text"
    assert final.content[0].text == "Hello"
    assert [len(f.seen) for f in fakes] == [2, 2]


CUT = [
    pytest.param("native", "end", id="native-closed"),
    pytest.param("native", "reset", id="native-reset"),
    pytest.param("translated", "end", id="translated-closed"),
    pytest.param("translated", "reset", id="translated-reset"),
]


@pytest.mark.parametrize(("path", "then"), CUT)
async def test_cut_after_content_raises(serve: Serve, path: str, then: str) -> None:
    if path == "native":
        events = anthropic_stream(["Hel", "lo"], finish=False)
        provider = native
    else:
        events = text_stream(["Hel", "lo"], done=False, finish=False)
        provider = translated
    fakes = [
        FakeUpstream(default=Behavior(events=events, then=then)),
        FakeUpstream(default=Behavior(events=anthropic_stream(["other"]))),
    ]
    live = serve(
        lambda ups: [provider("first", ups[0], priority=0), native("second", ups[1], priority=1)],
        upstreams=fakes,
        routing=fast_routing(),
    )
    async with claude(live) as client:
        stream = await client.messages.create(model="m1", max_tokens=10, messages=HI, stream=True)
        received, error = await collect_until_error(stream)
        with pytest.raises(anthropic.APIStatusError) as helper_error:
            async with client.messages.stream(model="m1", max_tokens=10, messages=HI) as helper:
                await helper.get_final_message()
        snapshot = helper.current_message_snapshot
    assert text_of(received) == "Hello"
    assert received[0].type == "message_start"
    assert "message_stop" not in [e.type for e in received]
    assert stream.response.status_code == 200
    for caught in (error, helper_error.value):
        assert_anthropic_error(caught.body, "api_error")
    assert snapshot.content[0].type == "text"
    assert snapshot.content[0].text == "Hello"
    # Past the first content event there is no failover: the second would repeat the text.
    assert [len(f.seen) for f in fakes] == [2, 0]


# Claude Code's own requests, as recorded.

CLAUDE_CODE_HEADERS = {
    "anthropic-version": "2023-06-01",
    "anthropic-beta": (
        "claude-code-20250219,interleaved-thinking-2025-05-14,unknown-beta-2099-12-31"
    ),
    "anthropic-dangerous-direct-browser-access": "true",
    "x-app": "cli",
    "X-Claude-Code-Session-Id": "9f1c2d3e-0000-4000-8000-000000000001",
    "X-Stainless-Lang": "js",
    "X-Stainless-Retry-Count": "0",
    "Accept-Encoding": "gzip, deflate, br, zstd",
    "Authorization": "Bearer cc-token",
}
TOOL_NAMES = ["Bash", "Glob", "Grep", "Read", "Edit", "Write", "WebFetch", "TodoWrite"]


def claude_code_tools() -> list[dict[str, Any]]:
    tools: list[dict[str, Any]] = [
        {
            "name": name,
            "description": f"The {name} tool",
            "input_schema": {
                "type": "object",
                "properties": {"argument": {"type": "string", "description": "what to do"}},
                "required": ["argument"],
                "additionalProperties": False,
                "$schema": "http://json-schema.org/draft-07/schema#",
            },
        }
        for name in TOOL_NAMES
    ]
    tools[6]["defer_loading"] = True
    return tools


def claude_code_body(messages: list[dict[str, Any]], model: str) -> dict[str, Any]:
    return {
        "model": model,
        "max_tokens": 128000,
        "stream": True,
        "system": [
            {"type": "text", "text": "You are Claude Code, Anthropic's official CLI."},
            {
                "type": "text",
                "text": "You are an interactive CLI tool that helps with software tasks.",
                "cache_control": {"type": "ephemeral"},
            },
        ],
        "messages": messages,
        "tools": claude_code_tools(),
        "metadata": {
            "user_id": json.dumps(
                {"device_id": "d" * 64, "account_uuid": "", "session_id": "9f1c2d3e"}
            )
        },
        "thinking": {"type": "adaptive"},
        "context_management": {"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]},
        "output_config": {"effort": "medium"},
    }


REMINDER = {"role": "system", "content": "<system-reminder>Stay on task.</system-reminder>"}


def claude_code_turn(prompt: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": [{"type": "text", "text": prompt}]}, REMINDER]


def claude_code_tool_loop(prompt: str) -> list[dict[str, Any]]:
    """The turn after 8 parallel tool calls: the calls as they came, then their results."""
    calls = [
        {"type": "tool_use", "id": f"toolu_{i:02d}", "name": name, "input": {"argument": str(i)}}
        for i, name in enumerate(TOOL_NAMES)
    ]
    results: list[dict[str, Any]] = [
        {"type": "tool_result", "tool_use_id": f"toolu_{i:02d}", "content": f"result {i}"}
        for i in range(len(TOOL_NAMES))
    ]
    results[3]["is_error"] = True
    results[-1]["cache_control"] = {"type": "ephemeral"}
    return [
        *claude_code_turn(prompt),
        {"role": "assistant", "content": [{"type": "text", "text": "Looking."}, *calls]},
        {"role": "user", "content": results},
    ]


async def claude_code_request(
    live: LiveGateway, messages: list[dict[str, Any]], *, model: str = "m1"
) -> tuple[httpx.Response, list[tuple[str | None, Any]]]:
    """One Claude Code turn: its headers, ``?beta=true``, streamed; the response and events."""
    async with (
        httpx.AsyncClient(base_url=root(live), timeout=CLIENT_TIMEOUT) as http,
        http.stream(
            "POST",
            "/v1/messages",
            params={"beta": "true"},
            json=claude_code_body(messages, model),
            headers=CLAUDE_CODE_HEADERS,
        ) as response,
    ):
        lines = [line async for line in response.aiter_lines()]
    return response, sse_events(lines)


def assert_message_stream(events: list[tuple[str | None, Any]]) -> str:
    """The Messages event sequence Claude Code needs; the stop reason it ended with."""
    names = [name for name, _ in events]
    assert all(name == data["type"] for name, data in events)
    assert names[0] == "message_start"
    assert names[-2:] == ["message_delta", "message_stop"]
    assert names.count("message_start") == names.count("message_stop") == 1
    open_blocks: set[int] = set()
    for name, data in events:
        if name == "content_block_start":
            assert data["index"] not in open_blocks
            open_blocks.add(data["index"])
        elif name == "content_block_delta":
            assert data["index"] in open_blocks
        elif name == "content_block_stop":
            open_blocks.remove(data["index"])
    assert not open_blocks
    reason = events[-2][1]["delta"]["stop_reason"]
    assert isinstance(reason, str)
    return reason


async def test_claude_code_over_the_mock(serve: Serve) -> None:
    live = serve()
    prompt = "Read main.py, then fix it"
    first, events = await claude_code_request(live, claude_code_turn(prompt), model="mock-chat")
    loop, loop_events = await claude_code_request(
        live, claude_code_tool_loop(prompt), model="mock-chat"
    )
    assert first.status_code == loop.status_code == 200
    assert first.headers["content-type"].startswith("text/event-stream")
    assert assert_message_stream(events) == "tool_use"
    [call] = [d["content_block"] for n, d in events if n == "content_block_start"]
    assert call["type"] == "tool_use"
    assert call["name"] == "Read"
    partial = "".join(d["delta"]["partial_json"] for n, d in events if n == "content_block_delta")
    assert set(json.loads(partial)) == {"argument"}
    assert assert_message_stream(loop_events) == "end_turn"
    text = "".join(d["delta"].get("text", "") for n, d in loop_events if n == "content_block_delta")
    assert text == "The tool returned: result 7"
    turn, tool_loop = live.mock().requests
    assert [m.role for m in turn.messages] == ["system", "user", "system"]
    assert [m.role for m in tool_loop.messages] == [
        "system",
        "user",
        "system",
        "assistant",
        *["tool"] * 8,
    ]
    assert tool_loop.max_completion_tokens == 128000


async def test_claude_code_over_a_translated_upstream(serve: Serve) -> None:
    fake = FakeUpstream(default=Behavior(events=text_stream(["Do", "ne"])))
    live = serve(lambda ups: [translated("up", ups[0])], upstreams=[fake])
    response, events = await claude_code_request(live, claude_code_turn("Fix the bug"))
    loop, loop_events = await claude_code_request(live, claude_code_tool_loop("Fix the bug"))
    assert response.status_code == loop.status_code == 200
    for stream in (events, loop_events):
        assert assert_message_stream(stream) == "end_turn"
    turn, tool_loop = (seen.json for seen in fake.chat_requests)
    system, user, reminder = turn["messages"]
    assert system["role"] == "system"
    assert "Claude Code" in system["content"]
    assert user == {"role": "user", "content": "Fix the bug"}
    # The reminder keeps its meaning: a system message after the user's, not a user turn.
    assert reminder == {"role": "system", "content": REMINDER["content"]}
    roles = [m["role"] for m in tool_loop["messages"]]
    assert roles == ["system", "user", "system", "assistant", *["tool"] * 8]
    assistant = tool_loop["messages"][3]
    assert [c["id"] for c in assistant["tool_calls"]] == [f"toolu_{i:02d}" for i in range(8)]
    tools = tool_loop["messages"][4:]
    assert [t["tool_call_id"] for t in tools] == [f"toolu_{i:02d}" for i in range(8)]
    assert tools[3]["content"] == "Error: result 3"
    assert [t["function"]["name"] for t in tool_loop["tools"]] == TOOL_NAMES
    assert tool_loop["stream"] is True
    for seen in fake.chat_requests:
        headers = {name.lower() for name in seen.headers}
        assert not headers & {"x-app", "x-claude-code-session-id", "anthropic-beta"}
        assert seen.headers["Authorization"] == "Bearer up-key"
