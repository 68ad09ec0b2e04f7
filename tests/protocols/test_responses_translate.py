from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx2
import openai
import pytest
from openai.types.responses import FunctionToolParam, Response, ResponseStreamEvent
from pydantic import TypeAdapter

from leapasgi.exceptions import InvalidRequestError
from leapasgi.protocols.responses import (
    EventKind,
    ResponsesRequest,
    ResponsesStreamWriter,
    classify_event,
    input_items,
    new_function_call_id,
    new_message_id,
    new_response_id,
    output_items,
    parse_responses_request,
    response_from_chat,
    responses_to_chat,
)
from leapasgi.types import ChatCompletion, ChatCompletionChunk

EVENTS: TypeAdapter[Any] = TypeAdapter(ResponseStreamEvent)
CREATED_AT = 1_765_000_000

WEATHER_PARAM: FunctionToolParam = {
    "type": "function",
    "name": "get_weather",
    "description": "Current weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    "strict": False,
}
WEATHER: dict[str, Any] = dict(WEATHER_PARAM)


def request(**fields: Any) -> ResponsesRequest:
    return parse_responses_request({"model": "gpt-test", **fields})


def translate(
    req: ResponsesRequest, items: list[dict[str, Any]] | None = None
) -> tuple[dict[str, Any], list[str]]:
    notes: list[str] = []
    chat = responses_to_chat(req, input_items(req) if items is None else items, notes)
    return chat.to_wire(), notes


# --- input forms ----------------------------------------------------------------------------


def test_a_string_input_is_one_user_message_after_the_instructions() -> None:
    req = request(input="What is 2+2?", instructions="Answer briefly.")

    assert input_items(req) == [
        {
            "type": "message",
            "role": "user",
            "content": [{"type": "input_text", "text": "What is 2+2?"}],
        }
    ]
    chat, notes = translate(req)
    assert chat["model"] == "gpt-test"
    assert chat["messages"] == [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "What is 2+2?"},
    ]
    assert notes == []


def test_message_items_of_every_role_and_form() -> None:
    req = request(
        input=[
            {"role": "developer", "content": "You are Codex."},
            {
                "type": "message",
                "role": "system",
                "content": [{"type": "input_text", "text": "Be terse."}],
            },
            {"role": "user", "content": "plain string content"},
            {
                "type": "message",
                "role": "user",
                "content": [
                    {"type": "input_text", "text": "first"},
                    {"type": "input_text", "text": "second"},
                ],
            },
            {
                "type": "message",
                "id": "msg_1",
                "status": "completed",
                "role": "assistant",
                "content": [{"type": "output_text", "text": "Earlier answer", "annotations": []}],
            },
            {"role": "assistant", "content": [{"type": "refusal", "refusal": "I can't."}]},
        ]
    )

    chat, notes = translate(req)

    assert chat["messages"] == [
        {"role": "developer", "content": "You are Codex."},
        {"role": "system", "content": "Be terse."},
        {"role": "user", "content": "plain string content"},
        {
            "role": "user",
            "content": [{"type": "text", "text": "first"}, {"type": "text", "text": "second"}],
        },
        {"role": "assistant", "content": "Earlier answer"},
        {"role": "assistant", "content": [{"type": "refusal", "refusal": "I can't."}]},
    ]
    assert notes == []


def test_images_files_and_audio_become_chat_parts() -> None:
    req = request(
        input=[
            {
                "role": "user",
                "content": [
                    {"type": "input_text", "text": "What is in these?"},
                    {
                        "type": "input_image",
                        "image_url": "https://example.com/cat.png",
                        "detail": "low",
                    },
                    {
                        "type": "input_image",
                        "image_url": "data:image/png;base64,iVBORw0KGgo=",
                        "detail": "auto",
                    },
                    {"type": "input_image", "file_id": "file-img", "detail": "high"},
                    {"type": "input_file", "file_id": "file-pdf", "filename": "report.pdf"},
                    {"type": "input_file", "file_url": "https://example.com/report.pdf"},
                    {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}},
                ],
            }
        ]
    )

    chat, notes = translate(req)

    assert chat["messages"][0]["content"] == [
        {"type": "text", "text": "What is in these?"},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.png", "detail": "low"}},
        {
            "type": "image_url",
            "image_url": {"url": "data:image/png;base64,iVBORw0KGgo=", "detail": "auto"},
        },
        {"type": "file", "file": {"file_id": "file-img"}},
        {"type": "file", "file": {"file_id": "file-pdf", "filename": "report.pdf"}},
        {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}},
    ]
    assert notes == [
        "sent input_image by file_id as a file part",
        "dropped file_url of input_file content",
        "dropped input_file without file_data or file_id",
    ]


def test_an_image_in_a_system_message_is_dropped_with_a_note() -> None:
    req = request(
        input=[
            {
                "role": "system",
                "content": [
                    {"type": "input_text", "text": "Rules"},
                    {"type": "input_image", "image_url": "https://example.com/logo.png"},
                ],
            },
            {"role": "user", "content": "hi"},
        ]
    )

    chat, notes = translate(req)

    assert chat["messages"][0] == {"role": "system", "content": "Rules"}
    assert notes == ["dropped input_image content of system messages"]


# --- function calls in the history ----------------------------------------------------------


