from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, get_args

import anthropic
import httpx2
import pydantic
import pytest
from anthropic.types import Message, MessageTokensCount, RawMessageStreamEvent
from anthropic.types.shared import ErrorResponse, ErrorType

from leapasgi.exceptions import (
    AuthenticationError,
    ConfigurationError,
    ConflictError,
    ConnectRefusedError,
    ConnectTimeoutError,
    DeadlineExceededError,
    FirstByteTimeoutError,
    IdleTimeoutError,
    InvalidRequestError,
    LeapError,
    MalformedResponseError,
    MalformedStreamError,
    MisdirectedRequestError,
    ModelNotFoundError,
    NoProviderAvailableError,
    NotFoundError,
    PermissionDeniedError,
    ProviderBusyError,
    RateLimitError,
    RequestTooLargeError,
    ResponseTooLargeError,
    StreamInterruptedError,
    UnprocessableEntityError,
    UnsupportedFeatureError,
    UpstreamConnectionError,
    UpstreamStreamError,
    UpstreamTimeoutError,
    UpstreamUnavailableError,
)
from leapasgi.protocols.messages import (
    MessagesRequest,
    anthropic_error,
    estimate_input_tokens,
    new_message_id,
    parse_count_tokens_request,
    parse_messages_request,
    tokens_count,
)
from leapasgi.protocols.messages_chat import message_from_chat, messages_to_chat
from leapasgi.protocols.messages_stream import (
    EventKind,
    MessagesStreamWriter,
    classify_event,
)
from leapasgi.types import ChatCompletion, ChatCompletionChunk, parse_chat_request

EVENTS = pydantic.TypeAdapter(RawMessageStreamEvent)
PNG = "iVBORw0KGgo="


def request(**fields: Any) -> MessagesRequest:
    body: dict[str, Any] = {
        "model": "claude-test",
        "max_tokens": 256,
        "messages": [{"role": "user", "content": "Hello"}],
    }
    body.update(fields)
    return parse_messages_request(json.dumps(body).encode())


def to_chat(**fields: Any) -> tuple[dict[str, Any], list[str]]:
    notes: list[str] = []
    chat = messages_to_chat(request(**fields), notes)
    wire = chat.to_wire()
    # What a provider sends must itself be a valid chat request.
    assert parse_chat_request(json.dumps(wire)).to_wire() == wire
    return wire, notes


def tool(name: str, **extra: Any) -> dict[str, Any]:
    schema = {"type": "object", "properties": {"path": {"type": "string"}}}
    return {"name": name, "description": f"The {name} tool", "input_schema": schema, **extra}


# Parsing


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"max_tokens": 1, "messages": [{"role": "user", "content": "x"}]}, "model"),
        ({"model": "m", "messages": [{"role": "user", "content": "x"}]}, "max_tokens"),
        ({"model": "m", "max_tokens": 1}, "messages"),
        ({"model": "m", "max_tokens": 1, "messages": []}, "messages"),
        ({"model": "m", "max_tokens": 0, "messages": [{"role": "user", "content": "x"}]}, None),
        ({"model": "m", "max_tokens": 1, "messages": [{"role": "bot", "content": "x"}]}, None),
        ({"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": 3}]}, None),
        ({"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": [{}]}]}, None),
        (
            {
                "model": "m",
                "max_tokens": 1,
                "messages": [
                    {"role": "user", "content": [{"type": "tool_result", "content": "x"}]}
                ],
            },
            "messages[0].content[0].tool_use_id",
        ),
        (
            {
                "model": "m",
                "max_tokens": 1,
                "messages": [{"role": "user", "content": "x"}],
                "tools": [{"name": "t"}],
            },
            "tools[0].input_schema",
        ),
        (
            {
                "model": "m",
                "max_tokens": 1,
                "messages": [{"role": "user", "content": "x"}],
                "tool_choice": {"type": "tool"},
            },
            "tool_choice.name",
        ),
        (
            {
                "model": "m",
                "max_tokens": 1,
                "messages": [{"role": "user", "content": "x"}],
                "metadata": {"base_url": "http://evil.test"},
            },
            "metadata.base_url",
        ),
    ],
)
def test_bad_bodies_are_invalid_requests_naming_the_field(
    body: dict[str, Any], param: str | None
) -> None:
    for form in (body, json.dumps(body).encode()):
        with pytest.raises(InvalidRequestError) as caught:
            parse_messages_request(form)
        assert type(caught.value) is InvalidRequestError
        assert caught.value.http_status == 400
        if param is not None:
            assert caught.value.param == param
        else:
            assert caught.value.param is not None
            assert caught.value.param.startswith(("max_tokens", "messages[0]"))


def test_bad_json_is_an_invalid_request() -> None:
    with pytest.raises(InvalidRequestError) as caught:
        parse_messages_request(b'{"model": ')
    assert caught.value.code == "invalid_json"


def test_schema_properties_named_like_settings_are_data() -> None:
    schema = {"type": "object", "properties": {"api_key": {"type": "string"}}}
    body = {
        "model": "m",
        "max_tokens": 5,
        "messages": [{"role": "user", "content": "x"}],
        "tools": [{"name": "login", "input_schema": schema}],
    }
    assert parse_messages_request(json.dumps(body).encode()).tools is not None
    assert parse_messages_request(body).tools is not None


