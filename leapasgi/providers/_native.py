"""Reading a native stream (Responses or Anthropic Messages events): each protocol's preamble
is held back until its first content event, errors become LeapErrors, usage is noted, and a
stream that stops before its terminal event is an interruption."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from ..exceptions import LeapError, MalformedStreamError, StreamInterruptedError
from ..native import NativeEvent, WireProtocol
from ..protocols.events import EventKind
from ..protocols.messages_stream import classify_event as messages_event
from ..protocols.messages_stream import classify_type as messages_type
from ..protocols.responses_native import classify_event as responses_event
from ..protocols.responses_native import classify_type as responses_type
from ..sse import SSEEvent
from ._upstream import error_from_payload

__all__ = ["NativeStreamReader", "reply_usage"]


# Per protocol: the kind of an event by its name alone, and by its JSON.
_BY_NAME: dict[WireProtocol, Callable[[str], EventKind]] = {
    WireProtocol.RESPONSES: responses_type,
    WireProtocol.MESSAGES: messages_type,
}
_BY_JSON: dict[WireProtocol, Callable[[str | None, dict[str, Any]], EventKind]] = {
    WireProtocol.RESPONSES: lambda event, data: responses_event(data),
    WireProtocol.MESSAGES: messages_event,
}
# Events whose JSON is read: they carry usage (besides errors and the end, always read).
_USAGE_EVENTS = frozenset({"message_start", "message_delta"})


class NativeStreamReader:
    """One native stream's events, as a provider reads them off the wire."""

    __slots__ = (
        "_by_json",
        "_by_name",
        "_held",
        "_provider",
        "_redact",
        "cached_tokens",
        "done",
        "failure",
        "input_tokens",
        "output_tokens",
        "started",
    )

    def __init__(
        self, protocol: WireProtocol, *, provider: str, redact: Callable[[str], str]
    ) -> None:
        self._by_name = _BY_NAME[protocol]
        self._by_json = _BY_JSON[protocol]
        self._provider = provider
        self._redact = redact
        self._held: list[NativeEvent] = []
        self.started = False  # a content event has been yielded
        self.done = False  # the terminal event came
        # An error event that came after content in the same read: raised once the events
        # before it have been passed on.
        self.failure: LeapError | None = None
        self.input_tokens: int | None = None
        self.output_tokens: int | None = None
        self.cached_tokens = 0

    def feed(self, events: list[SSEEvent]) -> list[NativeEvent]:
        """The events to pass on now (none while only preamble came); raises the error an
        error event stands for, or, when content came before it in ``events``, keeps it in
        ``failure`` to be raised after those are passed on."""
        out: list[NativeEvent] = []
        by_name = self._by_name
        for event in events:
            text = event.data
            if text == "[DONE]":
                self.done = True
                continue
            name = event.event
            data: dict[str, Any] | None = None
            kind = by_name(name) if name is not None else EventKind.OTHER
            # Content passes through unparsed; the rest is read (what its name does not tell,
            # errors, the end, usage).
            if (kind is not EventKind.CONTENT and kind is not EventKind.PREAMBLE) or (
                name in _USAGE_EVENTS
            ):
                data = self._parse(text)
                if kind is EventKind.OTHER:
                    kind = self._by_json(name, data)
                    if name is None and isinstance(data.get("type"), str):
                        name = data["type"]
            if kind is EventKind.ERROR:
                assert data is not None
                if out:
                    self.failure = self._error(data)
                    break
                raise self._error(data)
            if data is not None:
                self._note_usage(name, kind, data)
            native = NativeEvent(name, data, text.encode())
            if not self.started:
                if kind is EventKind.PREAMBLE or kind is EventKind.OTHER:
                    self._held.append(native)
                    continue
                self.started = True
                out.extend(self._held)
                self._held.clear()
            out.append(native)
            if kind is EventKind.TERMINAL:
                self.done = True
                break
        return out

    def _parse(self, text: str) -> dict[str, Any]:
        try:
            data = json.loads(text)
        except ValueError:
            raise self._malformed("is not valid JSON") from None
        if not isinstance(data, dict):
            raise self._malformed("is not a JSON object")
        return data

    def finish(self) -> None:
        """At the end of the body: an interruption unless the terminal event came."""
        if not self.done:
            raise StreamInterruptedError(
                f"Provider {self._provider!r} ended the stream before its last event",
                provider=self._provider,
            )

    @property
    def usage(self) -> tuple[int, int, int] | None:
        """(input, output, cached input) tokens, once the stream reported any."""
        if self.input_tokens is None and self.output_tokens is None:
            return None
        return self.input_tokens or 0, self.output_tokens or 0, self.cached_tokens

    def _note_usage(self, name: str | None, kind: EventKind, data: dict[str, Any]) -> None:
        if kind is EventKind.TERMINAL and isinstance(data.get("response"), dict):
            usage = data["response"].get("usage")
        elif name == "message_start" and isinstance(data.get("message"), dict):
            usage = data["message"].get("usage")
        elif name == "message_delta":
            usage = data.get("usage")
        else:
            return
        if isinstance(usage, dict):
            found = _tokens(usage)
            if found[0] is not None:
                self.input_tokens = found[0]
                self.cached_tokens = found[2]
            if found[1] is not None:
                self.output_tokens = found[1]

    def _error(self, data: dict[str, Any]) -> LeapError:
        payload = data
        response = data.get("response")
        if isinstance(response, dict) and isinstance(response.get("error"), dict):
            payload = {"error": response["error"]}
        elif "error" not in data:
            payload = {"error": {k: v for k, v in data.items() if k != "type"}}
        return error_from_payload(payload, provider=self._provider, redact=self._redact)

    def _malformed(self, what: str) -> LeapError:
        return MalformedStreamError(
            f"The upstream sent a stream event that {what}", provider=self._provider
        )


def reply_usage(data: dict[str, Any]) -> tuple[int, int, int] | None:
    """(input, output, cached input) tokens of a whole native answer (Responses, Messages,
    embeddings)."""
    usage = data.get("usage")
    if not isinstance(usage, dict):
        return None
    found = _tokens(usage)
    if found[:2] == (None, None):
        return None
    return found[0] or 0, found[1] or 0, found[2]


def _count(value: Any) -> int:
    return value if isinstance(value, int) and value > 0 else 0


def _tokens(usage: dict[str, Any]) -> tuple[int | None, int | None, int]:
    """(input, output, cached input) of a usage object in OpenAI's shapes or Anthropic's.
    Anthropic counts cache reads and writes apart from ``input_tokens``: they are added to
    the input here, so input is always every prompt token and cached a part of it."""
    inp = usage.get("input_tokens", usage.get("prompt_tokens"))
    out = usage.get("output_tokens", usage.get("completion_tokens"))
    cached = 0
    details = usage.get("input_tokens_details", usage.get("prompt_tokens_details"))
    if isinstance(details, dict):
        cached = _count(details.get("cached_tokens"))
    if "cache_read_input_tokens" in usage or "cache_creation_input_tokens" in usage:
        read = _count(usage.get("cache_read_input_tokens"))
        written = _count(usage.get("cache_creation_input_tokens"))
        cached = read
        if isinstance(inp, int):
            inp += read + written
    return (
        inp if isinstance(inp, int) else None,
        out if isinstance(out, int) else None,
        cached,
    )