def codex_turn_history() -> list[dict[str, Any]]:
    """A Codex-style history: a reasoning item, text, two parallel calls, their outputs."""
    return [
        {
            "type": "message",
            "role": "developer",
            "content": [{"type": "input_text", "text": "You are Codex."}],
        },
        {
            "type": "message",
            "role": "user",
            "content": [{"type": "input_text", "text": "Weather in Paris and Oslo?"}],
        },
        {"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": "gAAAA..."},
        {
            "type": "message",
            "role": "assistant",
            "content": [{"type": "output_text", "text": "Checking both."}],
        },
        {
            "type": "function_call",
            "id": "fc_1",
            "call_id": "call_paris",
            "name": "get_weather",
            "arguments": '{"city":"Paris"}',
        },
        {
            "type": "function_call",
            "id": "fc_2",
            "call_id": "call_oslo",
            "name": "get_weather",
            "arguments": '{"city":"Oslo"}',
        },
        {"type": "function_call_output", "call_id": "call_paris", "output": "18C, sunny"},
        {
            "type": "function_call_output",
            "call_id": "call_oslo",
            "output": [{"type": "input_text", "text": "4C, snow"}],
        },
        {
            "type": "function_call",
            "call_id": "call_again",
            "name": "get_weather",
            "arguments": '{"city":"Rome"}',
        },
        {"type": "function_call_output", "call_id": "call_again", "output": "22C"},
    ]


def test_a_function_call_round_trip_becomes_tool_calls_and_tool_messages() -> None:
    req = request(input=codex_turn_history(), tools=[WEATHER])

    chat, notes = translate(req)

    assert chat["messages"][2:] == [
        {
            "role": "assistant",
            "content": "Checking both.",
            "tool_calls": [
                {
                    "id": "call_paris",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                },
                {
                    "id": "call_oslo",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'},
                },
            ],
        },
        {"role": "tool", "tool_call_id": "call_paris", "content": "18C, sunny"},
        {"role": "tool", "tool_call_id": "call_oslo", "content": "4C, snow"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_again",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Rome"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_again", "content": "22C"},
    ]
    assert notes == ["dropped reasoning items"]


def test_images_a_tool_returned_follow_the_tool_messages_as_a_user_message() -> None:
    image = {"type": "input_image", "image_url": "data:image/png;base64,iVBORw0KGgo="}
    req = request(
        input=[
            {"role": "user", "content": "Look at both screenshots"},
            {"type": "function_call", "call_id": "call_a", "name": "view_image", "arguments": "{}"},
            {"type": "function_call", "call_id": "call_b", "name": "view_image", "arguments": "{}"},
            {
                "type": "function_call_output",
                "call_id": "call_a",
                "output": [{"type": "input_text", "text": "shot a"}, image],
            },
            {"type": "function_call_output", "call_id": "call_b", "output": [image]},
        ],
        tools=[{"type": "function", "name": "view_image", "parameters": {"type": "object"}}],
    )

    chat, notes = translate(req)

    roles = [m["role"] for m in chat["messages"]]
    assert roles == ["user", "assistant", "tool", "tool", "user"]
    assert chat["messages"][2]["content"] == "shot a"
    assert chat["messages"][3]["content"] == ""
    picture = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
    assert chat["messages"][4]["content"] == [picture, picture]
    assert notes == ["moved images and files of function_call_output into a user message"]


def test_unknown_item_types_are_dropped_with_a_note() -> None:
    req = request(
        input=[
            {"role": "user", "content": "hi"},
            {
                "type": "web_search_call",
                "id": "ws_1",
                "status": "completed",
                "action": {"type": "search"},
            },
            {"type": "item_reference", "id": "msg_old"},
        ]
    )

    chat, notes = translate(req)

    assert len(chat["messages"]) == 1
    assert notes == ["dropped web_search_call items", "dropped item_reference items"]


# --- tools, tool_choice, text.format, carried and dropped fields -----------------------------


def codex_body() -> dict[str, Any]:
    """The shape of a Codex CLI request (see shared/reference/coding-agents.md)."""
    return {
        "model": "gpt-test",
        "instructions": None,
        "input": [
            {
                "type": "message",
                "role": "developer",
                "content": [{"type": "input_text", "text": "base instructions"}],
            },
            {
                "type": "message",
                "role": "user",
                "content": [{"type": "input_text", "text": "list the files"}],
            },
        ],
        "tools": [
            {
                "type": "function",
                "name": "shell_command",
                "description": "Runs a shell command",
                "strict": False,
                "parameters": {
                    "type": "object",
                    "properties": {"command": {"type": "string"}},
                    "required": ["command"],
                },
            },
            {
                "type": "namespace",
                "name": "mcp__docs",
                "description": "Docs server",
                "tools": [
                    {"type": "function", "name": "search_docs", "parameters": {"type": "object"}},
                    {"type": "custom", "name": "raw_query"},
                ],
            },
            {"type": "web_search", "external_web_access": False},
        ],
        "tool_choice": "auto",
        "parallel_tool_calls": True,
        "reasoning": {"summary": "auto"},
        "store": False,
        "stream": True,
        "include": ["reasoning.encrypted_content"],
        "prompt_cache_key": "0199a2b3-session",
        "client_metadata": {"originator": "codex_cli_rs"},
    }


def test_a_codex_request_translates_with_a_note_for_everything_dropped() -> None:
    req = parse_responses_request(json.dumps(codex_body()).encode())

    chat, notes = translate(req)

    assert [t["function"]["name"] for t in chat["tools"]] == ["shell_command", "search_docs"]
    assert chat["tools"][0] == {
        "type": "function",
        "function": {
            "name": "shell_command",
            "description": "Runs a shell command",
            "parameters": {
                "type": "object",
                "properties": {"command": {"type": "string"}},
                "required": ["command"],
            },
            "strict": False,
        },
    }
    assert chat["tool_choice"] == "auto"
    assert chat["parallel_tool_calls"] is True
    assert chat["stream"] is True
    assert chat["stream_options"] == {"include_usage": True}
    assert [m["role"] for m in chat["messages"]] == ["developer", "user"]
    assert not {"store", "reasoning", "include"} & chat.keys()
    assert notes == [
        "dropped tool custom in namespace mcp__docs",
        "dropped tool web_search",
        "dropped reasoning",
        "dropped include",
        "dropped prompt_cache_key",
        "dropped client_metadata",
    ]


def test_other_dropped_request_fields_each_get_one_note() -> None:
    req = request(
        input="hi",
        truncation="auto",
        service_tier="flex",
        top_logprobs=3,
        background=False,
        text={"format": {"type": "text"}, "verbosity": "low"},
    )

    chat, notes = translate(req)

    assert "response_format" not in chat
    assert sorted(notes) == [
        "dropped background",
        "dropped service_tier",
        "dropped top_logprobs",
        "dropped truncation",
        "dropped verbosity of text",
    ]


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        ("auto", "auto"),
        ("none", "none"),
        ("required", "required"),
        (
            {"type": "function", "name": "get_weather"},
            {"type": "function", "function": {"name": "get_weather"}},
        ),
        (
            {
                "type": "allowed_tools",
                "mode": "required",
                "tools": [{"type": "function", "name": "get_weather"}],
            },
            {
                "type": "allowed_tools",
                "allowed_tools": {
                    "mode": "required",
                    "tools": [{"type": "function", "function": {"name": "get_weather"}}],
                },
            },
        ),
    ],
)
def test_tool_choice_forms(choice: Any, expected: Any) -> None:
    chat, notes = translate(request(input="hi", tools=[WEATHER], tool_choice=choice))

    assert chat["tool_choice"] == expected
    assert notes == []


