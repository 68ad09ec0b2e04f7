"""The official openai SDK against the gateway over real HTTP: answers just like OpenAI's."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from typing import Any

import jsonschema
import openai
import pydantic
import pytest

from leapasgi.types import ToolMessage
from tests.asgi.live_server import LiveGateway, Serve, upstream_config
from tests.fake_upstream import Behavior, FakeUpstream, chunk, completion, sse

HI: Any = [{"role": "user", "content": "hi there"}]
PNG_1PX = (
    "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk"
    "YPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="
)


class Weather(pydantic.BaseModel):
    city: str
    days: int


class Person(pydantic.BaseModel):
    name: str
    age: int
    tags: list[str]


WEATHER_TOOL: Any = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}


def one_upstream(upstreams: Sequence[FakeUpstream]) -> list[Any]:
    return [upstream_config("up", upstreams[0])]


def sse_payloads(lines: Iterator[str]) -> list[Any]:
    """The JSON payloads of an SSE body, up to and including the ``[DONE]`` marker."""
    payloads: list[Any] = []
    for line in lines:
        if line.startswith("data: "):
            data = line[len("data: ") :]
            payloads.append(data if data == "[DONE]" else json.loads(data))
    return payloads


def raw_stream(client: openai.OpenAI, **params: Any) -> tuple[list[Any], str]:
    """The wire payloads of a streamed answer, and the response's content type."""
    with client.chat.completions.with_streaming_response.create(stream=True, **params) as resp:
        assert resp.status_code == 200
        return sse_payloads(resp.iter_lines()), resp.headers["content-type"]


def assert_chunk_rules(payloads: list[Any], *, include_usage: bool) -> None:
    """The streaming rules of the OpenAI wire format (openai-wire.md B4)."""
    assert payloads[-1] == "[DONE]"
    chunks = payloads[:-1]
    assert chunks
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert len({(c["id"], c["created"], c["model"]) for c in chunks}) == 1
    roles: dict[int, int] = {}
    finishes: dict[int, int] = {}
    for c in chunks:
        for choice in c["choices"]:
            index = choice["index"]
            if "role" in choice["delta"]:
                assert index not in roles, "role must come only in the first delta of a choice"
                assert choice["delta"]["role"] == "assistant"
            roles.setdefault(index, 0)
            if choice["finish_reason"] is not None:
                finishes[index] = finishes.get(index, 0) + 1
    assert sorted(roles) == list(range(len(roles)))
    assert finishes == dict.fromkeys(roles, 1)
    if include_usage:
        *with_choices, last = chunks
        assert last["choices"] == []
        usage = last["usage"]
        assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
        assert all("usage" in c and c["usage"] is None for c in with_choices)
        assert all(c["choices"] for c in with_choices)
    else:
        assert all(c.get("usage") is None for c in chunks)
        assert all(c["choices"] for c in chunks)


def test_chat_completion_from_an_upstream(serve: Serve) -> None:
    fake = FakeUpstream(
        default=Behavior(json_body=completion("hi!"), headers={"x-request-id": "req_123"})
    )
    live = serve(one_upstream, upstreams=[fake])
    with live.client(_strict_response_validation=True) as client:
        raw = client.chat.completions.with_raw_response.create(model="m1", messages=HI)
        answer = raw.parse()
    assert raw.headers["x-leap-provider"] == "up"
    assert raw.headers["x-leap-attempts"] == "1"
    assert raw.headers["content-type"] == "application/json"
    assert answer._request_id == "req_123"  # noqa: SLF001 (the SDK's documented attribute)
    assert answer.object == "chat.completion"
    assert answer.model == "m1"
    [choice] = answer.choices
    assert choice.message.role == "assistant"
    assert choice.message.content == "hi!"
    assert choice.finish_reason == "stop"
    assert answer.usage is not None
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (5, 1)
    assert answer.usage.total_tokens == 6
    [seen] = fake.chat_requests
    assert seen.headers["Authorization"] == "Bearer up-key"
    assert seen.json["messages"] == HI


