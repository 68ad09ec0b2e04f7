import copy
from typing import Any

import openai.types as sdk_types
import openai.types.chat as sdk
import pytest

from leapasgi.types import ChatCompletion, ChatCompletionChunk, ModelList

OPENAI_COMPLETION: dict[str, Any] = {
    "id": "chatcmpl-abc",
    "object": "chat.completion",
    "created": 1733000000,
    "model": "gpt-test",
    "system_fingerprint": "fp_123",
    "service_tier": "default",
    "choices": [
        {
            "index": 0,
            "finish_reason": "stop",
            "message": {
                "role": "assistant",
                "content": "Hello!",
                "refusal": None,
                "annotations": [],
            },
            "logprobs": None,
        }
    ],
    "usage": {
        "prompt_tokens": 9,
        "completion_tokens": 3,
        "total_tokens": 12,
        "prompt_tokens_details": {"cached_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0},
    },
}

TOOL_CALL_COMPLETION: dict[str, Any] = {
    **OPENAI_COMPLETION,
    "choices": [
        {
            "index": 0,
            "finish_reason": "tool_calls",
            "message": {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                    }
                ],
            },
            "logprobs": {
                "content": [
                    {"token": "x", "logprob": -0.5, "bytes": [120], "top_logprobs": []},
                ],
                "refusal": None,
            },
        }
    ],
}


@pytest.mark.parametrize("body", [OPENAI_COMPLETION, TOOL_CALL_COMPLETION])
def test_openai_completion_round_trips_and_the_sdk_accepts_it(body: dict[str, Any]) -> None:
    completion = ChatCompletion.model_validate(body)

    assert completion.to_wire() == body
    parsed = sdk.ChatCompletion.model_validate(completion.to_wire())
    assert parsed.model_dump(mode="json", exclude_unset=True) == body
    full = sdk.ChatCompletion.model_validate(completion.model_dump(mode="json"))
    assert full.model_dump(mode="json", exclude_none=True) == parsed.model_dump(
        mode="json", exclude_none=True
    )


def test_completion_fields_are_read() -> None:
    completion = ChatCompletion.model_validate(TOOL_CALL_COMPLETION)

    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    call = (choice.message.tool_calls or [])[0]
    assert (call.id, call.function.name) == ("call_1", "get_weather")
    assert call.function.arguments == '{"city":"Paris"}'
    assert completion.usage is not None
    assert completion.usage.completion_tokens_details is not None
    assert completion.usage.completion_tokens_details.reasoning_tokens == 0


def test_missing_object_created_and_id_get_defaults() -> None:
    completion = ChatCompletion.model_validate(
        {"model": "llama3", "choices": [{"message": {"content": "hi"}, "finish_reason": "stop"}]}
    )

    dumped = completion.model_dump(mode="json")
    assert (dumped["id"], dumped["object"], dumped["created"]) == ("", "chat.completion", 0)
    assert dumped["choices"][0]["index"] == 0
    assert dumped["choices"][0]["message"]["role"] == "assistant"
    assert sdk.ChatCompletion.model_validate(dumped).choices[0].message.content == "hi"


def test_wire_form_of_a_lenient_completion_satisfies_the_sdk() -> None:
    completion = ChatCompletion.model_validate(
        {"model": "llama3", "choices": [{"message": {"content": "hi"}, "finish_reason": "stop"}]}
    )

    parsed = sdk.ChatCompletion.model_validate(completion.to_wire())

    assert (parsed.object, parsed.choices[0].index) == ("chat.completion", 0)
    assert parsed.choices[0].message.content == "hi"


def test_wire_form_of_a_lenient_chunk_satisfies_the_sdk() -> None:
    chunk = ChatCompletionChunk.model_validate({"choices": [{"delta": {"content": "x"}}]})

    parsed = sdk.ChatCompletionChunk.model_validate(chunk.to_wire())

    assert (parsed.object, parsed.choices[0].index) == ("chat.completion.chunk", 0)


