import copy
import json
from typing import Any

import pytest

from leapasgi.exceptions import InvalidRequestError
from leapasgi.types import ChatCompletionRequest, parse_chat_request

WEATHER_PARAMETERS = {
    "type": "object",
    "properties": {"city": {"type": "string"}},
    "required": ["city"],
    "additionalProperties": False,
}
WEATHER_SCHEMA = {"type": "object", "properties": {"summary": {"type": "string"}}}

FULL_BODY: dict[str, Any] = {
    "model": "gpt-test",
    "messages": [
        {"role": "system", "content": "Be brief.", "name": "rules"},
        {"role": "developer", "content": [{"type": "text", "text": "Answer in JSON."}]},
        {
            "role": "user",
            "name": "alice",
            "content": [
                {"type": "text", "text": "What is in these?"},
                {
                    "type": "image_url",
                    "image_url": {"url": "https://example.com/cat.png", "detail": "high"},
                },
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
                {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}},
                {
                    "type": "file",
                    "file": {"file_data": "data:application/pdf;base64,JVBER", "filename": "a.pdf"},
                },
                {"type": "file", "file": {"file_id": "file-123"}},
            ],
        },
        {
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
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
        {"role": "assistant", "content": [{"type": "text", "text": "It is sunny."}]},
        {"role": "assistant", "content": [{"type": "refusal", "refusal": "No."}], "refusal": "No."},
        {"role": "function", "name": "legacy", "content": "42"},
        {"role": "user", "content": "Thanks"},
    ],
    "tools": [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Weather for a city",
                "parameters": WEATHER_PARAMETERS,
                "strict": True,
            },
        },
        {"type": "custom", "custom": {"name": "grammar", "description": "Free-form"}},
    ],
    "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
    "parallel_tool_calls": False,
    "response_format": {
        "type": "json_schema",
        "json_schema": {
            "name": "weather_report",
            "description": "A report",
            "schema": WEATHER_SCHEMA,
            "strict": True,
        },
    },
    "stream": True,
    "stream_options": {"include_usage": True},
    "n": 2,
    "stop": ["\n\n", "END"],
    "seed": 42,
    "max_tokens": 100,
    "max_completion_tokens": 200,
    "temperature": 0.7,
    "top_p": 0.9,
    "frequency_penalty": 0.5,
    "presence_penalty": -0.5,
    "logit_bias": {"50256": -100.0, "15": 2.5},
    "logprobs": True,
    "top_logprobs": 3,
    "user": "user-1234",
    "metadata": {"team": "search", "run": "7"},
}

MINIMAL: dict[str, Any] = {"model": "gpt-test", "messages": [{"role": "user", "content": "hi"}]}


def with_fields(**fields: Any) -> dict[str, Any]:
    return {**copy.deepcopy(MINIMAL), **fields}


def test_every_field_round_trips() -> None:
    request = ChatCompletionRequest.model_validate(FULL_BODY)

    assert request.to_wire() == FULL_BODY
    assert json.loads(json.dumps(request.to_wire())) == FULL_BODY


def test_parsing_from_json_bytes_round_trips() -> None:
    request = parse_chat_request(json.dumps(FULL_BODY).encode())

    assert request.to_wire() == FULL_BODY


def test_minimal_body_adds_nothing() -> None:
    assert ChatCompletionRequest.model_validate(MINIMAL).to_wire() == MINIMAL


@pytest.mark.parametrize(
    "tool_choice",
    [
        "none",
        "auto",
        "required",
        {"type": "function", "function": {"name": "get_weather"}},
        {
            "type": "allowed_tools",
            "allowed_tools": {
                "mode": "auto",
                "tools": [{"type": "function", "function": {"name": "get_weather"}}],
            },
        },
        {"type": "custom", "custom": {"name": "grammar"}},
    ],
)
def test_every_tool_choice_form_round_trips(tool_choice: Any) -> None:
    body = {**FULL_BODY, "tool_choice": tool_choice}

    assert ChatCompletionRequest.model_validate(body).to_wire() == body


@pytest.mark.parametrize(
    "response_format",
    [
        {"type": "text"},
        {"type": "json_object"},
        {"type": "json_schema", "json_schema": {"name": "only-a-name"}},
        {"type": "json_schema", "json_schema": {"name": "r", "schema": WEATHER_SCHEMA}},
    ],
)
def test_every_response_format_round_trips(response_format: dict[str, Any]) -> None:
    body = with_fields(response_format=response_format)

    assert ChatCompletionRequest.model_validate(body).to_wire() == body


def test_json_schema_is_sent_under_the_key_schema() -> None:
    request = ChatCompletionRequest.model_validate(FULL_BODY)

    for dumped in (request.to_wire(), request.model_dump(mode="json")):
        json_schema = dumped["response_format"]["json_schema"]
        assert json_schema["schema"] == WEATHER_SCHEMA
        assert "schema_" not in json_schema
    assert '"schema":' in request.model_dump_json()


@pytest.mark.parametrize("stop", ["END", ["a"], ["a", "b", "c", "d"]])
def test_stop_as_string_or_list_round_trips(stop: str | list[str]) -> None:
    body = with_fields(stop=stop)

    assert ChatCompletionRequest.model_validate(body).to_wire() == body


def test_unknown_fields_are_kept_at_every_level() -> None:
    body = with_fields(
        store=True,
        reasoning_effort="low",
        prompt_cache_key="abc",
        messages=[
            {
                "role": "user",
                "content": [{"type": "text", "text": "hi", "cache_control": {"type": "ephemeral"}}],
                "x_trace": "t-1",
            },
            {"role": "assistant", "content": "hello", "reasoning": "Greeting back."},
        ],
        tools=[
            {
                "type": "function",
                "function": {"name": "f", "parameters": {}, "x_vendor": 1},
                "cache_control": {"type": "ephemeral"},
            }
        ],
    )

    request = ChatCompletionRequest.model_validate(body)

    assert request.to_wire() == body
    assert request.model_extra == {
        "store": True,
        "reasoning_effort": "low",
        "prompt_cache_key": "abc",
    }