def test_a_hosted_tool_choice_is_dropped_with_a_note() -> None:
    chat, notes = translate(
        request(
            input="hi", tools=[WEATHER, {"type": "web_search"}], tool_choice={"type": "web_search"}
        )
    )

    assert "tool_choice" not in chat
    assert notes == ["dropped tool web_search", "dropped tool_choice web_search"]


def test_without_function_tools_the_tool_settings_go_with_notes() -> None:
    chat, notes = translate(
        request(
            input="hi",
            tools=[{"type": "web_search"}],
            tool_choice="required",
            parallel_tool_calls=True,
        )
    )

    assert not {"tools", "tool_choice", "parallel_tool_calls"} & chat.keys()
    assert notes == [
        "dropped tool web_search",
        "dropped parallel_tool_calls (no function tools)",
        "dropped tool_choice (no function tools)",
    ]


def test_text_format_json_schema_and_json_object() -> None:
    schema = {
        "type": "object",
        "properties": {"answer": {"type": "integer"}},
        "required": ["answer"],
        "additionalProperties": False,
    }
    chat, notes = translate(
        request(
            input="2+2?",
            text={
                "format": {"type": "json_schema", "name": "sum", "schema": schema, "strict": True}
            },
        )
    )
    assert chat["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "sum", "schema": schema, "strict": True},
    }
    assert notes == []

    chat, _ = translate(request(input="2+2 as JSON", text={"format": {"type": "json_object"}}))
    assert chat["response_format"] == {"type": "json_object"}


def test_sampling_limits_are_carried_and_metadata_stays_with_the_gateway() -> None:
    chat, notes = translate(
        request(
            input="hi",
            max_output_tokens=256,
            temperature=0.2,
            top_p=0.9,
            user="user-42",
            metadata={"ticket": "T-1"},
            stream=False,
            store=True,
            previous_response_id="resp_0123",
        )
    )

    assert chat["max_completion_tokens"] == 256
    assert "max_tokens" not in chat
    assert (chat["temperature"], chat["top_p"], chat["user"]) == (0.2, 0.9, "user-42")
    assert "metadata" not in chat
    assert chat["stream"] is False
    assert "stream_options" not in chat
    assert notes == []


def test_a_result_chat_refuses_is_an_invalid_request_error() -> None:
    req = request(input="hi", tools=[WEATHER], tool_choice={"type": "function", "name": "missing"})

    with pytest.raises(InvalidRequestError) as caught:
        responses_to_chat(req, input_items(req), [])

    assert caught.value.param == "tool_choice"


