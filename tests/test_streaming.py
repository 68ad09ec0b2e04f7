from __future__ import annotations

import json
from collections.abc import AsyncGenerator
from typing import Any

import openai
import pytest
from openai.lib.streaming.chat import ChatCompletionStreamState

from leapasgi.exceptions import (
    StreamInterruptedError,
)
from leapasgi.streaming import (
    ChunkBatch,
    ChunkNormalizer,
    batches_of,
    chunks_from_completion,
    chunks_of,
)
from leapasgi.types import ChatCompletion, ChatCompletionChunk


def raw(delta: dict[str, Any], *, index: int = 0, finish: str | None = None, **extra: Any) -> Any:
    body = {
        "id": extra.pop("id", "c1"),
        "created": 5,
        "model": "m",
        "choices": [{"index": index, "delta": delta, "finish_reason": finish}],
    }
    body.update(extra)
    return ChatCompletionChunk.model_validate(body)


def run(chunks: list[ChatCompletionChunk], *, include_usage: bool = False) -> list[dict[str, Any]]:
    normalizer = ChunkNormalizer(include_usage=include_usage)
    out = [normalizer.push(c) for c in chunks]
    tail = normalizer.finish()
    return [c.to_wire() for c in [*out, tail] if c is not None]


def sdk_final(wire: list[dict[str, Any]]) -> Any:
    state: ChatCompletionStreamState = ChatCompletionStreamState()
    for item in wire:
        state.handle_chunk(openai.types.chat.ChatCompletionChunk.model_validate(item))
    return state.get_final_completion()


def test_role_only_in_the_first_delta_of_each_choice() -> None:
    chunks = [
        raw({"role": "assistant", "content": "a"}),
        raw({"role": "assistant", "content": "b"}, index=1),
        raw({"role": "assistant", "content": "c"}),
        raw({"role": "assistant", "content": "d"}, index=1),
        raw({}, finish="stop"),
        raw({}, index=1, finish="stop"),
    ]
    wire = run(chunks)
    roles = [(w["choices"][0]["index"], w["choices"][0]["delta"].get("role")) for w in wire]
    assert roles == [(0, "assistant"), (1, "assistant"), (0, None), (1, None), (0, None), (1, None)]
    final = sdk_final(wire)
    assert [c.message.content for c in final.choices] == ["ac", "bd"]
    assert {c.message.role for c in final.choices} == {"assistant"}


def test_a_missing_role_is_added_to_the_first_delta() -> None:
    wire = run([raw({"content": "x"}), raw({}, finish="stop")])
    assert wire[0]["choices"][0]["delta"]["role"] == "assistant"


def test_object_and_identity_are_made_consistent() -> None:
    chunks = [raw({"content": "x"}, object="chat.completion"), raw({}, finish="stop", id="c2")]
    wire = run(chunks)
    assert [json.loads(c.to_wire_json()) for c in chunks] == wire
    assert {w["object"] for w in wire} == {"chat.completion.chunk"}
    assert {w["id"] for w in wire} == {"c1"}


def test_repeated_tool_call_heads_are_stripped_per_index() -> None:
    def call(index: int, call_id: str, name: str, args: str) -> dict[str, Any]:
        return {
            "index": index,
            "id": call_id,
            "type": "function",
            "function": {"name": name, "arguments": args},
        }

    chunks = [
        raw({"role": "assistant", "content": None}),
        raw({"tool_calls": [call(0, "call_a", "weather", '{"ci')]}),
        raw({"tool_calls": [call(1, "call_b", "time", '{"tz":')]}),
        raw({"tool_calls": [call(0, "call_a", "weather", 'ty":"Oslo"}')]}),
        raw({"tool_calls": [call(1, "call_b", "time", '"UTC"}')]}),
        raw({}, finish="tool_calls"),
    ]
    wire = run(chunks)
    later = wire[3]["choices"][0]["delta"]["tool_calls"][0]
    assert later == {"index": 0, "function": {"arguments": 'ty":"Oslo"}'}}
    final = sdk_final(wire)
    calls = final.choices[0].message.tool_calls
    assert [(c.id, c.function.name) for c in calls] == [("call_a", "weather"), ("call_b", "time")]
    assert [json.loads(c.function.arguments) for c in calls] == [{"city": "Oslo"}, {"tz": "UTC"}]


