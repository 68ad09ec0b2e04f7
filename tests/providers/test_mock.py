from __future__ import annotations

import json
from typing import Any

import jsonschema
import openai
import openai.types.chat as oai
import pytest
from openai.lib.streaming.chat import ChatCompletionStreamState

from leapasgi.clock import FakeClock
from leapasgi.exceptions import (
    ConnectRefusedError,
    FirstByteTimeoutError,
    IdleTimeoutError,
    InvalidRequestError,
    MalformedStreamError,
    ModelNotFoundError,
    RateLimitError,
    StreamInterruptedError,
    UpstreamUnavailableError,
)
from leapasgi.features import Feature
from leapasgi.providers.base import Provider, Timeouts
from leapasgi.providers.mock import Fault, MockProvider
from leapasgi.types import ChatCompletion, ChatCompletionChunk, ChatCompletionRequest

pytestmark = pytest.mark.anyio

WALL = 1_700_000_000
WEATHER = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "minLength": 1},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
    },
    "required": ["city", "unit"],
    "additionalProperties": False,
}
TIME = {
    "type": "object",
    "properties": {"zone": {"type": "string", "pattern": "^[A-Z][a-z]+/[A-Z][a-z]+$"}},
    "required": ["zone"],
}
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "parameters": WEATHER}},
    {"type": "function", "function": {"name": "get_time", "parameters": TIME}},
]
SCHEMAS = {"get_weather": WEATHER, "get_time": TIME}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def mock(**options: Any) -> MockProvider:
    return MockProvider(clock=FakeClock(), **options)


def request(text: str = "hello there", **fields: Any) -> ChatCompletionRequest:
    body = {"model": "mock-chat", "messages": [{"role": "user", "content": text}], **fields}
    return ChatCompletionRequest.model_validate(body)


def streaming(text: str = "hello there", *, usage: bool = False, **fields: Any) -> Any:
    options = {"stream_options": {"include_usage": True}} if usage else {}
    return request(text, stream=True, **options, **fields)


async def collect(provider: MockProvider, req: ChatCompletionRequest) -> list[ChatCompletionChunk]:
    return [chunk async for batch in provider.stream(req) for chunk in batch]


async def drain(
    provider: MockProvider, req: ChatCompletionRequest, into: list[ChatCompletionChunk]
) -> None:
    async for batch in provider.stream(req):
        into.extend(batch)


def accumulate(chunks: list[ChatCompletionChunk]) -> Any:
    state: ChatCompletionStreamState[Any] = ChatCompletionStreamState()
    for chunk in chunks:
        state.handle_chunk(oai.ChatCompletionChunk.model_validate(chunk.to_wire()))
    try:
        return state.get_final_completion()
    except openai.LengthFinishReasonError as exc:  # the SDK refuses to "parse" a cut reply
        return exc.completion


def as_openai(completion: ChatCompletion) -> oai.ChatCompletion:
    return oai.ChatCompletion.model_validate(completion.to_wire())


def calls_of(message: Any) -> list[tuple[str, str, str, str]]:
    return [(c.id, c.type, c.function.name, c.function.arguments) for c in message.tool_calls or ()]


def tool_calls(completion: oai.ChatCompletion) -> list[Any]:
    return list(completion.choices[0].message.tool_calls or ())


def check_arguments(call: Any) -> None:
    jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])


async def test_echoes_the_last_user_message() -> None:
    result = as_openai(await mock().chat(request("hello there")))

    assert result.id == "chatcmpl-mock-1"
    assert result.object == "chat.completion"
    assert result.created == WALL
    assert result.model == "mock-chat"
    assert result.system_fingerprint == "fp_mock"
    [choice] = result.choices
    assert choice.index == 0
    assert choice.message.role == "assistant"
    assert choice.message.content == "You said: hello there"
    assert choice.finish_reason == "stop"
    assert result.usage is not None
    assert (result.usage.prompt_tokens, result.usage.completion_tokens) == (2, 4)
    assert result.usage.total_tokens == 6


async def test_fixed_reply_and_counting_ids() -> None:
    provider = mock(reply="Fixed answer.")

    first = await provider.chat(request())
    second = await provider.chat(request())

    assert first.choices[0].message.content == "Fixed answer."
    assert (first.id, second.id) == ("chatcmpl-mock-1", "chatcmpl-mock-2")


async def test_unknown_model_is_not_found() -> None:
    provider = mock(models=["alpha"])

    with pytest.raises(ModelNotFoundError) as caught:
        await provider.chat(request())

    assert caught.value.http_status == 404
    assert caught.value.param == "model"
    assert caught.value.provider == "mock"
    assert "mock-chat" in caught.value.message
    with pytest.raises(ModelNotFoundError):
        await collect(provider, streaming())