# --- parse errors ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"input": "hi"}, "model"),
        ({"model": "", "input": "hi"}, "model"),
        ({"model": "m", "input": 42}, "input"),
        ({"model": "m", "input": ["not an item"]}, "input[0]"),
        ({"model": "m", "input": [{"content": "no role"}]}, "input[0].type"),
        ({"model": "m", "input": [{"role": "tool", "content": "x"}]}, "input[0].role"),
        ({"model": "m", "input": [{"role": "user"}]}, "input[0].content"),
        (
            {"model": "m", "input": [{"type": "function_call", "name": "f", "arguments": "{}"}]},
            "input[0].call_id",
        ),
        (
            {
                "model": "m",
                "input": [{"type": "function_call", "call_id": "c", "name": "f", "arguments": {}}],
            },
            "input[0].arguments",
        ),
        (
            {"model": "m", "input": [{"type": "function_call_output", "call_id": "c"}]},
            "input[0].output",
        ),
        ({"model": "m", "input": [{"role": "user", "content": ["x"]}]}, "input[0].content[0]"),
        ({"model": "m", "input": "hi", "tool_choice": "always"}, "tool_choice"),
        ({"model": "m", "input": "hi", "tools": [{"type": "function"}]}, "tools[0].name"),
        ({"model": "m", "input": "hi", "tools": [{"name": "f"}]}, "tools[0].type"),
        (
            {
                "model": "m",
                "input": "hi",
                "tools": [{"type": "namespace", "name": "n", "tools": [{"type": "function"}]}],
            },
            "tools[0].tools[0].name",
        ),
        (
            {
                "model": "m",
                "input": "hi",
                "text": {"format": {"type": "json_schema", "schema": {}}},
            },
            "text.format.name",
        ),
        ({"model": "m", "input": "hi", "text": {"format": {"type": "yaml"}}}, "text.format.type"),
        ({"model": "m", "input": "hi", "temperature": 3}, "temperature"),
        ({"model": "m", "input": "hi", "max_output_tokens": 0}, "max_output_tokens"),
        ({"model": "m", "input": "hi", "stream": "yes please"}, "stream"),
        ({"model": "m", "input": "hi", "metadata": {"k": 1}}, "metadata.k"),
        ({"model": "m", "input": "hi", "api_base": "http://evil.example"}, "api_base"),
        (
            {"model": "m", "input": "hi", "client_metadata": {"base-url": "http://evil.example"}},
            "client_metadata.base-url",
        ),
    ],
)
def test_bad_bodies_are_invalid_request_errors_naming_the_field(
    body: dict[str, Any], param: str
) -> None:
    for form in (body, json.dumps(body).encode()):
        with pytest.raises(InvalidRequestError) as caught:
            parse_responses_request(form)
        assert caught.value.param == param, caught.value.message
        assert caught.value.http_status == 400


@pytest.mark.parametrize("raw", [b"{", b"", b"[1, 2]", b'"text"'])
def test_a_body_that_is_not_a_json_object_is_invalid_json(raw: bytes) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        parse_responses_request(raw)

    assert caught.value.code == "invalid_json"
    assert caught.value.param is None


def test_schema_property_names_are_data_not_forbidden_fields() -> None:
    secret_schema = {
        "type": "object",
        "properties": {"api_key": {"type": "string"}, "base_url": {"type": "string"}},
    }
    body = {
        "model": "m",
        "input": "hi",
        "tools": [
            {"type": "function", "name": "login", "parameters": secret_schema},
            {
                "type": "namespace",
                "name": "ns",
                "description": "",
                "tools": [{"type": "function", "name": "f", "parameters": secret_schema}],
            },
        ],
        "text": {"format": {"type": "json_schema", "name": "creds", "schema": secret_schema}},
    }

    req = parse_responses_request(json.dumps(body).encode())
    chat, _ = translate(req)

    assert chat["tools"][0]["function"]["parameters"] == secret_schema


def test_unknown_request_fields_are_kept_on_the_model() -> None:
    req = request(input="hi", prompt_cache_key="abc")

    assert req.model_extra == {"prompt_cache_key": "abc"}


# --- response_from_chat ---------------------------------------------------------------------


def completion(
    message: dict[str, Any], finish_reason: str = "stop", **usage: Any
) -> ChatCompletion:
    return ChatCompletion.model_validate(
        {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "created": CREATED_AT,
            "model": "upstream-model-name",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", **message},
                    "finish_reason": finish_reason,
                }
            ],
            "usage": {
                "prompt_tokens": 1200,
                "completion_tokens": 35,
                "total_tokens": 1235,
                "prompt_tokens_details": {"cached_tokens": 1024},
                "completion_tokens_details": {"reasoning_tokens": 0},
                **usage,
            },
        }
    )


def test_a_text_completion_becomes_a_completed_response() -> None:
    req = request(
        input="Say hello", instructions="Be brief.", temperature=0.5, max_output_tokens=100
    )

    data = response_from_chat(
        completion({"content": "Hello there!"}), req, response_id="resp_abc", created_at=CREATED_AT
    )
    response = Response.model_validate(data)

    assert "output_text" not in data
    assert response.id == "resp_abc"
    assert response.object == "response"
    assert response.created_at == CREATED_AT
    assert response.status == "completed"
    assert response.model == "gpt-test"
    assert response.output_text == "Hello there!"
    message = data["output"][0]
    assert (message["type"], message["role"]) == ("message", "assistant")
    assert message["status"] == "completed"
    assert re.fullmatch(r"msg_[0-9a-f]{24}", message["id"])
    assert message["content"] == [
        {"type": "output_text", "text": "Hello there!", "annotations": [], "logprobs": []}
    ]
    assert response.usage is not None
    assert response.usage.input_tokens == 1200
    assert response.usage.input_tokens_details.cached_tokens == 1024
    assert response.usage.output_tokens == 35
    assert response.usage.output_tokens_details.reasoning_tokens == 0
    assert response.usage.total_tokens == 1235
    assert response.instructions == "Be brief."
    assert response.temperature == 0.5
    assert response.max_output_tokens == 100
    assert response.metadata == {}
    assert response.tools == []
    assert response.tool_choice == "auto"
    assert response.parallel_tool_calls is True
    assert response.error is None
    assert response.incomplete_details is None


