from __future__ import annotations

import json
from typing import Any

import pytest

from leapasgi.exceptions import InvalidRequestError
from leapasgi.types import parse_chat_request
from leapasgi.types.guard import check_request_fields

BODY: dict[str, Any] = {"model": "m1", "messages": [{"role": "user", "content": "hi"}]}
SCHEMA = {"type": "object", "properties": {"base_url": {"type": "string"}, "api_key": {}}}


def refused(body: Any) -> InvalidRequestError:
    with pytest.raises(InvalidRequestError) as caught:
        parse_chat_request(body)
    return caught.value


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"api_base": "http://evil"}, "api_base"),
        ({"base_url": "http://evil"}, "base_url"),
        ({"api_key": "sk-x"}, "api_key"),
        ({"extra_body": {"api_base": "http://evil"}}, "extra_body.api_base"),
        ({"litellm_params": {"base_url": "http://evil"}}, "litellm_params.base_url"),
        ({"x": [{"y": {"API-BASE": 1}}]}, "x[0].y.API-BASE"),
        ({"extra_body": {"apiKey": "sk-x"}}, "extra_body.apiKey"),
        ({"extra_body": {"baseURL": "http://evil"}}, "extra_body.baseURL"),
        (
            {"messages": [{"role": "user", "content": "hi", "api_base": "http://evil"}]},
            "messages[0].api_base",
        ),
        (
            {"tools": [{"type": "function", "base_url": "x", "function": {"name": "f"}}]},
            "tools[0].base_url",
        ),
    ],
)
def test_routing_fields_are_refused_at_any_depth_with_their_path(
    extra: dict[str, Any], param: str
) -> None:
    body = {**BODY, **extra}
    for form in (json.dumps(body), json.dumps(body).encode(), body):
        error = refused(form)
        assert (error.http_status, error.param, error.code) == (400, param, "forbidden_parameter")
        assert "http://evil" not in error.message


def test_a_name_spelled_with_json_escapes_is_still_found() -> None:
    body = json.dumps(BODY)[:-1] + ', "extra_body": {"b\\u0061se\\u005Furl": "http://evil"}}'
    assert refused(body.encode()).param == "extra_body.base_url"


@pytest.mark.parametrize(
    "extra",
    [
        {"tools": [{"type": "function", "function": {"name": "f", "parameters": SCHEMA}}]},
        {"functions": [{"name": "f", "parameters": SCHEMA}]},
        {
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "out", "schema": SCHEMA},
            }
        },
        {"messages": [{"role": "user", "content": "What are api_key and base_url for?"}]},
        {"messages": [{"role": "user", "content": "caf\u00e9 \\u0061"}]},
        {"metadata": {"note": "api_base"}},
    ],
)
def test_schemas_and_text_may_name_them(extra: dict[str, Any]) -> None:
    body = {**BODY, **extra}
    parse_chat_request(json.dumps(body).encode())
    parse_chat_request(json.dumps(body, ensure_ascii=False).encode())
    parse_chat_request(body)


def test_a_schema_does_not_shelter_fields_beside_it() -> None:
    tool = {"type": "function", "function": {"name": "f", "parameters": SCHEMA, "api_key": 1}}
    assert refused({**BODY, "tools": [tool]}).param == "tools[0].function.api_key"


def test_bodies_without_suspect_bytes_are_not_decoded_again() -> None:
    # Invalid JSON would raise if it were decoded: the cheap pre-check let it through.
    check_request_fields(b"{not json at all")
    with pytest.raises(InvalidRequestError):
        check_request_fields(b'{"api_base": ')


def test_a_very_deep_mapping_is_walked_without_recursion() -> None:
    deep: Any = {"api_key": "x"}
    for _ in range(5000):
        deep = {"a": [deep]}
    with pytest.raises(InvalidRequestError) as caught:
        check_request_fields({**BODY, "x": deep})
    assert caught.value.param is not None
    assert caught.value.param.endswith(".api_key")