BAD_BODIES = [
    (with_fields(messages=[{"role": "user", "content": 5}]), "messages[0].content"),
    (with_fields(messages=[{"role": "user"}]), "messages[0].content"),
    (with_fields(messages=[{"role": "assistant"}]), "messages[0].content"),
    (
        with_fields(messages=[{"role": "user", "content": "x"}, {"role": "tool", "content": "y"}]),
        "messages[1].tool_call_id",
    ),
    (with_fields(temperature=2.5), "temperature"),
    (with_fields(temperature="hot"), "temperature"),
    (with_fields(top_logprobs=3), "top_logprobs"),
    (with_fields(logprobs=True, top_logprobs=21), "top_logprobs"),
    (with_fields(stream_options={"include_usage": True}), "stream_options"),
    (with_fields(stream=False, stream_options={"include_usage": True}), "stream_options"),
    (with_fields(tool_choice="auto"), "tool_choice"),
    (
        with_fields(
            tools=[{"type": "function", "function": {"name": "f"}}],
            tool_choice={"type": "function", "function": {"name": "g"}},
        ),
        "tool_choice",
    ),
    (
        with_fields(response_format={"type": "json_schema", "json_schema": {"name": "has space"}}),
        "response_format.json_schema.name",
    ),
    (
        with_fields(response_format={"type": "json_schema", "json_schema": {}}),
        "response_format.json_schema.name",
    ),
    (with_fields(response_format={"type": "yaml"}), "response_format"),
    (with_fields(stop=["a", "b", "c", "d", "e"]), "stop"),
    (with_fields(metadata={f"k{i}": "v" for i in range(17)}), "metadata"),
    (with_fields(metadata={"k": "v" * 513}), "metadata"),
    (with_fields(metadata="team=search"), "metadata"),
    ({"messages": MINIMAL["messages"]}, "model"),
    (with_fields(model=""), "model"),
    (with_fields(model=7), "model"),
    (with_fields(messages=[]), "messages"),
    ({"model": "gpt-test"}, "messages"),
    (with_fields(messages=[{"role": "wizard", "content": "x"}]), "messages[0]"),
    (with_fields(n=0), "n"),
    (with_fields(logit_bias={"1": 101}), "logit_bias"),
    (
        with_fields(tools=[{"type": "function", "function": {"name": "bad name"}}]),
        "tools[0].function.name",
    ),
]


@pytest.mark.parametrize(("body", "param"), BAD_BODIES)
def test_validation_errors_name_the_field(body: dict[str, Any], param: str) -> None:
    for raw in (body, json.dumps(body)):
        with pytest.raises(InvalidRequestError) as caught:
            parse_chat_request(raw)

        error = caught.value
        assert error.http_status == 400
        assert error.param == param
        assert error.to_body() == {
            "error": {
                "message": error.message,
                "type": "invalid_request_error",
                "param": param,
                "code": "invalid_value",
            }
        }
        assert f"'{param}'" in error.message


def test_stop_of_the_wrong_type_names_stop() -> None:
    with pytest.raises(InvalidRequestError) as caught:
        parse_chat_request(with_fields(stop=5))

    assert caught.value.param == "stop"


def test_unknown_tool_choice_string_names_tool_choice() -> None:
    body = with_fields(tools=[{"type": "function", "function": {"name": "f"}}], tool_choice="any")

    with pytest.raises(InvalidRequestError) as caught:
        parse_chat_request(body)

    assert caught.value.param == "tool_choice"


@pytest.mark.parametrize("raw", ["{not json", b"\xff\xfe", "", '{"model": "m",'])
def test_invalid_json_is_an_invalid_request(raw: str | bytes) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        parse_chat_request(raw)

    error = caught.value
    assert error.http_status == 400
    assert error.to_body()["error"]["code"] == "invalid_json"
    assert set(error.to_body()["error"]) == {"message", "type", "param", "code"}


@pytest.mark.parametrize("raw", ["[" * 10_000, '{"model": ' + "[" * 10_000 + "]" * 10_000 + "}"])
def test_deeply_nested_json_is_an_invalid_request_not_a_crash(raw: str) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        parse_chat_request(raw.encode())

    assert caught.value.http_status == 400


@pytest.mark.parametrize("raw", ["[]", "null", '"text"', "42"])
def test_a_body_that_is_not_an_object_is_an_invalid_request(raw: str) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        parse_chat_request(raw)

    assert caught.value.http_status == 400


@pytest.mark.parametrize(
    ("fields", "limit"),
    [
        ({}, None),
        ({"max_tokens": 50}, 50),
        ({"max_completion_tokens": 80}, 80),
        ({"max_tokens": 50, "max_completion_tokens": 80}, 80),
    ],
)
def test_completion_token_limit_prefers_max_completion_tokens(
    fields: dict[str, int], limit: int | None
) -> None:
    assert (
        ChatCompletionRequest.model_validate(with_fields(**fields)).completion_token_limit == limit
    )


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({}, False),
        ({"stream": True}, False),
        ({"stream": True, "stream_options": {}}, False),
        ({"stream": True, "stream_options": {"include_usage": False}}, False),
        ({"stream": True, "stream_options": {"include_usage": True}}, True),
    ],
)
def test_include_usage(fields: dict[str, Any], expected: bool) -> None:
    assert ChatCompletionRequest.model_validate(with_fields(**fields)).include_usage is expected
