"""Turning request bodies into wire models, and bad ones into errors that name the field."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from ..exceptions import InvalidRequestError
from ._base import TAG_MARK
from .guard import check_request_fields
from .request import ChatCompletionRequest

__all__ = ["invalid_request_from", "parse_chat_request", "parse_wire"]

_M = TypeVar("_M", bound=BaseModel)


def parse_chat_request(body: bytes | str | Mapping[str, Any]) -> ChatCompletionRequest:
    """Validate a request body; raise InvalidRequestError naming the field at fault, also for
    fields that would pick the upstream or its key (``api_base``, ``base_url``, ``api_key``)."""
    return parse_wire(ChatCompletionRequest, body)


def parse_wire(model: type[_M], body: bytes | str | Mapping[str, Any]) -> _M:
    """``body`` validated as ``model``, with the forbidden-field guard: the one way request
    bodies are parsed."""
    try:
        if isinstance(body, bytes | str):
            request = model.model_validate_json(body)
        else:
            request = model.model_validate(body)
    except ValidationError as exc:
        raise invalid_request_from(exc) from None
    # After validation, which has already refused JSON nested too deep to walk.
    check_request_fields(body)
    return request


def invalid_request_from(exc: ValidationError) -> InvalidRequestError:
    """An InvalidRequestError for the first problem in ``exc``, with ``param`` set."""
    errors = exc.errors(include_url=False, include_input=False)
    first = errors[0]
    if first["type"] in ("json_invalid", "json_type"):
        return InvalidRequestError(
            f"The request body is not valid JSON: {first['msg']}", code="invalid_json"
        )
    ctx = first.get("ctx") or {}
    param = _param_path(first["loc"], ctx.get("field"))
    message = str(first["msg"])
    if param:
        message = f"Invalid '{param}': {message[:1].lower()}{message[1:]}"
    more = len(errors) - 1
    if more:
        message += f" (and {more} more problem{'s' if more > 1 else ''})"
    return InvalidRequestError(message, param=param or None, code="invalid_value")


def _param_path(loc: tuple[int | str, ...], field: Any) -> str:
    path = ""
    for item in loc:
        if isinstance(item, int):
            path += f"[{item}]"
        elif TAG_MARK in item or item.startswith(("function-", "model-")):
            continue
        else:
            path += f".{item}" if path else item
    if isinstance(field, str):
        path = f"{path}.{field}" if path else field
    return path