def test_chat_completion_from_the_mock(live: LiveGateway) -> None:
    with live.client(_strict_response_validation=True) as client:
        raw = client.chat.completions.with_raw_response.create(model="mock-chat", messages=HI)
        answer = raw.parse()
    body = raw.http_response.json()
    assert body["object"] == "chat.completion"
    assert isinstance(body["created"], int)
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "You said: hi there"}
    assert raw.headers["x-leap-provider"] == "mock"
    assert raw.headers["x-leap-attempts"] == "1"
    assert answer.id.startswith("chatcmpl-")
    assert answer.choices[0].message.content == "You said: hi there"
    assert answer.choices[0].finish_reason == "stop"
    assert answer.usage is not None
    assert answer.usage.total_tokens == answer.usage.prompt_tokens + answer.usage.completion_tokens


def test_stream_with_usage(live: LiveGateway) -> None:
    params: Any = {
        "model": "mock-chat",
        "messages": HI,
        "stream_options": {"include_usage": True},
    }
    with live.client(_strict_response_validation=True) as client:
        payloads, content_type = raw_stream(client, **params)
        chunks = list(client.chat.completions.create(stream=True, **params))
    assert content_type.startswith("text/event-stream")
    assert_chunk_rules(payloads, include_usage=True)
    *text_chunks, last = chunks
    assert last.choices == []
    assert last.usage is not None
    assert last.usage.completion_tokens == 4
    assert all(c.usage is None for c in text_chunks)
    assert "".join(c.choices[0].delta.content or "" for c in text_chunks) == "You said: hi there"
    assert text_chunks[-1].choices[0].finish_reason == "stop"