def test_tool_calls_become_function_call_items_with_their_namespace() -> None:
    body = codex_body()
    req = parse_responses_request(body)
    calls = [
        {
            "id": "call_1",
            "type": "function",
            "function": {"name": "shell_command", "arguments": '{"command":"ls"}'},
        },
        {
            "id": "call_2",
            "type": "function",
            "function": {"name": "search_docs", "arguments": '{"q":"sse"}'},
        },
    ]

    data = response_from_chat(
        completion({"content": None, "tool_calls": calls}, "tool_calls"),
        req,
        response_id="resp_tools",
        created_at=CREATED_AT,
    )
    response = Response.model_validate(data)

    assert [item.type for item in response.output] == ["function_call", "function_call"]
    first, second = data["output"]
    assert re.fullmatch(r"fc_[0-9a-f]{24}", first["id"])
    assert (first["call_id"], first["name"], first["arguments"]) == (
        "call_1",
        "shell_command",
        '{"command":"ls"}',
    )
    assert first["status"] == "completed"
    assert "namespace" not in first
    assert second["namespace"] == "mcp__docs"
    assert response.output_text == ""
    assert [tool.type for tool in response.tools] == ["function", "namespace", "web_search"]
    assert response.parallel_tool_calls is True


def test_a_completion_cut_at_max_output_tokens_is_incomplete() -> None:
    req = request(input="Write an essay", max_output_tokens=16)

    data = response_from_chat(
        completion(
            {"content": "Once upon a time"}, "length", completion_tokens=16, total_tokens=1216
        ),
        req,
        response_id="resp_cut",
        created_at=CREATED_AT,
    )
    response = Response.model_validate(data)

    assert response.status == "incomplete"
    assert response.incomplete_details is not None
    assert response.incomplete_details.reason == "max_output_tokens"
    assert response.max_output_tokens == 16
    assert response.usage is not None
    assert response.usage.output_tokens == 16
    assert data["output"][0]["status"] == "incomplete"


def test_a_content_filter_stop_is_incomplete_and_a_refusal_is_a_part() -> None:
    data = response_from_chat(
        completion({"content": None, "refusal": "I can't help with that."}, "content_filter"),
        request(input="x", text={"format": {"type": "text"}}, metadata={"k": "v"}),
        response_id="resp_r",
        created_at=CREATED_AT,
    )
    response = Response.model_validate(data)

    assert response.incomplete_details is not None
    assert response.incomplete_details.reason == "content_filter"
    assert data["output"][0]["content"] == [
        {"type": "refusal", "refusal": "I can't help with that."}
    ]
    assert response.metadata == {"k": "v"}


def test_output_items_carry_a_turn_into_the_next_history() -> None:
    req = request(input="Weather in Paris?", tools=[WEATHER])
    calls = [
        {
            "id": "call_p",
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
        }
    ]
    first = response_from_chat(
        completion({"content": "Let me look.", "tool_calls": calls}, "tool_calls"),
        req,
        response_id="resp_1",
        created_at=CREATED_AT,
    )

    follow_up = request(
        input=[{"type": "function_call_output", "call_id": "call_p", "output": "18C"}],
        previous_response_id="resp_1",
        tools=[WEATHER],
    )
    history = input_items(req) + output_items(first) + input_items(follow_up)
    chat, notes = translate(follow_up, history)

    assert chat["messages"] == [
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": "Let me look.",
            "tool_calls": [
                {
                    "id": "call_p",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_p", "content": "18C"},
    ]
    assert notes == []
    output_items(first)[0]["content"].clear()
    assert first["output"][0]["content"], "output_items returns copies"


# --- the stream writer ----------------------------------------------------------------------


def chunk(
    delta: dict[str, Any] | None = None,
    finish: str | None = None,
    usage: dict[str, Any] | None = None,
) -> ChatCompletionChunk:
    choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}]
    return ChatCompletionChunk.model_validate(
        {
            "id": "chatcmpl-s",
            "object": "chat.completion.chunk",
            "created": CREATED_AT,
            "model": "up",
            "choices": choices,
            "usage": usage,
        }
    )


USAGE = {
    "prompt_tokens": 812,
    "completion_tokens": 57,
    "total_tokens": 869,
    "prompt_tokens_details": {"cached_tokens": 512},
}