def test_tool_inputs_named_like_settings_are_data() -> None:
    messages = [
        {"role": "user", "content": "Fetch it"},
        {
            "role": "assistant",
            "content": [
                {"type": "tool_use", "id": "t1", "name": "fetch", "input": {"base_url": "x"}}
            ],
        },
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1"}]},
    ]
    body: dict[str, Any] = {"model": "m", "max_tokens": 5, "messages": messages}
    assert len(parse_messages_request(json.dumps(body).encode()).messages) == 3
    body["messages"][2]["content"][0]["api_key"] = "k"
    with pytest.raises(InvalidRequestError) as caught:
        parse_messages_request(json.dumps(body).encode())
    assert caught.value.param == "messages[2].content[0].api_key"


def test_unknown_fields_are_kept_for_native_providers() -> None:
    parsed = request(service_tier="auto", container="c1")
    assert parsed.to_wire()["service_tier"] == "auto"
    assert parsed.model_extra == {"service_tier": "auto", "container": "c1"}


def test_count_tokens_bodies_need_no_max_tokens() -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "Hello there"}]}
    counted = tokens_count(parse_count_tokens_request(json.dumps(body)))
    assert MessageTokensCount.model_validate(counted).input_tokens >= 1
    with pytest.raises(InvalidRequestError):
        parse_messages_request(body)


# Requests to chat


def test_system_prompt_string_and_text_blocks() -> None:
    wire, notes = to_chat(system="Be brief.")
    assert wire["messages"][0] == {"role": "system", "content": "Be brief."}
    assert notes == []
    blocks = [{"type": "text", "text": "One."}, {"type": "text", "text": "Two."}]
    wire, _ = to_chat(system=blocks)
    assert wire["messages"][0] == {"role": "system", "content": "One.\n\nTwo."}
    assert wire["messages"][1] == {"role": "user", "content": "Hello"}


def test_text_blocks_and_images() -> None:
    content = [
        {"type": "text", "text": "What is in these?"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
    ]
    wire, notes = to_chat(messages=[{"role": "user", "content": content}])
    assert wire["messages"] == [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is in these?"},
                {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
                {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
            ],
        }
    ]
    assert notes == []


def test_one_text_block_becomes_plain_content() -> None:
    wire, _ = to_chat(messages=[{"role": "user", "content": [{"type": "text", "text": "Hi"}]}])
    assert wire["messages"] == [{"role": "user", "content": "Hi"}]


def test_documents() -> None:
    content = [
        {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "A"}},
        {
            "type": "document",
            "title": "spec.pdf",
            "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBE"},
        },
        {"type": "document", "source": {"type": "url", "url": "https://example.com/a.pdf"}},
    ]
    wire, notes = to_chat(messages=[{"role": "user", "content": content}])
    assert wire["messages"][0]["content"] == [
        {"type": "text", "text": "A"},
        {
            "type": "file",
            "file": {"file_data": "data:application/pdf;base64,JVBE", "filename": "spec.pdf"},
        },
    ]
    assert notes == ["dropped documents by url or file id"]


def test_tool_use_and_tool_results() -> None:
    messages = [
        {"role": "user", "content": "List the files"},
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Looking."},
                {"type": "tool_use", "id": "toolu_1", "name": "ls", "input": {"path": "/"}},
                {"type": "tool_use", "id": "toolu_2", "name": "ls", "input": {"path": "/tmp"}},
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": "bin etc"},
                {
                    "type": "tool_result",
                    "tool_use_id": "toolu_2",
                    "content": [{"type": "text", "text": "no such"}, {"type": "text", "text": "!"}],
                    "is_error": True,
                },
                {"type": "text", "text": "Now summarize."},
            ],
        },
    ]
    wire, notes = to_chat(messages=messages, tools=[tool("ls")])
    assert wire["messages"][1:] == [
        {
            "role": "assistant",
            "content": "Looking.",
            "tool_calls": [
                {
                    "id": "toolu_1",
                    "type": "function",
                    "function": {"name": "ls", "arguments": '{"path": "/"}'},
                },
                {
                    "id": "toolu_2",
                    "type": "function",
                    "function": {"name": "ls", "arguments": '{"path": "/tmp"}'},
                },
            ],
        },
        {"role": "tool", "tool_call_id": "toolu_1", "content": "bin etc"},
        {"role": "tool", "tool_call_id": "toolu_2", "content": "Error: no such\n!"},
        {"role": "user", "content": "Now summarize."},
    ]
    assert notes == []


def test_tool_use_without_text_and_empty_result() -> None:
    messages = [
        {"role": "user", "content": "Go"},
        {
            "role": "assistant",
            "content": [{"type": "tool_use", "id": "t1", "name": "ls", "input": {}}],
        },
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1"}]},
    ]
    wire, _ = to_chat(messages=messages, tools=[tool("ls")])
    assert wire["messages"][1]["content"] is None
    assert wire["messages"][1]["tool_calls"][0]["function"]["arguments"] == "{}"
    assert wire["messages"][2] == {"role": "tool", "tool_call_id": "t1", "content": ""}


