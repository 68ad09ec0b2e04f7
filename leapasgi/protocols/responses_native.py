"""Reading the Responses stream of an upstream that speaks the protocol natively."""

from __future__ import annotations

import enum
from typing import Any

__all__ = ["EventKind", "classify_event", "native_error"]


class EventKind(enum.Enum):
    """What a native stream event means for the relay."""

    PREAMBLE = "preamble"
    CONTENT = "content"
    ERROR = "error"
    TERMINAL = "terminal"
    OTHER = "other"


_KINDS = {
    "response.created": EventKind.PREAMBLE,
    "response.in_progress": EventKind.PREAMBLE,
    "response.queued": EventKind.PREAMBLE,
    "response.failed": EventKind.ERROR,
    "error": EventKind.ERROR,
    "response.completed": EventKind.TERMINAL,
    "response.incomplete": EventKind.TERMINAL,
}
_CONTENT_PREFIXES = (
    "response.output_item.",
    "response.content_part.",
    "response.output_text.",
    "response.refusal.",
    "response.function_call_arguments.",
    "response.custom_tool_call_input.",
    "response.reasoning",
    "response.audio",
)
_FAILED = "The upstream response failed"


def classify_event(data: dict[str, Any]) -> EventKind:
    """The kind of a native stream event (its parsed JSON)."""
    kind = data.get("type")
    if not isinstance(kind, str):
        return EventKind.OTHER
    known = _KINDS.get(kind)
    if known is not None:
        return known
    # Every event about an output item carries its output_index (web search, MCP, images...).
    if kind.startswith(_CONTENT_PREFIXES) or "output_index" in data:
        return EventKind.CONTENT
    return EventKind.OTHER


def native_error(data: dict[str, Any]) -> tuple[str, str | None]:
    """(message, code) of an upstream ``error`` or ``response.failed`` event."""
    if data.get("type") == "response.failed":
        response = data.get("response")
        error = response.get("error") if isinstance(response, dict) else None
    else:
        # The API reference puts the fields on the event; the live API nests them in "error".
        nested = data.get("error")
        error = nested if isinstance(nested, dict) else data
    if not isinstance(error, dict):
        return _FAILED, None
    message = error.get("message")
    code = error.get("code")
    return (
        message if isinstance(message, str) and message else _FAILED,
        code if isinstance(code, str) else None,
    )