def test_ollama_reasoning_is_kept_and_dumped_back() -> None:
    body = copy.deepcopy(OPENAI_COMPLETION)
    body["system_fingerprint"] = "fp_ollama"
    body["choices"][0]["message"]["reasoning"] = "The user greets me."

    completion = ChatCompletion.model_validate(body)

    assert completion.choices[0].message.model_extra == {"reasoning": "The user greets me."}
    assert completion.to_wire() == body
    assert completion.model_dump(mode="json")["choices"][0]["message"]["reasoning"] == (
        "The user greets me."
    )


def test_together_extras_are_kept_on_chunks() -> None:
    body = {
        "id": "tg-1",
        "object": "chat.completion.chunk",
        "created": 1733000000,
        "model": "openai/gpt-oss-20b",
        "choices": [
            {
                "index": 0,
                "text": "Hi",
                "token_id": 13347,
                "seed": None,
                "delta": {"role": "assistant", "content": "Hi", "token_id": 13347},
                "finish_reason": None,
            }
        ],
        "usage": None,
    }

    chunk = ChatCompletionChunk.model_validate(body)

    assert chunk.to_wire() == body
    assert chunk.choices[0].model_extra == {"text": "Hi", "token_id": 13347, "seed": None}
    assert chunk.model_dump(mode="json")["choices"][0]["delta"]["token_id"] == 13347
    assert sdk.ChatCompletionChunk.model_validate(chunk.model_dump(mode="json")).choices[0].delta


def test_chunk_variants_parse() -> None:
    usage_chunk = ChatCompletionChunk.model_validate(
        {
            "id": "c",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": "m",
            "choices": [],
            "usage": {"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11},
        }
    )
    bare = ChatCompletionChunk.model_validate({"choices": [{"delta": {"content": "x"}}]})
    no_delta = ChatCompletionChunk.model_validate(
        {"id": "", "object": "", "choices": [{"index": 0, "content_filter_results": {}}]}
    )

    assert usage_chunk.choices == []
    assert usage_chunk.usage is not None
    assert usage_chunk.usage.total_tokens == 11
    assert bare.object == "chat.completion.chunk"
    assert bare.choices[0].index == 0
    assert bare.choices[0].delta.content == "x"
    assert no_delta.choices[0].delta.content is None
    assert no_delta.to_wire()["choices"][0]["content_filter_results"] == {}


def test_tool_call_fragments_parse() -> None:
    chunk = ChatCompletionChunk.model_validate(
        {
            "choices": [
                {
                    "index": 0,
                    "delta": {
                        "tool_calls": [
                            {"index": 1, "function": {"arguments": '{"ci'}},
                            {"id": "call_2", "function": {"name": "f"}},
                        ]
                    },
                }
            ]
        }
    )

    calls = chunk.choices[0].delta.tool_calls
    assert calls is not None
    first, second = calls
    assert (first.index, first.id, first.function and first.function.arguments) == (1, None, '{"ci')
    assert (second.index, second.id) == (None, "call_2")


def test_model_list_parses_provider_variants() -> None:
    body: dict[str, Any] = {
        "object": "list",
        "data": [
            {"id": "gpt-test", "object": "model", "created": 1686935002, "owned_by": "openai"},
            {"id": "llama3:8b", "object": "model", "created": 1733000000, "owned_by": "library"},
            {"id": "openai/gpt-oss-20b", "type": "chat", "context_length": 131072},
        ],
    }

    models = ModelList.model_validate(body)

    assert [m.id for m in models.data] == ["gpt-test", "llama3:8b", "openai/gpt-oss-20b"]
    wire = models.to_wire()
    assert wire["data"][:2] == body["data"][:2]
    assert wire["data"][2] == {**body["data"][2], "object": "model", "created": 0, "owned_by": ""}
    bare = models.data[2]
    assert (bare.object, bare.created, bare.owned_by) == ("model", 0, "")
    assert bare.model_extra == {"type": "chat", "context_length": 131072}
    for model in models.model_dump(mode="json")["data"]:
        assert sdk_types.Model.model_validate(model).id == model["id"]


def test_model_list_without_object_or_data() -> None:
    models = ModelList.model_validate({})

    assert models.model_dump(mode="json") == {"object": "list", "data": []}