def test_images_in_tool_results_move_into_the_user_turn() -> None:
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}}
    messages = [
        {"role": "user", "content": "Look"},
        {
            "role": "assistant",
            "content": [{"type": "tool_use", "id": "t1", "name": "ls", "input": {}}],
        },
        {
            "role": "user",
            "content": [
                {
                    "type": "tool_result",
                    "tool_use_id": "t1",
                    "content": [{"type": "text", "text": "a screenshot"}, image],
                }
            ],
        },
    ]
    wire, notes = to_chat(messages=messages, tools=[tool("ls")])
    assert wire["messages"][2] == {"role": "tool", "tool_call_id": "t1", "content": "a screenshot"}
    assert wire["messages"][3]["role"] == "user"
    assert wire["messages"][3]["content"][1]["image_url"]["url"].startswith("data:image/png")
    assert notes == ["moved tool result images into the user turn"]


def test_a_trailing_system_message_stays_a_system_message_in_place() -> None:
    messages = [
        {"role": "user", "content": "Fix the bug"},
        {"role": "system", "content": [{"type": "text", "text": "Plan mode is on."}]},
    ]
    wire, _ = to_chat(system="You are a coding agent.", messages=messages)
    assert wire["messages"] == [
        {"role": "system", "content": "You are a coding agent."},
        {"role": "user", "content": "Fix the bug"},
        {"role": "system", "content": "Plan mode is on."},
    ]


def test_thinking_blocks_in_history_are_dropped_with_a_note() -> None:
    messages = [
        {"role": "user", "content": "Hi"},
        {
            "role": "assistant",
            "content": [
                {"type": "thinking", "thinking": "hmm", "signature": "sig"},
                {"type": "redacted_thinking", "data": "xx"},
                {"type": "text", "text": "Hello!"},
            ],
        },
        {"role": "user", "content": "Again"},
    ]
    wire, notes = to_chat(messages=messages)
    assert wire["messages"][1] == {"role": "assistant", "content": "Hello!"}
    assert notes == ["dropped thinking blocks", "dropped redacted_thinking blocks"]


def claude_code_body() -> dict[str, Any]:
    names = [
        "Task",
        "Bash",
        "Glob",
        "Grep",
        "Read",
        "Edit",
        "Write",
        "NotebookEdit",
        "WebFetch",
        "TodoWrite",
        "ExitPlanMode",
        "mcp__ide__getDiagnostics",
    ]
    tools = [tool(name) for name in names]
    tools[-1]["defer_loading"] = True
    calls = [
        {"type": "tool_use", "id": f"toolu_{i:02d}", "name": "Read", "input": {"path": f"/f{i}"}}
        for i in range(8)
    ]
    results: list[dict[str, Any]] = [
        {"type": "tool_result", "tool_use_id": f"toolu_{i:02d}", "content": f"file {i}"}
        for i in range(8)
    ]
    results[-1]["cache_control"] = {"type": "ephemeral"}
    results[3]["is_error"] = False
    user_id = json.dumps(
        {"device_id": "d" * 64, "account_uuid": "", "session_id": "5e6b7c1d-" + "0" * 27}
    )
    return {
        "model": "claude-sonnet-4-5",
        "max_tokens": 128000,
        "stream": True,
        "system": [
            {
                "type": "text",
                "text": "You are Claude Code.",
                "cache_control": {"type": "ephemeral"},
            },
            {"type": "text", "text": "Use the tools.", "cache_control": {"type": "ephemeral"}},
        ],
        "tools": tools,
        "metadata": {"user_id": user_id},
        "thinking": {"type": "adaptive", "budget_tokens": 4000},
        "context_management": {"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]},
        "output_config": {"effort": "high"},
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "<system-reminder>ctx</system-reminder>"},
                    {"type": "text", "text": "Read the eight files"},
                ],
            },
            {"role": "assistant", "content": [{"type": "text", "text": "Reading."}, *calls]},
            {"role": "user", "content": results},
            {"role": "system", "content": "Remember: be concise."},
        ],
    }


def test_a_claude_code_body() -> None:
    body = claude_code_body()
    notes: list[str] = []
    chat = messages_to_chat(parse_messages_request(json.dumps(body).encode()), notes)
    wire = chat.to_wire()
    assert parse_chat_request(json.dumps(wire)).to_wire() == wire
    assert sorted(notes) == sorted(
        [
            "dropped cache_control",
            "dropped defer_loading",
            "hashed metadata.user_id",
            "dropped thinking",
            "dropped context_management",
            "dropped output_config.effort",
        ]
    )
    roles = [m["role"] for m in wire["messages"]]
    assert roles == ["system", "user", "assistant", *["tool"] * 8, "system"]
    assert wire["messages"][0]["content"] == "You are Claude Code.\n\nUse the tools."
    assert len(wire["messages"][2]["tool_calls"]) == 8
    assert [m["tool_call_id"] for m in wire["messages"][3:11]] == [
        f"toolu_{i:02d}" for i in range(8)
    ]
    assert wire["messages"][-1] == {"role": "system", "content": "Remember: be concise."}
    assert len(wire["tools"]) == 12
    assert wire["tools"][0]["function"]["parameters"] == body["tools"][0]["input_schema"]
    assert wire["max_completion_tokens"] == 128000
    assert wire["stream"] is True
    assert wire["stream_options"] == {"include_usage": True}
    assert wire["user"].startswith("user_")
    assert len(wire["user"]) <= 64
    assert "tool_choice" not in wire
    # The same user gets the same id every time.
    again = messages_to_chat(parse_messages_request(body), [])
    assert again.user == wire["user"]


