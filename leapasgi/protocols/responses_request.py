"""The Responses API request body (``POST /v1/responses``): its model, and parsing bad ones into
InvalidRequestErrors that name the field at fault."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, ValidationError

from ..exceptions import InvalidRequestError
from ..types import invalid_request_from
from ..types.guard import check_request_fields

__all__ = ["ResponsesRequest", "input_items", "item_type", "parse_responses_request"]

# Union tags carry a ":" so that invalid_request_from leaves them out of ``param`` paths.
_STR, _LIST, _OBJECT = "str:", "list:", "object:"


def _shape(value: Any) -> str | None:
    if isinstance(value, str):
        return _STR
    if isinstance(value, list):
        return _LIST
    return _OBJECT if isinstance(value, dict) else None


def _one_of(what: str) -> Discriminator:
    return Discriminator(
        _shape, custom_error_type="invalid_type", custom_error_message=f"Input should be {what}"
    )


_Input = Annotated[
    Annotated[str, Tag(_STR)] | Annotated[list[dict[str, Any]], Tag(_LIST)],
    _one_of("a string or an array of input items"),
]
_ToolChoice = Annotated[
    Annotated[Literal["none", "auto", "required"], Tag(_STR)]
    | Annotated[dict[str, Any], Tag(_OBJECT)],
    _one_of("'none', 'auto', 'required' or an object"),
]


class ResponsesRequest(BaseModel):
    """A ``POST /v1/responses`` body; fields it does not model are kept."""

    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1)
    input: _Input = Field(default_factory=list)
    instructions: str | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: _ToolChoice | None = None
    text: dict[str, Any] | None = None
    max_output_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    metadata: dict[str, str] | None = None
    store: bool | None = None
    previous_response_id: str | None = None
    stream: bool | None = None
    parallel_tool_calls: bool | None = None
    user: str | None = None
    reasoning: dict[str, Any] | None = None
    include: list[str] | None = None


def parse_responses_request(
    body: bytes | dict[str, Any], *, raw: bytes | None = None
) -> ResponsesRequest:
    """Validate a Responses body; raise InvalidRequestError naming the field at fault, also for
    fields that would pick the upstream or its key (``api_base``, ``base_url``, ``api_key``).
    ``raw``: the bytes ``body`` was parsed from, for the guard's fast check."""
    try:
        if isinstance(body, bytes):
            request = ResponsesRequest.model_validate_json(body)
        else:
            request = ResponsesRequest.model_validate(body)
    except ValidationError as exc:
        first = exc.errors(include_url=False, include_input=False)[0]
        if first["type"] in ("model_type", "model_attributes_type"):
            raise InvalidRequestError(
                "The request body must be a JSON object", code="invalid_json"
            ) from None
        raise invalid_request_from(exc) from None
    _check_fields(body if raw is None else raw, request)
    _check_input(request)
    _check_tools(request.tools)
    _check_text(request.text)
    return request


def input_items(request: ResponsesRequest) -> list[dict[str, Any]]:
    """``input`` as a list of items; a string is one user message."""
    if isinstance(request.input, str):
        text = {"type": "input_text", "text": request.input}
        return [{"type": "message", "role": "user", "content": [text]}]
    return list(request.input)


def item_type(item: Mapping[str, Any]) -> str:
    """An input item's type; items with a ``role`` and no ``type`` are messages."""
    kind = item.get("type")
    if isinstance(kind, str):
        return kind
    return "message" if "role" in item else ""


def _invalid(param: str, message: str) -> InvalidRequestError:
    return InvalidRequestError(f"Invalid '{param}': {message}", param=param, code="invalid_value")


def _check_fields(body: bytes | dict[str, Any], request: ResponsesRequest) -> None:
    try:
        check_request_fields(body)
    except InvalidRequestError:
        # The guard knows where chat bodies hold JSON schemas, whose property names are data;
        # look again with this protocol's schemas left out before refusing.
        check_request_fields(_without_schemas(request))


