"""Server-sent events: an incremental decoder for upstream streams, and the encoder for clients.

The decoder follows the WHATWG event-stream rules that matter for LLM streams: ``\\n``, ``\\r\\n``
and ``\\r`` line ends (also when split across reads), comment lines, ``event:``, ``id:`` and
``retry:`` fields, multi-line ``data:``, and events split across or packed into network reads.
It works in time linear in its input, however long a line stays unfinished, and refuses an
event larger than its bound (``EventTooLarge``), so one upstream cannot hold the loop or the
memory with an endless line.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

__all__ = [
    "DONE",
    "MAX_EVENT_BYTES",
    "PING",
    "EventTooLarge",
    "SSEDecoder",
    "SSEEvent",
    "encode_data",
    "encode_event",
    "encode_json",
]

DONE = b"data: [DONE]\n\n"
PING = b": ping\n\n"
# The largest event (its unfinished line, or its data lines together) a decoder holds. A chat
# chunk is a few hundred bytes; providers that send a whole answer in one event stay far below.
MAX_EVENT_BYTES = 4 * 1024 * 1024


class EventTooLarge(Exception):
    """Raised by ``SSEDecoder.feed`` when one event grows past the decoder's bound."""


@dataclass(slots=True)
class SSEEvent:
    """One dispatched event."""

    data: str
    event: str | None = None
    id: str | None = None
    retry: int | None = None


class SSEDecoder:
    """Turns a byte stream into events; feed it reads as they come, then ``close()`` it."""

    __slots__ = (
        "_data",
        "_data_size",
        "_event",
        "_id",
        "_limit",
        "_partial",
        "_partial_size",
        "_retry",
        "_skip_lf",
    )

    def __init__(self, *, max_event_bytes: int = MAX_EVENT_BYTES) -> None:
        self._limit = max_event_bytes
        # The unfinished last line, in the pieces it arrived in: joined once, when it ends.
        self._partial: list[bytes] = []
        self._partial_size = 0
        self._skip_lf = False
        self._data: list[str] = []
        self._data_size = 0
        self._event: str | None = None
        self._id: str | None = None
        self._retry: int | None = None

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        """The events completed by ``chunk``; EventTooLarge past the bound."""
        if self._skip_lf and chunk[:1] == b"\n":
            chunk = chunk[1:]
        self._skip_lf = False
        if not chunk:
            return []
        if b"\n" not in chunk and b"\r" not in chunk:
            # No line ends: only the unfinished line grows (no copy of what came before).
            self._partial.append(chunk)
            self._partial_size += len(chunk)
            if self._partial_size > self._limit:
                raise EventTooLarge(f"an SSE line grew past {self._limit} bytes")
            return []
        if self._partial:
            self._partial.append(chunk)
            chunk = b"".join(self._partial)
            self._partial.clear()
            self._partial_size = 0
        lines = chunk.splitlines(keepends=True)
        last = lines[-1]
        if last.endswith(b"\r"):
            # A lone CR ends a line, but the LF that may follow can arrive in the next read.
            self._skip_lf = True
        elif not last.endswith(b"\n"):
            lines.pop()
            self._partial.append(last)
            self._partial_size = len(last)
            if self._partial_size > self._limit:
                raise EventTooLarge(f"an SSE line grew past {self._limit} bytes")
        events: list[SSEEvent] = []
        for raw in lines:
            event = self._line(raw.rstrip(b"\r\n"))
            if event is not None:
                events.append(event)
        return events

    def close(self) -> list[SSEEvent]:
        """Events left at the end of the stream; an unterminated last line is dropped as cut."""
        self._partial.clear()
        self._partial_size = 0
        event = self._dispatch()
        return [event] if event is not None else []

    def _line(self, line: bytes) -> SSEEvent | None:
        if not line:
            return self._dispatch()
        if line[:1] == b":":
            return None
        name, sep, value = line.partition(b":")
        if sep and value[:1] == b" ":
            value = value[1:]
        text = value.decode("utf-8", errors="replace")
        if name == b"data":
            self._data_size += len(value) + 1
            if self._data_size > self._limit:
                raise EventTooLarge(f"an SSE event grew past {self._limit} bytes")
            self._data.append(text)
        elif name == b"event":
            self._event = text
        elif name == b"id":
            if "\0" not in text:
                self._id = text
        elif name == b"retry" and text.isdigit():
            self._retry = int(text)
        return None

    def _dispatch(self) -> SSEEvent | None:
        data = "\n".join(self._data)
        event = SSEEvent(data, self._event, self._id, self._retry) if data else None
        self._data = []
        self._data_size = 0
        self._event = None
        return event


def encode_data(data: str) -> bytes:
    """A data-only event; multi-line data becomes several ``data:`` lines."""
    if "\n" in data or "\r" in data:
        lines = data.replace("\r\n", "\n").replace("\r", "\n").split("\n")
        return ("".join(f"data: {line}\n" for line in lines) + "\n").encode()
    return b"data: " + data.encode() + b"\n\n"


def encode_json(payload: Any) -> bytes:
    """A data-only event carrying ``payload`` as compact JSON."""
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


def encode_event(name: str, payload: Any) -> bytes:
    """A named event carrying ``payload`` as compact JSON."""
    data = json.dumps(payload, separators=(",", ":")).encode()
    return b"event: " + name.encode() + b"\ndata: " + data + b"\n\n"
