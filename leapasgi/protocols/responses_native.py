"""What each event of a native Responses stream means: preamble, content, error or the end."""

from __future__ import annotations

from typing import Any

from .events import EventKind

__all__ = ["EventKind", "classify_event", "classify_type"]


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


def classify_type(kind: str) -> EventKind:
    """The kind of an event by its type alone (the SSE event name); OTHER when that does not
    tell, and the event's JSON may (``classify_event``)."""
    known = _KINDS.get(kind)
    if known is not None:
        return known
    return EventKind.CONTENT if kind.startswith(_CONTENT_PREFIXES) else EventKind.OTHER


def classify_event(data: dict[str, Any]) -> EventKind:
    """The kind of a native stream event (its parsed JSON)."""
    kind = data.get("type")
    if not isinstance(kind, str):
        return EventKind.OTHER
    found = classify_type(kind)
    # Every event about an output item carries its output_index (web search, MCP, images...).
    if found is EventKind.OTHER and "output_index" in data:
        return EventKind.CONTENT
    return found