def text_then_tools_chunks() -> list[list[ChatCompletionChunk]]:
    """Batches of a stream: text, then two parallel tool calls with split arguments."""
    return [
        [chunk({"role": "assistant", "content": ""}), chunk({"content": "Checking "})],
        [chunk({"content": "the weather."})],
        [
            chunk(
                {
                    "tool_calls": [
                        {
                            "index": 0,
                            "id": "call_p",
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": ""},
                        }
                    ]
                }
            ),
            chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"ci'}}]}),
        ],
        [chunk({"tool_calls": [{"index": 0, "function": {"arguments": 'ty":"Paris"}'}}]})],
        [
            chunk(
                {
                    "tool_calls": [
                        {
                            "index": 1,
                            "id": "call_o",
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": '{"city":'},
                        }
                    ]
                }
            )
        ],
        [
            chunk({"tool_calls": [{"index": 1, "function": {"arguments": '"Oslo"}'}}]}),
            chunk({}, "tool_calls"),
        ],
        [chunk(usage=USAGE)],
        [],
    ]


def parse_sse(raw: bytes) -> list[dict[str, Any]]:
    events = []
    for block in raw.decode().split("\n\n"):
        if not block:
            continue
        name_line, data_line = block.split("\n")
        assert name_line.startswith("event: ")
        assert data_line.startswith("data: ")
        data = json.loads(data_line.removeprefix("data: "))
        assert data["type"] == name_line.removeprefix("event: ")
        events.append(data)
    assert raw.endswith(b"\n\n") or not raw
    return events


def run_writer(
    req: ResponsesRequest,
    batches: list[list[ChatCompletionChunk]],
    end: Callable[[ResponsesStreamWriter], bytes],
) -> tuple[ResponsesStreamWriter, bytes]:
    writer = ResponsesStreamWriter(req, response_id="resp_stream", created_at=CREATED_AT)
    raw = writer.preamble()
    for batch in batches:
        raw += writer.feed(batch)
    return writer, raw + end(writer)


def assert_well_formed(events: list[dict[str, Any]]) -> None:
    for event in events:
        EVENTS.validate_python(event)
        if "response" in event:
            assert event["response"]["id"] == "resp_stream"
    assert [e["sequence_number"] for e in events] == list(range(len(events)))


def test_a_text_and_tool_call_stream_is_a_valid_event_sequence() -> None:
    req = request(input="Weather in Paris and Oslo?", tools=[WEATHER], stream=True)

    writer, raw = run_writer(req, text_then_tools_chunks(), ResponsesStreamWriter.complete)
    events = parse_sse(raw)

    assert_well_formed(events)
    assert [e["type"] for e in events] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.delta",
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert events[0]["response"]["status"] == "in_progress"
    assert events[0]["response"]["output"] == []
    message_id = events[2]["item"]["id"]
    assert {e["item_id"] for e in events[3:8]} == {message_id}
    assert events[6]["text"] == "Checking the weather."
    assert [
        e["delta"] for e in events if e["type"] == "response.function_call_arguments.delta"
    ] == ['{"ci', 'ty":"Paris"}', '{"city":', '"Oslo"}']
    dones = [e["arguments"] for e in events if e["type"] == "response.function_call_arguments.done"]
    assert dones == ['{"city":"Paris"}', '{"city":"Oslo"}']

    final = Response.model_validate(events[-1]["response"])
    assert final.status == "completed"
    assert final.output_text == "Checking the weather."
    assert [(o.type, getattr(o, "call_id", None)) for o in final.output] == [
        ("message", None),
        ("function_call", "call_p"),
        ("function_call", "call_o"),
    ]
    assert final.usage is not None
    assert (final.usage.input_tokens, final.usage.output_tokens, final.usage.total_tokens) == (
        812,
        57,
        869,
    )
    assert final.usage.input_tokens_details.cached_tokens == 512
    assert writer.usage == (812, 57)
    assert writer.response == events[-1]["response"]
    assert writer.complete() == b""
    assert writer.feed([chunk({"content": "late"})]) == b""


def test_a_stream_cut_at_max_output_tokens_ends_with_response_incomplete() -> None:
    req = request(input="Write an essay", max_output_tokens=16, stream=True)
    batches = [
        [
            chunk({"role": "assistant", "content": "Once upon"}),
            chunk({"content": " a time"}),
            chunk({}, "length"),
        ],
        [chunk(usage={"prompt_tokens": 9, "completion_tokens": 16, "total_tokens": 25})],
    ]

    writer, raw = run_writer(req, batches, ResponsesStreamWriter.complete)
    events = parse_sse(raw)

    assert_well_formed(events)
    final = events[-1]
    assert final["type"] == "response.incomplete"
    assert final["response"]["status"] == "incomplete"
    assert final["response"]["incomplete_details"] == {"reason": "max_output_tokens"}
    assert final["response"]["max_output_tokens"] == 16
    assert final["response"]["usage"]["output_tokens"] == 16
    done = next(e for e in events if e["type"] == "response.output_item.done")
    assert done["item"]["status"] == "incomplete"
    assert writer.usage == (9, 16)


def test_a_stream_with_no_content_still_answers_one_empty_message() -> None:
    writer, raw = run_writer(
        request(input="hi", stream=True),
        [[chunk({"role": "assistant"}, "stop")]],
        ResponsesStreamWriter.complete,
    )
    events = parse_sse(raw)

    assert_well_formed(events)
    assert Response.model_validate(events[-1]["response"]).output_text == ""
    assert [e["type"] for e in events][2:5] == [
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.done",
    ]
    assert writer.usage is None


