"""The official anthropic SDK against the gateway over real HTTP: Messages as Anthropic
answers them, translated over the mock (create, stream, tools, images, token counts, models,
client keys) or a chat upstream. Errors are in test_anthropic_sdk_errors.py, native
pass-through and failover in test_anthropic_native.py, Claude Code's requests in
test_anthropic_claude_code.py."""

from __future__ import annotations

from typing import Any

import anthropic
import httpx
import pytest
from pydantic import SecretStr

from leapasgi.config import ServerConfig
from leapasgi.types import ToolMessage
from tests.asgi.live_server import LiveGateway, Serve, mock_config
from tests.asgi.messages_support import (
    HI,
    WEATHER_TOOL,
    assert_anthropic_error,
    native,
    text_of,
    translated,
)
from tests.fake_upstream import Behavior, FakeUpstream, anthropic_stream, chunk, sse

pytestmark = pytest.mark.anyio

PNG_1PX = (
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5E"
    "rkJggg=="
)


async def test_create(live: LiveGateway) -> None:
    async with live.anthropic_client(_strict_response_validation=True) as client:
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
    async with live.anthropic_client() as client:
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
    async with live.anthropic_client() as client:
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
    async with live.anthropic_client() as client:
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
    async with live.anthropic_client() as client:
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
    async with live.anthropic_client() as client:
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
    async with live.anthropic_client() as client:
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
        live.anthropic_client(api_key="right") as by_key,
        live.anthropic_client(auth_token="right") as by_token,
        live.anthropic_client(default_headers=as_x_api_key) as by_header,
        live.anthropic_client(api_key="wrong") as wrong,
        live.anthropic_client(
            default_headers={**as_x_api_key, "x-api-key": "wrong"}
        ) as wrong_header,
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
        live.anthropic_client() as client,
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
        live.anthropic_client() as client,
        client.messages.stream(model=model, max_tokens=10, messages=HI) as stream,
    ):
        await stream.get_final_message()
        request_id = stream.request_id
        headers = stream.response.headers
    assert headers["x-request-id"].startswith("req_")
    assert request_id == headers["x-request-id"]


async def test_a_quiet_stream_gets_anthropic_pings_and_still_ends_whole(serve: Serve) -> None:
    # The mock pauses between chunks longer than the keep-alive interval.
    live = serve(
        lambda ups: [mock_config(chunks=3, chunk_delay=0.3)],
        server=ServerConfig(keepalive_interval=0.05),
    )
    body = {"model": "mock-chat", "max_tokens": 50, "stream": True, "messages": HI}
    async with httpx.AsyncClient(base_url=live.origin) as http:
        answer = await http.post("/v1/messages", json=body)
    lines = answer.text.splitlines()
    names = [line.removeprefix("event: ") for line in lines if line.startswith("event: ")]
    assert "ping" in names
    assert names[-1] == "message_stop"
    # Anthropic's own ping event, never an SSE comment.
    assert not [line for line in lines if line.startswith(":")]
    async with (
        live.anthropic_client() as client,
        client.messages.stream(model="mock-chat", max_tokens=50, messages=HI) as stream,
    ):
        message = await stream.get_final_message()
    [block] = message.content
    assert block.type == "text"
    assert block.text == "You said: hi there"