def _without_schemas(request: ResponsesRequest) -> dict[str, Any]:
    data = request.model_dump()
    data["tools"] = [_tool_without_schema(tool) for tool in request.tools or ()]
    text = data.get("text")
    if isinstance(text, dict) and isinstance(text.get("format"), dict):
        text["format"] = {k: v for k, v in text["format"].items() if k != "schema"}
    return data


def _tool_without_schema(tool: dict[str, Any]) -> dict[str, Any]:
    tool = {k: v for k, v in tool.items() if k != "parameters"}
    if isinstance(tool.get("tools"), list):
        tool["tools"] = [
            _tool_without_schema(t) if isinstance(t, dict) else t for t in tool["tools"]
        ]
    return tool


_ROLES = ("user", "assistant", "system", "developer")
# What each kind of item needs, as (field, accepted types, what to call them).
_NEEDS: dict[str, tuple[tuple[str, type | tuple[type, ...], str], ...]] = {
    "message": (("content", (str, list), "a string or an array of content parts"),),
    "function_call": (
        ("call_id", str, "a string"),
        ("name", str, "a string"),
        ("arguments", str, "a JSON-encoded string"),
    ),
    "function_call_output": (
        ("call_id", str, "a string"),
        ("output", (str, list), "a string or an array of content parts"),
    ),
}


def _check_input(request: ResponsesRequest) -> None:
    if isinstance(request.input, str):
        return
    for index, item in enumerate(request.input):
        path = f"input[{index}]"
        kind = item_type(item)
        if not kind:
            raise _invalid(f"{path}.type", "an input item needs a 'type' (or a 'role')")
        if kind == "message" and item.get("role") not in _ROLES:
            raise _invalid(f"{path}.role", f"role must be one of {', '.join(_ROLES)}")
        for field, types, what in _NEEDS.get(kind, ()):
            if not isinstance(item.get(field), types):
                raise _invalid(f"{path}.{field}", f"expected {what}")
        parts = item.get("content") if kind == "message" else item.get("output")
        if isinstance(parts, list):
            for number, part in enumerate(parts):
                if not isinstance(part, dict) or not isinstance(part.get("type"), str):
                    field = "content" if kind == "message" else "output"
                    raise _invalid(f"{path}.{field}[{number}]", "a content part needs a 'type'")


def _check_tools(tools: list[dict[str, Any]] | None, prefix: str = "tools") -> None:
    for index, tool in enumerate(tools or ()):
        path = f"{prefix}[{index}]"
        kind = tool.get("type")
        if not isinstance(kind, str):
            raise _invalid(f"{path}.type", "a tool needs a 'type'")
        if kind in ("function", "namespace") and not isinstance(tool.get("name"), str):
            raise _invalid(f"{path}.name", f"a {kind} tool needs a 'name'")
        if kind == "function" and not isinstance(tool.get("parameters"), dict | None):
            raise _invalid(f"{path}.parameters", "expected a JSON Schema object")
        if kind == "namespace":
            inner = tool.get("tools")
            if not isinstance(inner, list) or not all(isinstance(t, dict) for t in inner):
                raise _invalid(f"{path}.tools", "expected an array of tools")
            _check_tools(inner, f"{path}.tools")


def _check_text(text: dict[str, Any] | None) -> None:
    if text is None or text.get("format") is None:
        return
    fmt = text["format"]
    if not isinstance(fmt, dict) or fmt.get("type") not in ("text", "json_object", "json_schema"):
        raise _invalid("text.format.type", "expected 'text', 'json_object' or 'json_schema'")
    if fmt["type"] == "json_schema":
        if not isinstance(fmt.get("name"), str):
            raise _invalid("text.format.name", "a json_schema format needs a 'name'")
        if not isinstance(fmt.get("schema"), dict):
            raise _invalid("text.format.schema", "a json_schema format needs a 'schema' object")