def test_short_user_ids_and_other_metadata() -> None:
    wire, notes = to_chat(metadata={"user_id": "u-1", "team": "x", "bad key!": 1})
    assert wire["user"] == "u-1"
    assert notes == ["dropped metadata.team", "dropped metadata.(unsafe name)"]


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        ({"type": "auto"}, {"tool_choice": "auto"}),
        ({"type": "any"}, {"tool_choice": "required"}),
        ({"type": "none"}, {"tool_choice": "none"}),
        (
            {"type": "tool", "name": "ls"},
            {"tool_choice": {"type": "function", "function": {"name": "ls"}}},
        ),
        (
            {"type": "auto", "disable_parallel_tool_use": True},
            {"tool_choice": "auto", "parallel_tool_calls": False},
        ),
        (
            {"type": "any", "disable_parallel_tool_use": False},
            {"tool_choice": "required"},
        ),
    ],
)
def test_tool_choice(choice: dict[str, Any], expected: dict[str, Any]) -> None:
    wire, notes = to_chat(tools=[tool("ls"), tool("cat")], tool_choice=choice)
    assert {k: v for k, v in wire.items() if k in ("tool_choice", "parallel_tool_calls")} == (
        expected
    )
    assert notes == []


def test_tool_choice_naming_an_unknown_tool_is_refused() -> None:
    notes: list[str] = []
    parsed = request(tools=[tool("ls")], tool_choice={"type": "tool", "name": "rm"})
    with pytest.raises(InvalidRequestError) as caught:
        messages_to_chat(parsed, notes)
    assert caught.value.param == "tool_choice.name"


def test_server_tools_are_dropped_with_a_note() -> None:
    tools: list[dict[str, Any]] = [
        {"type": "web_search_20250305", "name": "web_search", "max_uses": 3},
        {"type": "bash_20250124", "name": "bash"},
        {"type": "text_editor_20250728", "name": "str_replace_based_edit_tool"},
        tool("ls", cache_control={"type": "ephemeral"}, strict=True),
    ]
    wire, notes = to_chat(tools=tools, tool_choice={"type": "any"})
    assert wire["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "ls",
                "description": "The ls tool",
                "parameters": tools[3]["input_schema"],
                "strict": True,
            },
        }
    ]
    assert notes == [
        "dropped server tool web_search_20250305",
        "dropped server tool bash_20250124",
        "dropped server tool text_editor_20250728",
        "dropped cache_control",
    ]
    wire, notes = to_chat(tools=tools[:1], tool_choice={"type": "auto"})
    assert "tools" not in wire
    assert "tool_choice" not in wire
    assert "dropped tool_choice" in notes


def test_long_tool_names_fit_chat_and_come_back() -> None:
    name = "mcp__a_very_long_server_name_for_testing__" + "x" * 60
    wire, _ = to_chat(tools=[tool(name)], tool_choice={"type": "tool", "name": name})
    chat_name = wire["tools"][0]["function"]["name"]
    assert len(chat_name) <= 64
    assert wire["tool_choice"]["function"]["name"] == chat_name
    completion = ChatCompletion.model_validate(
        {
            "choices": [
                {
                    "message": {
                        "role": "assistant",
                        "tool_calls": [
                            {"id": "c1", "function": {"name": chat_name, "arguments": "{}"}}
                        ],
                    },
                    "finish_reason": "tool_calls",
                }
            ]
        }
    )
    message = message_from_chat(completion, request(tools=[tool(name)]), message_id="msg_1")
    assert message["content"][0]["name"] == name


def test_sampling_fields() -> None:
    stops = ["a", "b", "c", "d", "e"]
    wire, notes = to_chat(stop_sequences=stops, temperature=0.5, top_p=0.9, top_k=40)
    assert wire["stop"] == ["a", "b", "c", "d"]
    assert wire["temperature"] == 0.5
    assert wire["top_p"] == 0.9
    assert "top_k" not in wire
    assert "stream" not in wire
    assert notes == ["kept the first 4 stop_sequences", "dropped top_k"]


def test_disabled_thinking_and_json_output_format() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "string"}}}
    wire, notes = to_chat(
        thinking={"type": "disabled"},
        output_config={"format": {"type": "json_schema", "schema": schema}},
    )
    assert wire["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "output", "schema": schema},
    }
    assert notes == []


def test_other_output_configs_are_dropped() -> None:
    wire, notes = to_chat(output_config={"format": "text", "effort": "low"})
    assert "response_format" not in wire
    assert notes == ["dropped output_config.format", "dropped output_config.effort"]


def test_unknown_fields_are_dropped_with_a_note() -> None:
    _, notes = to_chat(service_tier="auto", cache_control={"type": "ephemeral"})
    assert notes == ["dropped service_tier", "dropped cache_control"]


# Answers from chat


def completion(message: dict[str, Any], finish: str | None, **extra: Any) -> ChatCompletion:
    usage = {
        "prompt_tokens": 120,
        "completion_tokens": 30,
        "total_tokens": 150,
        "prompt_tokens_details": {"cached_tokens": 100},
    }
    choice = {"index": 0, "message": {"role": "assistant", **message}, "finish_reason": finish}
    return ChatCompletion.model_validate(
        {
            "id": "chatcmpl-1",
            "model": "upstream-model",
            "choices": [{**choice, **extra}],
            "usage": usage,
        }
    )


