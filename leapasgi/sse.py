"""Server-sent events: an incremental decoder for upstream streams, and the encoder for clients.

The decoder follows the WHATWG event-stream rules that matter for LLM streams: ``\\n``, ``\\r\\n``
and ``\\r`` line ends (also when split across reads), comment lines, ``event:``, ``id:`` and
``retry:`` fields, multi-line ``data:``, and events split across or packed into network reads.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

__all__ = [
    "DONE",
    "PING",
    "SSEDecoder",
    "SSEEvent",
    "encode_data",
    "encode_json",
]

DONE = b"data: [DONE]\n\n"
PING = b": ping\n\n"


@dataclass(slots=True)
class SSEEvent:
    """One dispatched event."""

    data: str
    event: str | None = None
    id: str | None = None
    retry: int | None = None


class SSEDecoder:
    """Turns a byte stream into events; feed it reads as they come, then ``close()`` it."""

    __slots__ = ("_buffer", "_data", "_event", "_id", "_retry", "_skip_lf")

    def __init__(self) -> None:
        self._buffer = b""
        self._skip_lf = False
        self._data: list[str] = []
        self._event: str | None = None
        self._id: str | None = None
        self._retry: int | None = None

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        """The events completed by ``chunk``."""
        if self._skip_lf and chunk[:1] == b"\n":
            chunk = chunk[1:]
        self._skip_lf = False
        buffer = self._buffer + chunk if self._buffer else chunk
        lines = buffer.splitlines(keepends=True)
        if not lines:
            return []
        last = lines[-1]
        if last.endswith(b"\n"):
            self._buffer = b""
        elif last.endswith(b"\r"):
            # A lone CR ends a line, but the LF that may follow can arrive in the next read.
            self._buffer = b""
            self._skip_lf = True
        else:
            self._buffer = last
            lines.pop()
        events: list[SSEEvent] = []
        for raw in lines:
            event = self._line(raw.rstrip(b"\r\n"))
            if event is not None:
                events.append(event)
        return events

    def close(self) -> list[SSEEvent]:
        """Events left at the end of the stream; an unterminated last line is dropped as cut."""
        self._buffer = b""
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