def test_stream_without_usage(live: LiveGateway) -> None:
    params: Any = {"model": "mock-chat", "messages": HI}
    with live.client(_strict_response_validation=True) as client:
        payloads, _ = raw_stream(client, **params)
        chunks = list(client.chat.completions.create(stream=True, **params))
    assert_chunk_rules(payloads, include_usage=False)
    assert all("usage" not in c for c in payloads[:-1])
    assert all(c.usage is None and c.choices for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "You said: hi there"


def test_stream_helper_gives_the_same_completion_as_create(live: LiveGateway) -> None:
    with live.client() as client:
        whole = client.chat.completions.create(model="mock-chat", messages=HI)
        deltas: list[str] = []
        with client.chat.completions.stream(
            model="mock-chat", messages=HI, stream_options={"include_usage": True}
        ) as stream:
            for event in stream:
                if event.type == "content.delta":
                    deltas.append(event.delta)
            final = stream.get_final_completion()
    message = final.choices[0].message
    assert message.role == "assistant"
    assert message.content == whole.choices[0].message.content == "".join(deltas)
    assert final.choices[0].finish_reason == "stop"
    assert final.usage is not None
    assert final.usage.total_tokens == final.usage.prompt_tokens + final.usage.completion_tokens


def ollama(delta: dict[str, Any], *, finish: str | None = None, **extra: Any) -> Any:
    """An Ollama-style chunk: role and content on every delta, fp_ollama."""
    body = chunk(
        {"role": "assistant", "content": "", **delta}, finish=finish, system_fingerprint="fp_ollama"
    )
    body.update(extra)
    return body


def ollama_call(index: int, call_id: str, city: str) -> dict[str, Any]:
    return {
        "index": index,
        "id": call_id,
        "type": "function",
        "function": {"name": "get_weather", "arguments": json.dumps({"city": city})},
    }


OLLAMA_USAGE = {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}


def test_stream_helper_over_an_ollama_style_text_stream(serve: Serve) -> None:
    events = sse(
        ollama({"content": "Hel"}),
        ollama({"content": "lo"}),
        ollama({"content": "!"}),
        ollama({}, finish="stop"),
        ollama({}, usage=OLLAMA_USAGE) | {"choices": []},
    )
    fake = FakeUpstream(default=Behavior(events=events))
    live = serve(one_upstream, upstreams=[fake])
    with live.client() as client:
        with client.chat.completions.stream(
            model="m1", messages=HI, stream_options={"include_usage": True}
        ) as stream:
            for _ in stream:
                pass
            final = stream.get_final_completion()
        payloads, _ = raw_stream(
            client, model="m1", messages=HI, stream_options={"include_usage": True}
        )
    assert_chunk_rules(payloads, include_usage=True)
    message = final.choices[0].message
    assert message.role == "assistant"
    assert message.content == "Hello!"
    assert final.choices[0].finish_reason == "stop"
    assert final.usage is not None
    assert final.usage.total_tokens == 10
    assert fake.chat_requests[0].json["stream"] is True


def test_stream_helper_over_ollama_style_tool_calls(serve: Serve) -> None:
    paris, rome = ollama_call(0, "call_1", "Paris"), ollama_call(1, "call_2", "Rome")
    # A whole call, the same call repeated with no new arguments, then a parallel one.
    repeat = dict(paris, function={"name": "get_weather", "arguments": ""})
    events = sse(
        ollama({"tool_calls": [paris]}),
        ollama({"tool_calls": [repeat]}),
        ollama({"tool_calls": [rome]}),
        ollama({}, finish="tool_calls"),
    )
    fake = FakeUpstream(default=Behavior(events=events))
    live = serve(one_upstream, upstreams=[fake])
    messages: Any = [{"role": "user", "content": "weather in Paris and Rome?"}]
    with live.client() as client:
        with client.chat.completions.stream(
            model="m1", messages=messages, tools=[WEATHER_TOOL]
        ) as stream:
            done = [e for e in stream if e.type == "tool_calls.function.arguments.done"]
            final = stream.get_final_completion()
        payloads, _ = raw_stream(client, model="m1", messages=messages, tools=[WEATHER_TOOL])
    assert_chunk_rules(payloads, include_usage=False)
    heads = [
        call
        for c in payloads[:-1]
        for choice in c["choices"]
        for call in choice["delta"].get("tool_calls", ())
        if "id" in call
    ]
    assert [(h["index"], h["id"], h["function"]["name"]) for h in heads] == [
        (0, "call_1", "get_weather"),
        (1, "call_2", "get_weather"),
    ]
    message = final.choices[0].message
    assert message.role == "assistant"
    assert final.choices[0].finish_reason == "tool_calls"
    calls = message.tool_calls or []
    assert [(c.id, c.type, c.function.name) for c in calls] == [
        ("call_1", "function", "get_weather"),
        ("call_2", "function", "get_weather"),
    ]
    assert [json.loads(c.function.arguments) for c in calls] == [
        {"city": "Paris"},
        {"city": "Rome"},
    ]
    assert [e.name for e in done] == ["get_weather", "get_weather"]


TOGETHER_USAGE = {"prompt_tokens": 2, "completion_tokens": 2, "total_tokens": 4}


def together_events() -> list[bytes]:
    """Usage on the finish chunk (Together/vLLM style), and a first chunk without ``object``."""
    first = chunk({"role": "assistant", "content": "a"})
    del first["object"]
    return sse(first, chunk({"content": "b"}), chunk({}, finish="stop", usage=TOGETHER_USAGE))


def test_usage_on_the_finish_chunk_moves_to_its_own_last_chunk(serve: Serve) -> None:
    fake = FakeUpstream(default=Behavior(events=together_events()))
    live = serve(one_upstream, upstreams=[fake])
    params: Any = {"model": "m1", "messages": HI, "stream_options": {"include_usage": True}}
    with live.client() as client:
        payloads, _ = raw_stream(client, **params)
        with client.chat.completions.stream(**params) as stream:
            for _ in stream:
                pass
            final = stream.get_final_completion()
    assert_chunk_rules(payloads, include_usage=True)
    assert payloads[-2]["usage"] == TOGETHER_USAGE
    assert final.choices[0].message.content == "ab"
    assert final.usage is not None
    assert final.usage.total_tokens == 4


def test_no_usage_key_without_include_usage(serve: Serve) -> None:
    fake = FakeUpstream(default=Behavior(events=together_events()))
    live = serve(one_upstream, upstreams=[fake])
    with live.client() as client:
        payloads, _ = raw_stream(client, model="m1", messages=HI)
    assert_chunk_rules(payloads, include_usage=False)
    assert all("usage" not in c for c in payloads[:-1])


def test_tool_call_without_streaming(live: LiveGateway) -> None:
    messages: Any = [{"role": "user", "content": "call Weather for me"}]
    with live.client(_strict_response_validation=True) as client:
        raw = client.chat.completions.with_raw_response.create(
            model="mock-chat", messages=messages, tools=[openai.pydantic_function_tool(Weather)]
        )
        answer = raw.parse()
    wire_message = raw.http_response.json()["choices"][0]["message"]
    assert wire_message["content"] is None
    assert isinstance(wire_message["tool_calls"][0]["function"]["arguments"], str)
    choice = answer.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    [call] = choice.message.tool_calls or []
    assert call.type == "function"
    assert call.id.startswith("call_")
    assert call.function.name == "Weather"
    Weather.model_validate_json(call.function.arguments)


def test_tool_call_streamed_follows_the_fragment_rules(live: LiveGateway) -> None:
    params: Any = {
        "model": "mock-chat",
        "messages": [{"role": "user", "content": "what does get_weather say?"}],
        "tools": [WEATHER_TOOL],
    }
    with live.client() as client:
        payloads, _ = raw_stream(client, **params)
        chunks = list(client.chat.completions.create(stream=True, **params))
    assert_chunk_rules(payloads, include_usage=False)
    assert payloads[0]["choices"][0]["delta"] == {"role": "assistant", "content": None}
    fragments = [
        call for c in payloads[:-1] for call in c["choices"][0]["delta"].get("tool_calls", ())
    ]
    head, *rest = fragments
    assert head["index"] == 0
    assert head["type"] == "function"
    assert head["function"]["name"] == "get_weather"
    assert head["function"]["arguments"] == ""
    assert rest
    assert all(
        set(f) == {"index", "function"} and set(f["function"]) == {"arguments"} for f in rest
    )
    arguments = "".join(f["function"]["arguments"] for f in rest)
    jsonschema.validate(json.loads(arguments), WEATHER_TOOL["function"]["parameters"])
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_tool_call_through_the_stream_helper(live: LiveGateway) -> None:
    messages: Any = [{"role": "user", "content": "ask Weather"}]
    with (
        live.client() as client,
        client.chat.completions.stream(
            model="mock-chat", messages=messages, tools=[openai.pydantic_function_tool(Weather)]
        ) as stream,
    ):
        for _ in stream:
            pass
        final = stream.get_final_completion()
    message = final.choices[0].message
    assert message.role == "assistant"
    [call] = message.tool_calls or []
    assert call.function.name == "Weather"
    assert call.id.startswith("call_")
    assert call.id.count("call_") == 1
    assert isinstance(call.function.parsed_arguments, Weather)
    assert final.choices[0].finish_reason == "tool_calls"


def test_tool_round_trip(live: LiveGateway) -> None:
    messages: list[Any] = [{"role": "user", "content": "What does get_weather say for Paris?"}]
    with live.client(_strict_response_validation=True) as client:
        first = client.chat.completions.create(
            model="mock-chat", messages=messages, tools=[WEATHER_TOOL]
        )
        [call] = first.choices[0].message.tool_calls or []
        assert call.type == "function"
        messages.append(
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": call.id,
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": call.function.arguments},
                    }
                ],
            }
        )
        messages.append({"role": "tool", "tool_call_id": call.id, "content": "sunny, 21 C"})
        second = client.chat.completions.create(
            model="mock-chat", messages=messages, tools=[WEATHER_TOOL]
        )
    assert second.choices[0].finish_reason == "stop"
    assert second.choices[0].message.tool_calls is None
    assert second.choices[0].message.content == "The tool returned: sunny, 21 C"
    sent = live.mock().requests[-1]
    assert [m.role for m in sent.messages] == ["user", "assistant", "tool"]
    tool_message = sent.messages[2]
    assert isinstance(tool_message, ToolMessage)
    assert tool_message.tool_call_id == call.id