def test_message_from_chat_with_text_and_tool_calls() -> None:
    answer = completion(
        {
            "content": "Let me look.",
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "ls", "arguments": '{"path": "/"}'},
                },
                {
                    "id": "call_2",
                    "type": "function",
                    "function": {"name": "ls", "arguments": "{oops"},
                },
            ],
        },
        "tool_calls",
    )
    message_id = new_message_id()
    data = message_from_chat(answer, request(tools=[tool("ls")]), message_id=message_id)
    message = Message.model_validate(data)
    assert message.id == message_id
    assert message.model == "claude-test"
    assert message.stop_reason == "tool_use"
    assert [block.type for block in message.content] == ["text", "tool_use", "tool_use"]
    assert data["content"][1] == {
        "type": "tool_use",
        "id": "call_1",
        "name": "ls",
        "input": {"path": "/"},
    }
    assert data["content"][2]["input"] == {}
    assert data["usage"] == {
        "input_tokens": 20,
        "output_tokens": 30,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 100,
    }


@pytest.mark.parametrize(
    ("finish", "reason"),
    [
        ("stop", "end_turn"),
        ("length", "max_tokens"),
        ("tool_calls", "tool_use"),
        ("content_filter", "refusal"),
        (None, "end_turn"),
        ("something_new", "end_turn"),
    ],
)
def test_stop_reasons(finish: str | None, reason: str) -> None:
    data = message_from_chat(completion({"content": "Hi"}, finish), request(), message_id="msg_a")
    assert Message.model_validate(data).stop_reason == reason
    assert data["stop_sequence"] is None


def test_stop_sequences_reported_by_the_upstream() -> None:
    answer = completion({"content": "1, 2"}, "stop", stop_reason="END")
    data = message_from_chat(answer, request(stop_sequences=["END"]), message_id="msg_a")
    assert (data["stop_reason"], data["stop_sequence"]) == ("stop_sequence", "END")


def test_refusals_and_missing_usage() -> None:
    answer = ChatCompletion.model_validate(
        {
            "choices": [
                {"message": {"role": "assistant", "refusal": "I can't."}, "finish_reason": "stop"}
            ]
        }
    )
    parsed = request()
    data = message_from_chat(answer, parsed, message_id="msg_b")
    message = Message.model_validate(data)
    assert message.stop_reason == "refusal"
    assert data["content"] == [{"type": "text", "text": "I can't."}]
    assert message.usage.input_tokens == estimate_input_tokens(parsed)


def test_estimates_are_deterministic_and_ignore_image_bytes() -> None:
    small = request(messages=[{"role": "user", "content": "x"}])
    assert estimate_input_tokens(small) == estimate_input_tokens(small) >= 1
    text = request(messages=[{"role": "user", "content": "word " * 400}])
    assert 450 <= estimate_input_tokens(text) <= 600
    image = {
        "type": "image",
        "source": {"type": "base64", "media_type": "image/png", "data": "A" * 400_000},
    }
    big = request(messages=[{"role": "user", "content": [image]}])
    assert estimate_input_tokens(big) < 2000


def test_new_message_ids() -> None:
    first, second = new_message_id(), new_message_id()
    assert first != second
    assert first.startswith("msg_")
    assert len(first) == 28
    int(first[4:], 16)


# Streams


def chunk(
    delta: dict[str, Any] | None = None,
    finish: str | None = None,
    *,
    usage: dict[str, Any] | None = None,
    **choice_extra: Any,
) -> ChatCompletionChunk:
    choice = {"index": 0, "delta": delta, "finish_reason": finish, **choice_extra}
    data: dict[str, Any] = {"id": "c", "model": "u", "choices": [] if delta is None else [choice]}
    if usage is not None:
        data["usage"] = usage
    return ChatCompletionChunk.model_validate(data)


def tool_delta(index: int, arguments: str, **fields: Any) -> dict[str, Any]:
    function: dict[str, Any] = {"arguments": arguments}
    if "name" in fields:
        function["name"] = fields.pop("name")
    return {"tool_calls": [{"index": index, **fields, "function": function}]}


def tool_stream() -> list[list[ChatCompletionChunk]]:
    """Batches as an upstream would send them: text, then two tool calls in pieces."""
    return [
        [chunk({"role": "assistant", "content": ""}), chunk({"content": "Let me "})],
        [chunk({"content": "check."})],
        [chunk(tool_delta(0, "", id="call_a", type="function", name="ls"))],
        [chunk(tool_delta(0, '{"pa')), chunk(tool_delta(0, 'th": "/'))],
        [chunk(tool_delta(0, 'tmp"}'))],
        [chunk(tool_delta(1, '{"path":', id="call_b", type="function", name="cat"))],
        [chunk(tool_delta(1, ' "/etc/hosts"}')), chunk({}, "tool_calls")],
        [
            chunk(
                usage={
                    "prompt_tokens": 50,
                    "completion_tokens": 12,
                    "total_tokens": 62,
                    "prompt_tokens_details": {"cached_tokens": 10},
                }
            )
        ],
    ]


def written(writer: MessagesStreamWriter, batches: list[list[ChatCompletionChunk]]) -> bytes:
    parts = [writer.preamble()]
    parts.extend(writer.feed(batch) for batch in batches)
    parts.append(writer.complete())
    return b"".join(parts)