async def test_stream_follows_the_wire_rules() -> None:
    chunks = await collect(mock(), streaming("one two three"))
    wire = [chunk.to_wire() for chunk in chunks]

    assert {(w["id"], w["created"], w["model"], w["object"]) for w in wire} == {
        ("chatcmpl-mock-1", WALL, "mock-chat", "chat.completion.chunk")
    }
    deltas = [w["choices"][0]["delta"] for w in wire]
    assert deltas[0] == {"role": "assistant", "content": ""}
    assert all("role" not in delta for delta in deltas[1:])
    assert [w["choices"][0]["finish_reason"] for w in wire] == [None] * 6 + ["stop"]
    assert deltas[-1] == {}
    assert all("usage" not in w for w in wire)
    final = accumulate(chunks)
    assert final.choices[0].message.role == "assistant"
    assert final.choices[0].message.content == "You said: one two three"


async def test_stream_pieces_can_be_set() -> None:
    chunks = await collect(mock(chunks=3), streaming("abc def"))

    pieces = [c.choices[0].delta.content for c in chunks[1:-1]]
    assert len(pieces) == 3
    assert "".join(p or "" for p in pieces) == "You said: abc def"


async def test_usage_chunk_comes_last_and_alone() -> None:
    chunks = await collect(mock(), streaming(usage=True))
    wire = [chunk.to_wire() for chunk in chunks]

    assert all(w["usage"] is None for w in wire[:-1])
    assert all(w["choices"] for w in wire[:-1])
    assert wire[-1]["choices"] == []
    assert wire[-1]["usage"] == {"prompt_tokens": 2, "completion_tokens": 4, "total_tokens": 6}
    assert accumulate(chunks).usage.total_tokens == 6


async def test_n_gives_that_many_choices() -> None:
    result = as_openai(await mock().chat(request(n=3)))
    final = accumulate(await collect(mock(), streaming(n=3)))

    assert [c.index for c in result.choices] == [0, 1, 2]
    assert [c.message.content for c in final.choices] == ["You said: hello there"] * 3
    assert result.usage is not None
    assert result.usage.completion_tokens == 12


async def test_stop_sequence_truncates() -> None:
    result = await mock().chat(request("alpha beta gamma", stop=["gamma", "beta"]))

    assert result.choices[0].message.content == "You said: alpha "
    assert result.choices[0].finish_reason == "stop"


@pytest.mark.parametrize("field", ["max_tokens", "max_completion_tokens"])
async def test_token_limit_truncates_with_length(field: str) -> None:
    result = await mock().chat(request("alpha beta gamma", **{field: 3}))

    assert result.choices[0].message.content == "You said: alpha"
    assert result.choices[0].finish_reason == "length"
    assert result.usage is not None
    assert result.usage.completion_tokens == 3


async def test_json_object_mode_gives_a_json_object() -> None:
    result = await mock().chat(request(response_format={"type": "json_object"}))

    assert json.loads(result.choices[0].message.content or "") == {"reply": "You said: hello there"}


async def test_json_schema_mode_validates() -> None:
    schema = {
        "type": "object",
        "properties": {"forecast": {"type": "array", "items": {"$ref": "#/$defs/Day"}}},
        "required": ["forecast"],
        "$defs": {"Day": WEATHER},
    }
    fmt = {"type": "json_schema", "json_schema": {"name": "forecast", "schema": schema}}

    result = await mock().chat(request(response_format=fmt))

    jsonschema.validate(json.loads(result.choices[0].message.content or ""), schema)


async def test_named_tool_choice_calls_that_tool() -> None:
    choice = {"type": "function", "function": {"name": "get_time"}}
    req = request(tools=TOOLS, tool_choice=choice)

    result = as_openai(await mock().chat(req))

    [call] = tool_calls(result)
    assert result.choices[0].finish_reason == "tool_calls"
    assert result.choices[0].message.content is None
    assert call.id.startswith("call_")
    assert call.type == "function"
    assert call.function.name == "get_time"
    check_arguments(call)


async def test_required_calls_the_first_tool() -> None:
    result = as_openai(await mock().chat(request(tools=TOOLS, tool_choice="required")))

    [call] = tool_calls(result)
    assert call.function.name == "get_weather"
    check_arguments(call)


async def test_auto_calls_a_mentioned_tool() -> None:
    result = as_openai(await mock().chat(request("use get_weather please", tools=TOOLS)))

    [call] = tool_calls(result)
    assert call.function.name == "get_weather"


async def test_auto_without_a_mention_replies_in_text() -> None:
    result = await mock().chat(request("hi", tools=TOOLS, tool_choice="auto"))

    assert result.choices[0].message.content == "You said: hi"
    assert result.choices[0].message.tool_calls is None