def test_a_refusal_streams_as_a_refusal_part() -> None:
    batches = [
        [
            chunk({"role": "assistant", "refusal": "I can't"}),
            chunk({"refusal": " do that."}),
            chunk({}, "stop"),
        ]
    ]

    _, raw = run_writer(request(input="x", stream=True), batches, ResponsesStreamWriter.complete)
    events = parse_sse(raw)

    assert_well_formed(events)
    refusal_done = next(e for e in events if e["type"] == "response.refusal.done")
    assert refusal_done["refusal"] == "I can't do that."
    assert events[-1]["response"]["output"][0]["content"] == [
        {"type": "refusal", "refusal": "I can't do that."}
    ]


def test_a_namespaced_call_streams_with_its_namespace() -> None:
    req = parse_responses_request(codex_body())
    batches = [
        [
            chunk(
                {
                    "role": "assistant",
                    "tool_calls": [
                        {
                            "index": 0,
                            "id": "call_d",
                            "type": "function",
                            "function": {"name": "search_docs", "arguments": '{"q":"x"}'},
                        }
                    ],
                }
            ),
            chunk({}, "tool_calls"),
        ]
    ]

    _, raw = run_writer(req, batches, ResponsesStreamWriter.complete)
    events = parse_sse(raw)

    assert_well_formed(events)
    assert events[-1]["response"]["output"][0]["namespace"] == "mcp__docs"


def test_fail_after_content_ends_with_response_failed_then_an_error_event() -> None:
    batches = text_then_tools_chunks()[:4]

    writer, raw = run_writer(
        request(input="Weather?", tools=[WEATHER], stream=True),
        batches,
        lambda w: w.fail("The upstream connection was reset", code="upstream_connection_error"),
    )
    events = parse_sse(raw)

    assert_well_formed(events)
    failed, error = events[-2], events[-1]
    assert failed["type"] == "response.failed"
    assert failed["response"]["status"] == "failed"
    assert failed["response"]["error"] == {
        "code": "server_error",
        "message": "The upstream connection was reset",
    }
    assert [item["status"] for item in failed["response"]["output"]] == ["completed", "incomplete"]
    assert failed["response"]["output"][1]["arguments"] == '{"city":"Paris"}'
    assert error["type"] == "error"
    assert (error["code"], error["message"], error["param"]) == (
        "upstream_connection_error",
        "The upstream connection was reset",
        None,
    )
    assert error["error"] == {
        "type": "server_error",
        "code": "upstream_connection_error",
        "message": "The upstream connection was reset",
        "param": None,
    }
    assert not any(
        e["type"] == "response.output_item.done" and e["item"]["type"] == "function_call"
        for e in events
    )
    assert writer.response["status"] == "failed"
    assert writer.fail("again", code="x") == b""
    assert writer.complete() == b""


def test_fail_keeps_a_code_the_sdk_knows() -> None:
    writer = ResponsesStreamWriter(
        request(input="x"), response_id="resp_stream", created_at=CREATED_AT
    )

    events = parse_sse(
        writer.fail("Slow down", code="rate_limit_exceeded", error_type="rate_limit_error")
    )

    assert [e["type"] for e in events] == [
        "response.created",
        "response.in_progress",
        "response.failed",
        "error",
    ]
    assert_well_formed(events)
    assert events[2]["response"]["error"]["code"] == "rate_limit_exceeded"
    assert events[3]["error"]["type"] == "rate_limit_error"


# --- through the openai SDK -----------------------------------------------------------------


@asynccontextmanager
async def sdk_answering(
    answer: Callable[[dict[str, Any]], httpx2.Response], seen: list[dict[str, Any]]
) -> AsyncIterator[openai.AsyncOpenAI]:
    def handle(http_request: httpx2.Request) -> httpx2.Response:
        assert (http_request.method, http_request.url.path) == ("POST", "/v1/responses")
        body = json.loads(http_request.content)
        seen.append(body)
        return answer(body)

    async with (
        httpx2.AsyncClient(transport=httpx2.MockTransport(handle)) as http,
        openai.AsyncOpenAI(
            api_key="k",
            base_url="http://gateway.test/v1",
            http_client=http,
            max_retries=0,
            _strict_response_validation=True,
        ) as client,
    ):
        yield client


def streaming(
    batches: list[list[ChatCompletionChunk]], end: Callable[[ResponsesStreamWriter], bytes]
) -> Callable[[dict[str, Any]], httpx2.Response]:
    def answer(body: dict[str, Any]) -> httpx2.Response:
        req = parse_responses_request(json.dumps(body).encode())
        responses_to_chat(req, input_items(req), [])
        _, raw = run_writer(req, batches, end)
        return httpx2.Response(200, headers={"content-type": "text/event-stream"}, content=raw)

    return answer


async def read_with_the_stream_helper(client: openai.AsyncOpenAI, seen: list[str]) -> Response:
    async with client.responses.stream(
        model="gpt-test", input="Weather in Paris and Oslo?", tools=[WEATHER_PARAM]
    ) as stream:
        async for event in stream:
            seen.append(event.type if event.type != "response.output_text.delta" else event.delta)
        return await stream.get_final_response()


async def iterate_create(client: openai.AsyncOpenAI) -> list[ResponseStreamEvent]:
    stream = await client.responses.create(
        model="gpt-test", input="hi", tools=[WEATHER_PARAM], stream=True
    )
    return [event async for event in stream]