def parse_sse(data: bytes) -> list[dict[str, Any]]:
    events = []
    assert data.endswith(b"\n\n")
    for frame in data[:-2].split(b"\n\n"):
        name_line, data_line = frame.split(b"\n")
        assert name_line.startswith(b"event: ")
        assert data_line.startswith(b"data: ")
        event = json.loads(data_line[6:])
        assert event["type"] == name_line[7:].decode()
        events.append(event)
    return events


def assert_legal(events: list[dict[str, Any]]) -> None:
    """The order Anthropic streams in: one block open at a time, indexes counting up."""
    assert events[0]["type"] == "message_start"
    assert [e["type"] for e in events[-2:]] == ["message_delta", "message_stop"]
    open_block: dict[str, Any] | None = None
    next_index = 0
    for event in events[1:-2]:
        kind = event["type"]
        if kind == "ping":
            continue
        if kind == "content_block_start":
            assert open_block is None
            assert event["index"] == next_index
            open_block = event
            next_index += 1
        elif kind == "content_block_delta":
            assert open_block is not None
            assert event["index"] == open_block["index"]
            expected = {"text": "text_delta", "tool_use": "input_json_delta"}
            assert event["delta"]["type"] == expected[open_block["content_block"]["type"]]
        else:
            assert kind == "content_block_stop"
            assert open_block is not None
            assert event["index"] == open_block["index"]
            open_block = None
    assert open_block is None
    for event in events:
        if event["type"] != "ping":
            assert type(EVENTS.validate_python(event)).__name__.startswith("Raw")