async def test_none_replies_in_text() -> None:
    result = await mock().chat(request("get_weather", tools=TOOLS, tool_choice="none"))

    assert result.choices[0].finish_reason == "stop"
    assert result.choices[0].message.content == "You said: get_weather"


async def test_after_a_tool_result_it_replies_in_text() -> None:
    call = {
        "id": "call_1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": "{}"},
    }
    messages = [
        {"role": "user", "content": "get_weather for Paris"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": "22 degrees"},
    ]
    req = ChatCompletionRequest.model_validate(
        {"model": "mock-chat", "messages": messages, "tools": TOOLS}
    )

    result = await mock().chat(req)

    assert result.choices[0].message.content == "The tool returned: 22 degrees"
    assert result.choices[0].finish_reason == "stop"


BOTH = ["get_weather", "get_time"]


@pytest.mark.parametrize(
    ("parallel", "names"), [(None, BOTH), (True, BOTH), (False, ["get_weather"])]
)
async def test_parallel_tool_calls(parallel: bool | None, names: list[str]) -> None:
    req = request("get_time and get_weather", tools=TOOLS, parallel_tool_calls=parallel)

    result = as_openai(await mock().chat(req))

    calls = tool_calls(result)
    assert [c.function.name for c in calls] == names
    assert len({c.id for c in calls}) == len(calls)


async def test_streamed_tool_calls_accumulate_cleanly() -> None:
    req = streaming("get_weather and get_time", usage=True, tools=TOOLS, n=2)
    chunks = await collect(mock(), req)

    final = accumulate(chunks)

    for choice in final.choices:
        assert choice.message.role == "assistant"
        assert choice.finish_reason == "tool_calls"
        calls = choice.message.tool_calls or []
        assert [c.function.name for c in calls] == ["get_weather", "get_time"]
        assert all(c.id.startswith("call_") and c.id.count("call_") == 1 for c in calls)
        for call in calls:
            check_arguments(call)
    fragments = [
        tool.to_wire()
        for chunk in chunks
        for c in chunk.choices
        for tool in c.delta.tool_calls or ()
        if "id" not in tool.to_wire()
    ]
    assert fragments
    assert all(
        set(f) == {"index", "function"} and set(f["function"]) == {"arguments"} for f in fragments
    )


EQUIVALENT = [
    {},
    {"n": 2},
    {"stop": "there"},
    {"max_completion_tokens": 2},
    {"tools": TOOLS, "tool_choice": "required"},
    {"tools": TOOLS, "n": 3},
    {"response_format": {"type": "json_object"}},
    {"response_format": {"type": "json_schema", "json_schema": {"name": "w", "schema": WEATHER}}},
]


@pytest.mark.parametrize("fields", EQUIVALENT)
@pytest.mark.parametrize("pieces", [None, 1, 4])
async def test_stream_adds_up_to_chat(fields: dict[str, Any], pieces: int | None) -> None:
    text = "hello get_weather and get_time there"
    chat = as_openai(await mock(chunks=pieces).chat(request(text, **fields)))
    final = accumulate(await collect(mock(chunks=pieces), streaming(text, usage=True, **fields)))

    assert final.id == chat.id
    assert final.usage == chat.usage
    assert len(final.choices) == len(chat.choices)
    for streamed, answered in zip(final.choices, chat.choices, strict=True):
        assert streamed.finish_reason == answered.finish_reason
        assert streamed.message.content == answered.message.content
        assert calls_of(streamed.message) == calls_of(answered.message)


async def test_status_fault_raises_the_mapped_error() -> None:
    provider = mock(name="up")
    provider.inject(Fault.status(429, retry_after=2.5), Fault.status(503, message="down"))

    with pytest.raises(RateLimitError) as limited:
        await provider.chat(request())
    with pytest.raises(UpstreamUnavailableError) as down:
        await collect(provider, streaming())

    assert (limited.value.retry_after, limited.value.provider) == (2.5, "up")
    assert (down.value.upstream_status, down.value.message, down.value.provider) == (
        503,
        "down",
        "up",
    )
    assert (await provider.chat(request())).choices[0].message.content


async def test_connect_error() -> None:
    provider = mock(faults=[Fault.connect_error()])

    with pytest.raises(ConnectRefusedError) as caught:
        await provider.chat(request())

    assert caught.value.provider == "mock"


async def test_delay_within_the_first_byte_timeout_answers() -> None:
    clock = FakeClock()
    provider = MockProvider(clock=clock, faults=[Fault.delay(3)], timeouts=Timeouts.uniform(5))

    result = await provider.chat(request())

    assert result.choices[0].message.content
    assert clock.sleeps == [3]


async def test_delay_past_the_first_byte_timeout_times_out() -> None:
    clock = FakeClock()
    provider = MockProvider(clock=clock, faults=[Fault.delay(9)], timeouts=Timeouts.uniform(5))

    with pytest.raises(FirstByteTimeoutError) as caught:
        await collect(provider, streaming())

    assert clock.sleeps == [5]
    assert caught.value.provider == "mock"


async def test_stall_within_the_idle_timeout_finishes() -> None:
    clock = FakeClock()
    provider = MockProvider(clock=clock, faults=[Fault.stall(2, 4)], timeouts=Timeouts.uniform(5))

    chunks = await collect(provider, streaming())

    assert accumulate(chunks).choices[0].finish_reason == "stop"
    assert clock.sleeps == [4]


async def test_stall_past_the_idle_timeout_times_out() -> None:
    clock = FakeClock()
    provider = MockProvider(clock=clock, timeouts=Timeouts.uniform(5))
    provider.inject(Fault.stall(2, 60), Fault.stall(0, 60))
    received: list[ChatCompletionChunk] = []

    with pytest.raises(IdleTimeoutError):
        await drain(provider, streaming(), received)
    with pytest.raises(IdleTimeoutError):
        await provider.chat(request())

    assert len(received) == 2
    assert clock.sleeps == [5, 5]


@pytest.mark.parametrize(
    ("fault", "error"),
    [(Fault.cut(3), StreamInterruptedError), (Fault.malformed(3), MalformedStreamError)],
)
async def test_broken_streams(fault: Fault, error: type[Exception]) -> None:
    provider = mock(faults=[fault, fault])
    received: list[ChatCompletionChunk] = []

    with pytest.raises(error):
        await drain(provider, streaming(), received)
    with pytest.raises(error):
        await provider.chat(request())

    assert len(received) == 3


async def test_a_fault_beyond_the_stream_fires_at_its_end() -> None:
    received: list[ChatCompletionChunk] = []

    with pytest.raises(StreamInterruptedError):
        await drain(mock(faults=[Fault.cut(1000)]), streaming(), received)

    assert received[-1].choices[0].finish_reason == "stop"


async def test_faults_apply_in_order_then_the_persistent_one() -> None:
    provider = mock()
    provider.inject(None, Fault.status(500))
    provider.fail_always(Fault.status(429))

    await provider.chat(request())
    with pytest.raises(UpstreamUnavailableError):
        await provider.chat(request())
    for _ in range(2):
        with pytest.raises(RateLimitError):
            await provider.chat(request())
    provider.fail_always(None)

    await provider.chat(request())
    assert len(provider.requests) == 5


async def test_chunk_delay_sleeps_between_chunks() -> None:
    clock = FakeClock()
    batches = MockProvider(clock=clock, chunk_delay=0.5).stream(streaming())
    chunks = [b async for b in batches if b.chunks]  # the last batch: usage, for accounting

    assert clock.sleeps == [0.5] * (len(chunks) - 1)
    idle = FakeClock()
    await collect(MockProvider(clock=idle), streaming())
    assert idle.sleeps == []


async def test_requests_are_recorded() -> None:
    provider = mock()
    first, second = request("a"), streaming("b")

    await provider.chat(first)
    await collect(provider, second)

    assert provider.requests == [first, second]


async def test_health_check_reports_the_persistent_fault() -> None:
    provider = mock()
    await provider.check_health()

    provider.fail_always(Fault.delay(100))
    await provider.check_health()
    provider.fail_always(Fault.connect_error())
    with pytest.raises(ConnectRefusedError):
        await provider.check_health()
    provider.fail_always(Fault.status(503))
    with pytest.raises(UpstreamUnavailableError):
        await provider.check_health()


async def test_models_features_and_close() -> None:
    provider = mock(name="m", models=["a", "b"], features=[Feature.STREAMING])

    models = await provider.list_models()
    await provider.aclose()

    assert isinstance(provider, Provider)
    assert [(m.id, m.owned_by, m.created) for m in models] == [
        ("a", "mock", WALL),
        ("b", "mock", WALL),
    ]
    assert provider.capabilities.supports(Feature.STREAMING)
    assert not provider.capabilities.supports(Feature.TOOLS)
    assert mock().capabilities.supports("vision")
    assert not provider.capabilities.honors_deadline  # its own timeouts stop it
    assert list(provider.secrets()) == []
    assert provider.closed


async def test_a_request_needing_a_missing_feature_is_refused() -> None:
    provider = mock(features=[Feature.STREAMING])

    with pytest.raises(InvalidRequestError, match="tools"):
        await provider.chat(request(tools=TOOLS))


def test_chunks_must_be_positive() -> None:
    with pytest.raises(ValueError, match="chunks"):
        MockProvider(chunks=0)