def test_tool_calls_without_index_get_one() -> None:
    whole = {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    other = {"id": "call_2", "type": "function", "function": {"name": "g", "arguments": "{}"}}
    wire = run([raw({"tool_calls": [whole]}), raw({"tool_calls": [other]}), raw({}, finish="stop")])
    assert wire[0]["choices"][0]["delta"]["tool_calls"][0]["index"] == 0
    assert wire[1]["choices"][0]["delta"]["tool_calls"][0]["index"] == 1


def test_usage_rules_with_include_usage() -> None:
    usage = {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}
    wire = run([raw({"content": "x"}), raw({}, finish="stop", usage=usage)], include_usage=True)
    assert [w["usage"] for w in wire[:-1]] == [None, None]
    assert wire[-1]["choices"] == []
    assert wire[-1]["usage"]["total_tokens"] == 3
    assert wire[-1]["id"] == "c1"


def test_no_usage_chunk_without_include_usage() -> None:
    usage = {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}
    usage_only = ChatCompletionChunk.model_validate({"id": "c1", "choices": [], "usage": usage})
    wire = run([raw({"content": "x"}), raw({}, finish="stop"), usage_only])
    assert all(w["choices"] for w in wire)


def test_a_stream_that_never_finished_is_interrupted() -> None:
    normalizer = ChunkNormalizer(include_usage=False)
    normalizer.push(raw({"content": "x"}))
    with pytest.raises(StreamInterruptedError):
        normalizer.finish()
    with pytest.raises(StreamInterruptedError):
        ChunkNormalizer(include_usage=False).finish()


def test_a_whole_completion_becomes_a_valid_stream() -> None:
    completion = ChatCompletion.model_validate(
        {
            "id": "c9",
            "created": 1,
            "model": "m",
            "choices": [
                {
                    "index": 0,
                    "finish_reason": "tool_calls",
                    "message": {
                        "role": "assistant",
                        "content": None,
                        "tool_calls": [
                            {"id": "call_1", "function": {"name": "f", "arguments": '{"a":1}'}}
                        ],
                    },
                }
            ],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        }
    )
    wire = run(chunks_from_completion(completion, include_usage=True), include_usage=True)
    assert wire[-1]["usage"]["total_tokens"] == 2
    final = sdk_final(wire)
    assert final.choices[0].finish_reason == "tool_calls"
    assert final.choices[0].message.tool_calls[0].function.arguments == '{"a":1}'


def openai_chunk(delta: dict[str, Any], *, finish: str | None = None, **extra: Any) -> Any:
    """A chunk exactly as OpenAI sends it: every core field present."""
    body = {
        "id": "c1",
        "object": "chat.completion.chunk",
        "created": 5,
        "model": "m",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    body.update(extra)
    return ChatCompletionChunk.model_validate(body)


def mended_flags(chunks: list[ChatCompletionChunk], *, include_usage: bool = False) -> list[bool]:
    normalizer = ChunkNormalizer(include_usage=include_usage)
    flags = []
    for chunk in chunks:
        normalizer.push(chunk)
        flags.append(normalizer.mended)
    return flags


def test_chunks_as_openai_sends_them_are_not_mended() -> None:
    chunks = [
        openai_chunk({"role": "assistant", "content": ""}),
        openai_chunk({"content": "hi"}, x_vendor=1),
        openai_chunk(
            {"tool_calls": [{"index": 0, "id": "t", "type": "function", "function": {"name": "f"}}]}
        ),
        openai_chunk({"tool_calls": [{"index": 0, "function": {"arguments": "{}"}}]}),
        openai_chunk({}, finish="stop"),
    ]
    assert mended_flags(chunks) == [False] * 5
    with_usage = [
        openai_chunk({"role": "assistant", "content": "a"}, usage=None),
        openai_chunk({}, finish="stop", usage=None),
        ChatCompletionChunk.model_validate(
            {
                "id": "c1",
                "object": "chat.completion.chunk",
                "created": 5,
                "model": "m",
                "choices": [],
                "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3},
            }
        ),
    ]
    assert mended_flags(with_usage, include_usage=True) == [False] * 3


@pytest.mark.parametrize(
    ("chunks", "include_usage"),
    [
        pytest.param([raw({"role": "assistant"})], False, id="no object field"),
        pytest.param([openai_chunk({"content": "a"})], False, id="first delta without role"),
        pytest.param(
            [openai_chunk({"role": "assistant"}), openai_chunk({"role": "assistant"})],
            False,
            id="role repeated",
        ),
        pytest.param(
            [openai_chunk({"role": "assistant"}), openai_chunk({"content": "b"}, id="other")],
            False,
            id="identity changed",
        ),
        pytest.param([openai_chunk({"role": "assistant"}, finish="")], False, id="empty finish"),
        pytest.param([openai_chunk({"role": "assistant"}, usage=None)], False, id="usage unasked"),
        pytest.param([openai_chunk({"role": "assistant"})], True, id="usage key missing"),
        pytest.param(
            [
                openai_chunk(
                    {
                        "role": "assistant",
                        "tool_calls": [{"index": 0, "id": "t", "function": {"name": "f"}}],
                    }
                )
            ],
            False,
            id="tool call without type",
        ),
        pytest.param(
            [
                openai_chunk(
                    {
                        "role": "assistant",
                        "tool_calls": [
                            {"index": 0, "id": "t", "type": "function", "function": {"name": "f"}}
                        ],
                    }
                ),
                openai_chunk(
                    {
                        "tool_calls": [
                            {"index": 0, "id": "t", "type": "function", "function": {"name": "f"}}
                        ]
                    }
                ),
            ],
            False,
            id="tool call id repeated",
        ),
        pytest.param(
            [
                ChatCompletionChunk.model_validate(
                    {
                        "id": "c1",
                        "object": "chat.completion.chunk",
                        "created": 5,
                        "model": "m",
                        "choices": [{"delta": {"role": "assistant"}}],
                    }
                )
            ],
            False,
            id="choice without index and finish_reason",
        ),
    ],
)
def test_every_repair_marks_the_chunk_as_mended(
    chunks: list[ChatCompletionChunk], include_usage: bool
) -> None:
    assert mended_flags(chunks, include_usage=include_usage)[-1] is True


def test_a_batch_sends_the_upstream_bytes_of_unmended_chunks() -> None:
    upstream = b'{"id": "c1", "object": "chat.completion.chunk", "vendor": {"x": 1}}'
    mended = openai_chunk({"content": "b"})
    batch = ChunkBatch([openai_chunk({"content": "a"}), mended], [upstream, None])
    assert batch.sse() == b"data: " + upstream + b"\n\ndata: " + mended.to_wire_json() + b"\n\n"
    assert ChunkBatch([mended]).sse() == b"data: " + mended.to_wire_json() + b"\n\n"


@pytest.mark.anyio
async def test_chunks_become_batches_of_one_and_back() -> None:
    made = [ChatCompletionChunk.model_validate(raw({"content": str(i)})) for i in range(3)]
    closed: list[str] = []

    async def chunks() -> AsyncGenerator[ChatCompletionChunk, None]:
        try:
            for chunk in made:
                yield chunk
        finally:
            closed.append("chunks")

    batches = [batch async for batch in batches_of(chunks())]
    assert [len(batch) for batch in batches] == [1, 1, 1]
    assert [c async for c in chunks_of(batches_of(chunks()))] == made
    stopped = chunks_of(batches_of(chunks()))
    assert await anext(stopped) is made[0]
    await stopped.aclose()  # closing the outer stream closes the inner ones
    assert closed == ["chunks", "chunks", "chunks"]