def test_json_mode(live: LiveGateway) -> None:
    with live.client(_strict_response_validation=True) as client:
        answer = client.chat.completions.create(
            model="mock-chat",
            messages=[{"role": "user", "content": "answer in JSON"}],
            response_format={"type": "json_object"},
        )
    content = answer.choices[0].message.content
    assert content is not None
    assert isinstance(json.loads(content), dict)


def test_json_schema(live: LiveGateway) -> None:
    schema = Person.model_json_schema()
    with live.client(_strict_response_validation=True) as client:
        answer = client.chat.completions.create(
            model="mock-chat",
            messages=HI,
            response_format={
                "type": "json_schema",
                "json_schema": {"name": "person", "schema": schema, "strict": True},
            },
        )
    content = answer.choices[0].message.content
    assert content is not None
    jsonschema.validate(json.loads(content), schema)


def test_parse_with_a_pydantic_model(live: LiveGateway) -> None:
    with live.client() as client:
        answer = client.chat.completions.parse(
            model="mock-chat", messages=HI, response_format=Person
        )
    message = answer.choices[0].message
    assert isinstance(message.parsed, Person)
    assert message.parsed == Person.model_validate_json(message.content or "")
    sent = live.mock().requests[-1].response_format
    assert sent is not None
    assert sent.type == "json_schema"


