from collections.abc import AsyncIterator, Iterable
from typing import Any

import openai.types.chat as sdk
import pytest
from openai.lib.streaming.chat import ChatCompletionStreamState

from leapasgi.accumulate import ChatCompletionAccumulator, collect
from leapasgi.types import ChatCompletion, ChatCompletionChunk

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def chunk(*choices: dict[str, Any], **fields: Any) -> ChatCompletionChunk:
    body = {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1733000000,
        "model": "gpt-test",
        "system_fingerprint": "fp_1",
        "choices": list(choices),
        **fields,
    }
    return ChatCompletionChunk.model_validate(body)


def delta(index: int = 0, finish: str | None = None, **fields: Any) -> dict[str, Any]:
    return {"index": index, "delta": fields, "finish_reason": finish}


def call(
    index: int | None, *, id: str | None = None, name: str | None = None, args: str = ""
) -> dict[str, Any]:
    fragment: dict[str, Any] = {"function": {"arguments": args}}
    if index is not None:
        fragment["index"] = index
    if id is not None:
        fragment |= {"id": id, "type": "function"}
        fragment["function"]["name"] = name
    return fragment


def fold(chunks: Iterable[ChatCompletionChunk]) -> ChatCompletion:
    accumulator = ChatCompletionAccumulator()
    for item in chunks:
        accumulator.add(item)
    return accumulator.result()


def sdk_fold(chunks: Iterable[ChatCompletionChunk]) -> sdk.ChatCompletion:
    state: ChatCompletionStreamState[None] = ChatCompletionStreamState()
    for item in chunks:
        # The wire form: a full dump's explicit nulls ("type": null on later fragments) would
        # overwrite what the SDK already accumulated.
        state.handle_chunk(sdk.ChatCompletionChunk.model_validate(item.to_wire()))
    return state.get_final_completion()


def summary(calls: Iterable[Any] | None) -> list[tuple[str, str, str]]:
    return [(c.id, c.function.name, c.function.arguments) for c in calls or ()]


def as_sdk(result: ChatCompletion) -> sdk.ChatCompletion:
    # What a client gets, both from a full dump and from the wire form the gateway sends.
    assert sdk.ChatCompletion.model_validate(result.to_wire()).model_dump() == (
        sdk.ChatCompletion.model_validate(result.model_dump(mode="json")).model_dump()
    )
    return sdk.ChatCompletion.model_validate(result.model_dump(mode="json"))


