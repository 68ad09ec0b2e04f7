"""Refusing request fields that would pick the upstream or its credentials (SSRF).

The gateway alone chooses where a request goes and with which key. A client-supplied
``api_base``, ``base_url`` or ``api_key`` (any case, ``-`` or no separator) is refused at any
depth, ``extra_body``-style nesting included: an upstream that honours such fields (LiteLLM
does) would send the provider's key to the client's host. Property names inside a JSON schema
(tool parameters, ``response_format``) are data, not settings, and stay allowed.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from ..exceptions import InvalidRequestError

__all__ = ["FORBIDDEN_FIELDS", "check_request_fields"]

FORBIDDEN_FIELDS = ("api_base", "api_key", "base_url")
_FORBIDDEN = frozenset(name.replace("_", "") for name in FORBIDDEN_FIELDS)
# On the lowered raw body: a forbidden name, or a \u escape of an ASCII character that could
# spell one. A body with neither (nearly all of them) is never decoded a second time.
_NAMES = re.compile(rb"api[_-]?(?:base|key)|base[_-]?url")
_ESCAPED_ASCII = re.compile(rb"\\u00[2-7][0-9a-f]")
# Where a JSON schema sits; "*" stands for any list index.
_SCHEMAS = frozenset(
    {
        ("tools", "*", "function", "parameters"),
        ("functions", "*", "parameters"),
        ("response_format", "json_schema", "schema"),
    }
)
_SCHEMA_DEPTH = max(len(path) for path in _SCHEMAS)

_Path = tuple[str | int, ...]


def check_request_fields(body: bytes | str | Mapping[str, Any]) -> None:
    """Raise InvalidRequestError (400, ``param`` = the field's path) if ``body`` sets a
    forbidden field anywhere; ``body`` has already been validated as a request."""
    if isinstance(body, bytes | str):
        raw = body.encode("utf-8", "surrogatepass") if isinstance(body, str) else body
        if not _suspect(raw):
            return
        try:
            data: Any = json.loads(raw)
        except (ValueError, RecursionError):
            raise InvalidRequestError(
                "The request body is not valid JSON", code="invalid_json"
            ) from None
    else:
        data = body
    path = _find_forbidden(data)
    if path is not None:
        param = _param(path)
        raise InvalidRequestError(
            f"The request may not set '{param}': the gateway chooses the upstream and its "
            "credentials",
            param=param,
            code="forbidden_parameter",
        )


def _suspect(raw: bytes) -> bool:
    low = raw.lower()
    if b"\\u00" in low and _ESCAPED_ASCII.search(low):
        return True
    return (b"api" in low or b"url" in low) and _NAMES.search(low) is not None


def _find_forbidden(data: Any) -> _Path | None:
    """The path of the first forbidden key, walking without recursion (any depth is safe)."""
    stack: list[tuple[Any, _Path]] = [(data, ())]
    while stack:
        value, path = stack.pop()
        if isinstance(value, Mapping):
            for key, item in value.items():
                if isinstance(key, str) and _normal(key) in _FORBIDDEN:
                    return (*path, key)
                if isinstance(item, Mapping | list):
                    child = (*path, key)
                    if not _is_schema(child):
                        stack.append((item, child))
        elif isinstance(value, list):
            stack.extend(
                (item, (*path, i))
                for i, item in enumerate(value)
                if isinstance(item, Mapping | list)
            )
    return None


def _normal(key: str) -> str:
    return key.lower().replace("_", "").replace("-", "")


def _is_schema(path: _Path) -> bool:
    if len(path) > _SCHEMA_DEPTH:
        return False
    return tuple("*" if isinstance(part, int) else part for part in path) in _SCHEMAS


def _param(path: _Path) -> str:
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out