def test_image_content_part(live: LiveGateway) -> None:
    messages: Any = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "describe this"},
                {"type": "image_url", "image_url": {"url": PNG_1PX, "detail": "low"}},
            ],
        }
    ]
    with live.client(_strict_response_validation=True) as client:
        answer = client.chat.completions.create(model="mock-chat", messages=messages)
    assert answer.choices[0].message.content == "You said: describe this"
    sent = live.mock().requests[-1]
    assert sent.has_images()


def test_n_choices(live: LiveGateway) -> None:
    with live.client(_strict_response_validation=True) as client:
        answer = client.chat.completions.create(model="mock-chat", messages=HI, n=2)
        payloads, _ = raw_stream(client, model="mock-chat", messages=HI, n=2)
        with client.chat.completions.stream(model="mock-chat", messages=HI, n=2) as stream:
            for _ in stream:
                pass
            final = stream.get_final_completion()
    assert [c.index for c in answer.choices] == [0, 1]
    assert all(c.message.content == "You said: hi there" for c in answer.choices)
    assert_chunk_rules(payloads, include_usage=False)
    assert [c.index for c in final.choices] == [0, 1]
    assert all(c.message.role == "assistant" for c in final.choices)
    assert all(c.message.content == "You said: hi there" for c in final.choices)


def test_models(live: LiveGateway) -> None:
    with live.client(_strict_response_validation=True) as client:
        models = list(client.models.list())
        one = client.models.retrieve("mock-chat")
    assert [m.id for m in models] == ["mock-chat"]
    assert all(m.object == "model" and isinstance(m.created, int) for m in models)
    assert one.id == "mock-chat"


@pytest.mark.anyio
async def test_async_chat_and_stream(live: LiveGateway) -> None:
    async with live.async_client(_strict_response_validation=True) as client:
        answer = await client.chat.completions.create(model="mock-chat", messages=HI)
        stream = await client.chat.completions.create(
            model="mock-chat", messages=HI, stream=True, stream_options={"include_usage": True}
        )
        chunks = [c async for c in stream]
    assert answer.choices[0].message.content == "You said: hi there"
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    text = "".join(c.choices[0].delta.content or "" for c in chunks[:-1])
    assert text == answer.choices[0].message.content


@pytest.mark.anyio
async def test_async_stream_helper_over_ollama_style(serve: Serve) -> None:
    events = sse(ollama({"content": "a"}), ollama({"content": "b"}), ollama({}, finish="stop"))
    fake = FakeUpstream(default=Behavior(events=events))
    live = serve(one_upstream, upstreams=[fake])
    async with (
        live.async_client() as client,
        client.chat.completions.stream(model="m1", messages=HI) as stream,
    ):
        async for _ in stream:
            pass
        final = await stream.get_final_completion()
    assert final.choices[0].message.role == "assistant"
    assert final.choices[0].message.content == "ab"