@pytest.mark.anyio
async def test_the_sdk_stream_helper_accumulates_the_final_response() -> None:
    bodies: list[dict[str, Any]] = []
    seen: list[str] = []
    answer = streaming(text_then_tools_chunks(), ResponsesStreamWriter.complete)
    async with sdk_answering(answer, bodies) as client:
        final = await read_with_the_stream_helper(client, seen)

    assert bodies[0]["stream"] is True
    assert [text for text in seen if not text.startswith("response.")] == [
        "Checking ",
        "the weather.",
    ]
    assert final.id == "resp_stream"
    assert final.output_text == "Checking the weather."
    calls = [item for item in final.output if item.type == "function_call"]
    assert [(c.call_id, c.name, c.arguments) for c in calls] == [
        ("call_p", "get_weather", '{"city":"Paris"}'),
        ("call_o", "get_weather", '{"city":"Oslo"}'),
    ]
    assert final.usage is not None
    assert (final.usage.input_tokens, final.usage.output_tokens) == (812, 57)


@pytest.mark.anyio
async def test_iterating_create_stream_true_yields_every_event() -> None:
    answer = streaming(text_then_tools_chunks(), ResponsesStreamWriter.complete)
    async with sdk_answering(answer, []) as client:
        events = await iterate_create(client)

    assert events[0].type == "response.created"
    assert events[-1].type == "response.completed"
    assert [e.sequence_number for e in events] == list(range(len(events)))


def fail_midway(writer: ResponsesStreamWriter) -> bytes:
    return writer.fail("Upstream went away", code="server_error")


@pytest.mark.anyio
async def test_a_failed_stream_makes_the_sdk_raise_after_the_failed_event() -> None:
    seen: list[str] = []
    async with sdk_answering(streaming(text_then_tools_chunks()[:2], fail_midway), []) as client:
        with pytest.raises(openai.APIError) as helper_error:
            await read_with_the_stream_helper(client, seen)
        with pytest.raises(openai.APIError) as raw_error:
            await iterate_create(client)

    assert seen[-1] == "response.failed"
    assert helper_error.value.message == "Upstream went away"
    assert helper_error.value.code == "server_error"
    assert helper_error.value.type == "server_error"
    assert raw_error.value.message == "Upstream went away"


@pytest.mark.anyio
async def test_the_sdk_parses_a_non_streamed_response_strictly() -> None:
    def answer(body: dict[str, Any]) -> httpx2.Response:
        req = parse_responses_request(json.dumps(body).encode())
        data = response_from_chat(
            completion({"content": "Hi!"}), req, response_id="resp_json", created_at=CREATED_AT
        )
        return httpx2.Response(200, json=data)

    async with sdk_answering(answer, []) as client:
        response = await client.responses.create(
            model="gpt-test", input="hello", max_output_tokens=64, metadata={"a": "b"}
        )

    assert response.id == "resp_json"
    assert response.output_text == "Hi!"
    assert response.max_output_tokens == 64
    assert response.metadata == {"a": "b"}
    assert response.usage is not None
    assert response.usage.total_tokens == 1235


# --- native upstream events, ids ------------------------------------------------------------


@pytest.mark.parametrize(
    ("event", "kind"),
    [
        ({"type": "response.created", "response": {}}, EventKind.PREAMBLE),
        ({"type": "response.in_progress"}, EventKind.PREAMBLE),
        ({"type": "response.queued"}, EventKind.PREAMBLE),
        ({"type": "response.output_item.added", "output_index": 0}, EventKind.CONTENT),
        ({"type": "response.content_part.added"}, EventKind.CONTENT),
        ({"type": "response.output_text.delta", "delta": "x"}, EventKind.CONTENT),
        ({"type": "response.function_call_arguments.delta"}, EventKind.CONTENT),
        ({"type": "response.reasoning_summary_text.delta"}, EventKind.CONTENT),
        ({"type": "response.web_search_call.searching", "output_index": 1}, EventKind.CONTENT),
        ({"type": "response.failed"}, EventKind.ERROR),
        ({"type": "error", "message": "x"}, EventKind.ERROR),
        ({"type": "response.completed"}, EventKind.TERMINAL),
        ({"type": "response.incomplete"}, EventKind.TERMINAL),
        ({"type": "keepalive"}, EventKind.OTHER),
        ({"no": "type"}, EventKind.OTHER),
    ],
)
def test_classify_event(event: dict[str, Any], kind: EventKind) -> None:
    assert classify_event(event) is kind


def test_the_writers_own_failure_events_classify_as_errors() -> None:
    writer = ResponsesStreamWriter(
        request(input="x"), response_id="resp_stream", created_at=CREATED_AT
    )
    failed, error = parse_sse(writer.fail("Gone", code="server_error"))[2:]

    assert classify_event(failed) is classify_event(error) is EventKind.ERROR


def test_ids_are_prefixed_random_hex() -> None:
    assert re.fullmatch(r"resp_[0-9a-f]{24}", new_response_id())
    assert re.fullmatch(r"msg_[0-9a-f]{24}", new_message_id())
    assert re.fullmatch(r"fc_[0-9a-f]{24}", new_function_call_id())
    assert new_response_id() != new_response_id()


def test_a_request_with_nothing_to_answer_names_input() -> None:
    req = request()

    with pytest.raises(InvalidRequestError) as caught:
        responses_to_chat(req, input_items(req), [])

    assert caught.value.param == "input"