def test_a_translated_stream_is_a_legal_messages_stream() -> None:
    parsed = request(tools=[tool("ls"), tool("cat")], stream=True)
    writer = MessagesStreamWriter(parsed, message_id="msg_s1")
    events = parse_sse(written(writer, tool_stream()))
    assert_legal(events)
    assert [e["type"] for e in events] == [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    start = events[0]["message"]
    assert start["usage"]["input_tokens"] == estimate_input_tokens(parsed)
    assert events[5]["content_block"] == {
        "type": "tool_use",
        "id": "call_a",
        "name": "ls",
        "input": {},
    }
    arguments = "".join(e["delta"]["partial_json"] for e in events[6:8])
    assert json.loads(arguments) == {"path": "/tmp"}
    assert events[-2]["delta"] == {"stop_reason": "tool_use", "stop_sequence": None}
    assert events[-2]["usage"] == {
        "input_tokens": 40,
        "output_tokens": 12,
        "cache_read_input_tokens": 10,
    }
    assert writer.usage == (50, 12)


def test_text_of_one_batch_goes_out_as_one_delta() -> None:
    writer = MessagesStreamWriter(request(), message_id="msg_s2")
    writer.preamble()
    events = parse_sse(writer.feed([chunk({"content": "a"}), chunk({"content": "b"})]))
    assert [e["type"] for e in events] == ["content_block_start", "content_block_delta"]
    assert events[1]["delta"] == {"type": "text_delta", "text": "ab"}
    assert writer.feed([chunk({"content": ""})]) == b""
    assert writer.usage is None


def test_writer_edges() -> None:
    writer = MessagesStreamWriter(request(stop_sequences=["END"]), message_id="msg_s3")
    # The preamble goes out once, whichever call comes first.
    first = parse_sse(writer.feed([chunk({"content": "1, 2"}, "stop", stop_reason="END")]))
    assert first[0]["type"] == "message_start"
    assert writer.preamble() == b""
    assert parse_sse(writer.ping()) == [{"type": "ping"}]
    end = parse_sse(writer.complete())
    assert end[-2]["delta"] == {"stop_reason": "stop_sequence", "stop_sequence": "END"}
    assert end[-2]["usage"] == {"output_tokens": 0}
    assert writer.complete() == writer.feed([chunk({"content": "x"})]) == b""
    assert writer.fail(RateLimitError("slow down")) == writer.ping() == b""


def test_an_empty_stream_is_still_legal() -> None:
    writer = MessagesStreamWriter(request(), message_id="msg_s4")
    events = parse_sse(writer.complete())
    assert_legal(events)
    assert events[-2]["delta"]["stop_reason"] == "end_turn"


def test_length_and_refusal_in_streams() -> None:
    writer = MessagesStreamWriter(request(), message_id="msg_s5")
    events = parse_sse(written(writer, [[chunk({"content": "long"}, "length")]]))
    assert events[-2]["delta"]["stop_reason"] == "max_tokens"
    writer = MessagesStreamWriter(request(), message_id="msg_s6")
    events = parse_sse(written(writer, [[chunk({"refusal": "No."}, "stop")]]))
    assert_legal(events)
    assert events[-2]["delta"]["stop_reason"] == "refusal"


def test_tool_calls_without_index_or_id() -> None:
    writer = MessagesStreamWriter(request(tools=[tool("ls")]), message_id="msg_s7")
    batches = [
        [chunk({"tool_calls": [{"function": {"name": "ls", "arguments": '{"path"'}}]})],
        [chunk({"tool_calls": [{"function": {"arguments": ': "/"}'}}]}, "tool_calls")],
    ]
    events = parse_sse(written(writer, batches))
    assert_legal(events)
    block = events[1]["content_block"]
    assert block["id"].startswith("toolu_")
    assert block["name"] == "ls"


def test_interleaved_tool_calls_keep_their_blocks() -> None:
    # An upstream that interleaves parallel calls: late arguments keep their block's index.
    writer = MessagesStreamWriter(request(tools=[tool("ls")]), message_id="msg_s9")
    batches = [
        [chunk(tool_delta(0, '{"path": ', id="c0", name="ls"))],
        [chunk(tool_delta(1, '{"path": "/b"}', id="c1", name="ls"))],
        [chunk(tool_delta(0, '"/a"}'), "tool_calls")],
    ]
    events = parse_sse(written(writer, batches))
    late = events[-4]
    assert late["type"] == "content_block_delta"
    assert late["index"] == 0
    assert late["delta"] == {"type": "input_json_delta", "partial_json": '"/a"}'}
    for event in events:
        EVENTS.validate_python(event)


def test_fail_is_an_error_event() -> None:
    writer = MessagesStreamWriter(request(), message_id="msg_s8")
    out = (
        writer.preamble()
        + writer.feed([chunk({"content": "Hi"})])
        + writer.fail(NoProviderAvailableError("all providers are busy"))
    )
    events = parse_sse(out)
    assert events[-1] == {
        "type": "error",
        "error": {"type": "overloaded_error", "message": "all providers are busy"},
    }
    assert writer.complete() == b""


# The official SDK reads it all


def sdk(handler: Callable[[httpx2.Request], httpx2.Response]) -> anthropic.AsyncAnthropic:
    transport = httpx2.MockTransport(handler)
    return anthropic.AsyncAnthropic(
        api_key="sk-test",
        base_url="http://gateway.test",
        max_retries=0,
        http_client=httpx2.AsyncClient(transport=transport),
    )


def sse_handler(body: bytes) -> Callable[[httpx2.Request], httpx2.Response]:
    def handler(request: httpx2.Request) -> httpx2.Response:
        assert request.url.path == "/v1/messages"
        return httpx2.Response(200, headers={"content-type": "text/event-stream"}, content=body)

    return handler


PARAMS: dict[str, Any] = {
    "model": "claude-test",
    "max_tokens": 256,
    "messages": [{"role": "user", "content": "Hello"}],
}


@pytest.mark.anyio
async def test_the_sdk_reads_a_translated_stream() -> None:
    parsed = request(tools=[tool("ls"), tool("cat")], stream=True)
    writer = MessagesStreamWriter(parsed, message_id="msg_sdk1")
    body = writer.preamble() + writer.ping() + b"".join(writer.feed(b) for b in tool_stream())
    body += writer.complete()
    async with sdk(sse_handler(body)) as client, client.messages.stream(**PARAMS) as stream:
        message = await stream.get_final_message()
    assert message.id == "msg_sdk1"
    assert message.stop_reason == "tool_use"
    assert message.content[0].type == "text"
    assert message.content[0].text == "Let me check."
    calls = [block for block in message.content if block.type == "tool_use"]
    assert [(c.id, c.name, c.input) for c in calls] == [
        ("call_a", "ls", {"path": "/tmp"}),
        ("call_b", "cat", {"path": "/etc/hosts"}),
    ]
    assert (message.usage.input_tokens, message.usage.output_tokens) == (40, 12)
    assert message.usage.cache_read_input_tokens == 10


async def drain(events: Any) -> None:
    async for _ in events:
        pass


@pytest.mark.anyio
async def test_the_sdk_raises_on_an_error_event() -> None:
    writer = MessagesStreamWriter(request(), message_id="msg_sdk2")
    body = writer.feed([chunk({"content": "Hi"})]) + writer.fail(
        UpstreamUnavailableError("the upstream broke", upstream_status=500)
    )
    async with sdk(sse_handler(body)) as client:
        with pytest.raises(anthropic.APIStatusError) as caught:
            async with client.messages.stream(**PARAMS) as stream:
                await stream.get_final_message()
        assert caught.value.type == "api_error"
        assert caught.value.api_message == "the upstream broke"
        events = await client.messages.create(**PARAMS, stream=True)
        with pytest.raises(anthropic.APIStatusError) as caught:
            await drain(events)
        assert caught.value.type == "api_error"


@pytest.mark.anyio
async def test_the_sdk_reads_a_translated_message() -> None:
    answer = completion({"content": "Hi there"}, "stop")
    data = message_from_chat(answer, request(), message_id="msg_sdk3")

    def handler(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(200, json=data)

    async with sdk(handler) as client:
        message = await client.messages.create(**PARAMS)
    assert message.content[0].type == "text"
    assert message.content[0].text == "Hi there"
    assert message.stop_reason == "end_turn"


ERRORS: list[tuple[LeapError, int, str, type[anthropic.APIStatusError]]] = [
    (InvalidRequestError("bad"), 400, "invalid_request_error", anthropic.BadRequestError),
    (UnsupportedFeatureError("no tools"), 400, "invalid_request_error", anthropic.BadRequestError),
    (
        InvalidRequestError("pay", upstream_status=402),
        402,
        "billing_error",
        anthropic.PaymentRequiredError,
    ),
    (
        InvalidRequestError("teapot", upstream_status=418),
        418,
        "invalid_request_error",
        anthropic.APIStatusError,
    ),
    (AuthenticationError("key"), 401, "authentication_error", anthropic.AuthenticationError),
    (PermissionDeniedError("no"), 403, "permission_error", anthropic.PermissionDeniedError),
    (NotFoundError("gone"), 404, "not_found_error", anthropic.NotFoundError),
    (ModelNotFoundError("no model"), 404, "not_found_error", anthropic.NotFoundError),
    (ConflictError("busy"), 409, "conflict_error", anthropic.ConflictError),
    (RequestTooLargeError("big"), 413, "request_too_large", anthropic.ContentTooLargeError),
    (MisdirectedRequestError("host"), 421, "invalid_request_error", anthropic.APIStatusError),
    (
        UnprocessableEntityError("odd"),
        422,
        "invalid_request_error",
        anthropic.UnprocessableEntityError,
    ),
    (RateLimitError("slow"), 429, "rate_limit_error", anthropic.RateLimitError),
    (NoProviderAvailableError("none"), 529, "overloaded_error", anthropic.OverloadedError),
    (ProviderBusyError("full"), 529, "overloaded_error", anthropic.OverloadedError),
    (
        UpstreamUnavailableError("503", upstream_status=503),
        529,
        "overloaded_error",
        anthropic.OverloadedError,
    ),
    (
        UpstreamUnavailableError("529", upstream_status=529),
        529,
        "overloaded_error",
        anthropic.OverloadedError,
    ),
    (
        UpstreamUnavailableError("500", upstream_status=500),
        500,
        "api_error",
        anthropic.InternalServerError,
    ),
    (
        UpstreamUnavailableError("502", upstream_status=502),
        500,
        "api_error",
        anthropic.InternalServerError,
    ),
    (
        UpstreamUnavailableError("504", upstream_status=504),
        504,
        "timeout_error",
        anthropic.GatewayTimeoutError,
    ),
    (UpstreamUnavailableError("?"), 500, "api_error", anthropic.InternalServerError),
    (MalformedResponseError("junk"), 500, "api_error", anthropic.InternalServerError),
    (ResponseTooLargeError("huge"), 500, "api_error", anthropic.InternalServerError),
    (UpstreamConnectionError("down"), 500, "api_error", anthropic.InternalServerError),
    (ConnectRefusedError("refused"), 500, "api_error", anthropic.InternalServerError),
    (ConnectTimeoutError("slow"), 504, "timeout_error", anthropic.GatewayTimeoutError),
    (FirstByteTimeoutError("slow"), 504, "timeout_error", anthropic.GatewayTimeoutError),
    (IdleTimeoutError("quiet"), 504, "timeout_error", anthropic.GatewayTimeoutError),
    (DeadlineExceededError("late"), 504, "timeout_error", anthropic.GatewayTimeoutError),
    (UpstreamTimeoutError("408"), 504, "timeout_error", anthropic.GatewayTimeoutError),
    (MalformedStreamError("bad"), 500, "api_error", anthropic.InternalServerError),
    (StreamInterruptedError("cut"), 500, "api_error", anthropic.InternalServerError),
    (UpstreamStreamError("err"), 500, "api_error", anthropic.InternalServerError),
    (ConfigurationError("bad"), 500, "api_error", anthropic.InternalServerError),
    (LeapError("bug"), 500, "api_error", anthropic.InternalServerError),
]


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("error", "status", "kind", "sdk_class"), ERRORS, ids=[type(e[0]).__name__ for e in ERRORS]
)
async def test_errors_land_on_the_right_sdk_exception(
    error: LeapError, status: int, kind: str, sdk_class: type[anthropic.APIStatusError]
) -> None:
    got_status, body = anthropic_error(error, request_id="req_1")
    assert (got_status, body["error"]["type"]) == (status, kind)
    assert body == {
        "type": "error",
        "error": {"type": kind, "message": error.message},
        "request_id": "req_1",
    }
    if kind in ("request_too_large", "conflict_error"):
        # Anthropic documents both; the SDK's ErrorType has the second, no ErrorObject either.
        assert kind == "request_too_large" or kind in get_args(ErrorType)
    else:
        ErrorResponse.model_validate(body)

    def handler(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(got_status, json=body)

    async with sdk(handler) as client:
        with pytest.raises(anthropic.APIStatusError) as caught:
            await client.messages.create(**PARAMS)
    assert type(caught.value) is sdk_class
    assert caught.value.status_code == status
    assert caught.value.type == kind
    assert caught.value.api_message == error.message


# Native streams


@pytest.mark.parametrize(
    ("event", "kind"),
    [
        ("message_start", EventKind.PREAMBLE),
        ("ping", EventKind.PREAMBLE),
        ("content_block_start", EventKind.CONTENT),
        ("content_block_delta", EventKind.CONTENT),
        ("content_block_stop", EventKind.CONTENT),
        ("message_delta", EventKind.CONTENT),
        ("error", EventKind.ERROR),
        ("message_stop", EventKind.TERMINAL),
        ("something_new", EventKind.OTHER),
    ],
)
def test_classify_native_events(event: str, kind: EventKind) -> None:
    assert classify_event(event, {"type": event}) is kind
    assert classify_event(None, {"type": event}) is kind
    assert classify_event(event, {}) is kind


def test_classify_without_a_type() -> None:
    assert classify_event(None, {}) is EventKind.OTHER