TEXT_STREAM = [
    chunk(delta(role="assistant", content="")),
    chunk(delta(content="Hel")),
    chunk(delta(content="lo")),
    chunk(delta(finish="stop")),
    chunk(usage={"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11}),
]

PARALLEL_TOOL_STREAM = [
    chunk(delta(role="assistant", content=None)),
    chunk(delta(tool_calls=[call(0, id="call_a", name="get_weather")])),
    chunk(delta(tool_calls=[call(1, id="call_b", name="get_time")])),
    chunk(delta(tool_calls=[call(0, args='{"ci')])),
    chunk(delta(tool_calls=[call(1, args='{"tz"')])),
    chunk(delta(tool_calls=[call(0, args='ty":"Paris"}')])),
    chunk(delta(tool_calls=[call(1, args=':"CET"}')])),
    chunk(delta(finish="tool_calls")),
]


def test_text_stream_folds_into_a_completion_the_sdk_accepts() -> None:
    result = fold(TEXT_STREAM)

    completion = as_sdk(result)
    assert completion.id == "chatcmpl-1"
    assert completion.object == "chat.completion"
    assert completion.created == 1733000000
    assert completion.model == "gpt-test"
    assert completion.system_fingerprint == "fp_1"
    [choice] = completion.choices
    assert choice.index == 0
    assert choice.message.role == "assistant"
    assert choice.message.content == "Hello"
    assert choice.message.tool_calls is None
    assert choice.finish_reason == "stop"
    assert completion.usage is not None
    assert completion.usage.total_tokens == 11
    assert choice.message.content == sdk_fold(TEXT_STREAM).choices[0].message.content


def test_interleaved_parallel_tool_calls_are_reassembled() -> None:
    accumulator = ChatCompletionAccumulator()
    for item in PARALLEL_TOOL_STREAM:
        accumulator.add(item)

    assert summary(accumulator.tool_calls()) == [
        ("call_a", "get_weather", '{"city":"Paris"}'),
        ("call_b", "get_time", '{"tz":"CET"}'),
    ]
    [choice] = as_sdk(accumulator.result()).choices
    assert choice.message.content is None
    assert choice.finish_reason == "tool_calls"
    assert summary(choice.message.tool_calls) == summary(
        sdk_fold(PARALLEL_TOOL_STREAM).choices[0].message.tool_calls
    )


def test_tool_calls_of_an_unknown_choice_are_empty() -> None:
    accumulator = ChatCompletionAccumulator()
    for item in PARALLEL_TOOL_STREAM:
        accumulator.add(item)

    assert accumulator.tool_calls(1) == []


def test_interleaved_choices_are_kept_apart_and_sorted() -> None:
    stream = [
        chunk(delta(1, role="assistant", content="B"), delta(0, role="assistant", content="A")),
        chunk(delta(1, content="b")),
        chunk(delta(0, content="a")),
        chunk(delta(0, tool_calls=[call(0, id="call_x", name="f", args="{}")])),
        chunk(delta(1, finish="length")),
        chunk(delta(0, finish="tool_calls")),
    ]

    accumulator = ChatCompletionAccumulator()
    for item in stream:
        accumulator.add(item)
    completion = as_sdk(accumulator.result())

    assert [c.index for c in completion.choices] == [0, 1]
    assert [c.message.content for c in completion.choices] == ["Aa", "Bb"]
    assert [c.finish_reason for c in completion.choices] == ["tool_calls", "length"]
    assert [c.id for c in accumulator.tool_calls(0)] == ["call_x"]
    assert accumulator.tool_calls(1) == []


def test_two_choices_match_the_sdk_accumulator() -> None:
    stream = [
        chunk(delta(0, role="assistant", content=""), delta(1, role="assistant", content="")),
        chunk(delta(0, content="Hi"), delta(1, content="Hey")),
        chunk(delta(1, content=" you")),
        chunk(delta(0, content=" there")),
        chunk(delta(0, finish="stop"), delta(1, finish="stop")),
    ]

    ours = [c.message.content for c in as_sdk(fold(stream)).choices]

    assert ours == [c.message.content for c in sdk_fold(stream).choices]
    assert ours == ["Hi there", "Hey you"]


def test_usage_comes_from_the_usage_chunk() -> None:
    stream = [
        chunk(delta(content="x")),
        # Together and vLLM put usage on the finish chunk as well.
        chunk(
            delta(finish="stop"),
            usage={"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        ),
        chunk(usage={"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}),
        chunk(delta(content="")),
    ]

    usage = fold(stream).usage

    assert usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (5, 3, 8)


def test_usage_on_a_choice_chunk_is_used_when_no_usage_chunk_comes() -> None:
    stream = [
        chunk(delta(content="x")),
        chunk(
            delta(finish="stop"),
            usage={"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        ),
    ]

    usage = fold(stream).usage

    assert usage is not None
    assert usage.total_tokens == 2


def test_no_usage_without_a_usage_chunk() -> None:
    assert fold(TEXT_STREAM[:-1]).usage is None


def test_content_is_none_when_never_sent_and_empty_when_sent_empty() -> None:
    never = fold([chunk(delta(role="assistant")), chunk(delta(finish="stop"))])
    empty = fold([chunk(delta(role="assistant", content="")), chunk(delta(finish="stop"))])

    assert never.choices[0].message.content is None
    assert empty.choices[0].message.content == ""
    assert as_sdk(empty).choices[0].message.content == ""


def test_ollama_whole_tool_calls_with_repeated_role() -> None:
    def ollama(*choices: dict[str, Any]) -> ChatCompletionChunk:
        return chunk(*choices, system_fingerprint="fp_ollama")

    whole = '{"city":"Paris"}'
    stream = [
        ollama(delta(role="assistant", content="")),
        ollama(
            delta(
                role="assistant",
                content="",
                tool_calls=[
                    call(0, id="call_1", name="get_weather", args=whole),
                    call(1, id="call_2", name="get_time", args="{}"),
                ],
            )
        ),
        # Older Ollama numbers the calls of each chunk from 0 again.
        ollama(
            delta(
                role="assistant",
                content="",
                tool_calls=[call(0, id="call_3", name="get_news", args='{"q":"x"}')],
            )
        ),
        ollama(delta(role="assistant", content="", finish="tool_calls")),
    ]

    [choice] = as_sdk(fold(stream)).choices

    assert choice.message.role == "assistant"
    assert choice.message.content == ""
    assert summary(choice.message.tool_calls) == [
        ("call_1", "get_weather", whole),
        ("call_2", "get_time", "{}"),
        ("call_3", "get_news", '{"q":"x"}'),
    ]


def test_id_and_name_repeated_on_every_fragment_are_not_glued() -> None:
    stream = [
        chunk(delta(tool_calls=[call(0, id="call_1", name="lookup", args='{"a"')])),
        chunk(delta(tool_calls=[call(0, id="call_1", name="lookup", args=":1}")])),
        chunk(delta(finish="tool_calls")),
    ]

    assert summary(fold(stream).choices[0].message.tool_calls) == [("call_1", "lookup", '{"a":1}')]


def test_fragments_without_index_continue_the_last_call_until_a_new_id() -> None:
    stream = [
        chunk(delta(tool_calls=[call(None, id="call_1", name="first", args='{"x"')])),
        chunk(delta(tool_calls=[call(None, args=":1}")])),
        chunk(delta(tool_calls=[call(None, id="call_2", name="second", args="{")])),
        chunk(delta(tool_calls=[call(None, args="}")])),
        chunk(delta(finish="tool_calls")),
    ]

    assert summary(fold(stream).choices[0].message.tool_calls) == [
        ("call_1", "first", '{"x":1}'),
        ("call_2", "second", "{}"),
    ]


def test_refusal_is_concatenated_and_content_stays_none() -> None:
    stream = [
        chunk(delta(role="assistant", refusal="I can't ")),
        chunk(delta(refusal="help with that.")),
        chunk(delta(finish="stop")),
    ]

    message = as_sdk(fold(stream)).choices[0].message

    assert message.refusal == "I can't help with that."
    assert message.content is None
    assert message.refusal == sdk_fold(stream).choices[0].message.refusal


def test_logprobs_content_lists_are_concatenated() -> None:
    def token(text: str) -> dict[str, Any]:
        return {"token": text, "logprob": -0.1, "bytes": list(text.encode()), "top_logprobs": []}

    stream = [
        {**delta(content="He"), "logprobs": {"content": [token("He")], "refusal": None}},
        {**delta(content="y"), "logprobs": {"content": [token("y")], "refusal": None}},
        delta(finish="stop"),
    ]

    logprobs = as_sdk(fold(chunk(choice) for choice in stream)).choices[0].logprobs

    assert logprobs is not None
    assert [t.token for t in logprobs.content or ()] == ["He", "y"]
    assert logprobs.refusal is None


def test_logprobs_are_none_when_not_requested() -> None:
    assert fold(TEXT_STREAM).choices[0].logprobs is None


def test_unknown_fields_are_tolerated_and_streamed_text_kept() -> None:
    stream = [
        # An Azure content-filter event: no id, no model, no delta.
        ChatCompletionChunk.model_validate(
            {"id": "", "object": "", "created": 0, "model": "", "prompt_filter_results": []}
        ),
        chunk(
            {**delta(role="assistant", reasoning="Let me "), "token_id": 7, "text": "x"},
            x_groq={"id": "req_1"},
        ),
        chunk(delta(reasoning="think.", content="Done", seed=3, annotations="?")),
        chunk(delta(finish="stop")),
    ]

    result = fold(stream)

    assert result.id == "chatcmpl-1"
    assert result.model == "gpt-test"
    message = result.choices[0].message
    assert message.content == "Done"
    assert message.model_extra == {"reasoning": "Let me think."}
    assert result.to_wire()["choices"][0]["message"]["reasoning"] == "Let me think."
    as_sdk(result)


def test_legacy_function_call_is_assembled() -> None:
    stream = [
        chunk(delta(role="assistant", function_call={"name": "f", "arguments": '{"a"'})),
        chunk(delta(function_call={"arguments": ":1}"})),
        chunk(delta(finish="function_call")),
    ]

    message = as_sdk(fold(stream)).choices[0].message

    assert message.function_call is not None
    assert (message.function_call.name, message.function_call.arguments) == ("f", '{"a":1}')


async def test_collect_consumes_the_whole_stream() -> None:
    async def stream() -> AsyncIterator[ChatCompletionChunk]:
        for item in PARALLEL_TOOL_STREAM:
            yield item

    result = await collect(stream())

    assert result == fold(PARALLEL_TOOL_STREAM)
    assert len(result.choices[0].message.tool_calls or ()) == 2
