"""Anthropic Messages streams: chat chunks made into Messages events, and a native stream's
events sorted by what they mean to the gateway.

``MessagesStreamWriter`` emits the sequence the Anthropic SDKs and Claude Code expect:
``message_start``; content blocks, each ``content_block_start``, deltas and
``content_block_stop``, with indexes counting up from 0; ``message_delta``; ``message_stop`` (or
an ``error`` event). The text, or the tool arguments, of one batch go out as one delta.

Deltas are most of a stream, so their events are written around the one string they carry:
encoding each whole event as a dict costs several times more.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ..exceptions import LeapError
from ..types import ChatCompletionChunk, ChoiceDeltaToolCall, ChunkChoice, Usage
from .events import EventKind
from .messages import MessagesRequest, anthropic_error, new_tool_use_id
from .messages_chat import stop_reason, tool_names, usage_fields

__all__ = ["PING", "EventKind", "MessagesStreamWriter", "classify_event", "classify_type"]

# Anthropic's keep-alive event on a quiet stream (never SSE comments).
PING = b'event: ping\ndata: {"type": "ping"}\n\n'
_MESSAGE_STOP = b'event: message_stop\ndata: {"type":"message_stop"}\n\n'
# Stateless, and built once: json.dumps with options builds an encoder per call.
_JSON = json.JSONEncoder(separators=(",", ":"))


_KINDS = {
    "message_start": EventKind.PREAMBLE,
    "ping": EventKind.PREAMBLE,
    "content_block_start": EventKind.CONTENT,
    "content_block_delta": EventKind.CONTENT,
    "content_block_stop": EventKind.CONTENT,
    "message_delta": EventKind.CONTENT,
    "error": EventKind.ERROR,
    "message_stop": EventKind.TERMINAL,
}


def classify_type(kind: str) -> EventKind:
    """The kind of an event by its type alone (the SSE event name)."""
    return _KINDS.get(kind, EventKind.OTHER)


def classify_event(event: str | None, data: dict[str, Any]) -> EventKind:
    """The kind of one event of a native stream, by its ``type`` (else its event name)."""
    kind = data.get("type")
    if not isinstance(kind, str):
        kind = event
    return _KINDS.get(kind, EventKind.OTHER) if kind is not None else EventKind.OTHER


def _event(name: str, payload: dict[str, Any]) -> bytes:
    data = _JSON.encode({"type": name, **payload})
    return f"event: {name}\ndata: {data}\n\n".encode()


def _delta(index: int, kind: str, key: str, value: str) -> bytes:
    """``content_block_delta`` carrying ``value`` as ``delta[key]``, of delta type ``kind``."""
    return (
        f'event: content_block_delta\ndata: {{"type":"content_block_delta","index":{index},'
        f'"delta":{{"type":"{kind}","{key}":{_JSON.encode(value)}}}}}\n\n'
    ).encode()


def _block_stop(index: int) -> bytes:
    return (
        f'event: content_block_stop\ndata: {{"type":"content_block_stop","index":{index}}}\n\n'
    ).encode()


@dataclass(slots=True)
class _Call:
    """One tool call of the stream: its block starts once its name is known."""

    id: str
    given: bool
    name: str | None = None
    block: int | None = None
    arguments: list[str] = field(default_factory=list)


class MessagesStreamWriter:
    """Turns the chat chunks of a translated stream into Anthropic SSE events (bytes).

    Every method returns the bytes to send, maybe none; after ``complete`` or ``fail`` they all
    return nothing. The preamble goes out once, with the first of them that sends anything.
    Tool calls whose name never comes are dropped; arguments an upstream sends for a call
    whose block was already closed (parallel calls interleaved) keep that block's index.
    """

    __slots__ = (
        "_blocks",
        "_calls",
        "_ended",
        "_finish",
        "_last_call",
        "_matched",
        "_message_id",
        "_names",
        "_open",
        "_open_call",
        "_refusal",
        "_request",
        "_started",
        "_text",
        "_tool_use",
        "_usage",
    )

    def __init__(self, request: MessagesRequest, *, message_id: str) -> None:
        self._request = request
        self._message_id = message_id
        self._names = tool_names(request)
        self._started = False
        self._ended = False
        self._blocks = 0
        self._open: int | None = None
        self._open_call: _Call | None = None
        # Text of the open text block not sent yet.
        self._text: list[str] = []
        self._calls: dict[int, _Call] = {}
        self._last_call = 0
        self._tool_use = False
        self._refusal = False
        self._finish: str | None = None
        self._matched: str | None = None
        self._usage: Usage | None = None

    @property
    def usage(self) -> tuple[int, int] | None:
        """The (prompt, completion) tokens the upstream reported, once it did."""
        if self._usage is None:
            return None
        return self._usage.prompt_tokens, self._usage.completion_tokens

    def preamble(self) -> bytes:
        """``message_start``: the message with no content and the estimated input tokens."""
        if self._started or self._ended:
            return b""
        self._started = True
        message: dict[str, Any] = {
            "id": self._message_id,
            "type": "message",
            "role": "assistant",
            "model": self._request.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": usage_fields(None, self._request),
        }
        return _event("message_start", {"message": message})

    def ping(self) -> bytes:
        """A ``ping`` event, for keep-alives (the SDKs skip it wherever it comes)."""
        return b"" if self._ended else PING

    def feed(self, chunks: Iterable[ChatCompletionChunk]) -> bytes:
        """The events for a batch of chunks; only choice 0 counts (Messages has no ``n``)."""
        if self._ended:
            return b""
        out = [self.preamble()]
        for chunk in chunks:
            if chunk.usage is not None:
                self._usage = chunk.usage
            for choice in chunk.choices:
                if choice.index == 0:
                    self._choice(choice, out)
        self._flush(out)
        return b"".join(out)

    def complete(self) -> bytes:
        """The end of a stream that finished: the open block's stop, ``message_delta`` (stop
        reason, usage) and ``message_stop``."""
        if self._ended:
            return b""
        out = [self.preamble()]
        self._close(out)
        self._ended = True
        reason, sequence = stop_reason(
            self._finish, tool_use=self._tool_use, matched=self._matched, request=self._request
        )
        if self._refusal and not self._tool_use:
            reason = "refusal"
        usage: dict[str, int] = {"output_tokens": 0}
        if self._usage is not None:
            fields = usage_fields(self._usage, self._request)
            del fields["cache_creation_input_tokens"]
            usage = fields
        delta = {"stop_reason": reason, "stop_sequence": sequence}
        out.append(_event("message_delta", {"delta": delta, "usage": usage}))
        out.append(_MESSAGE_STOP)
        return b"".join(out)

    def fail(self, error: LeapError) -> bytes:
        """An ``error`` event ending the stream; the SDKs raise it as an APIStatusError."""
        if self._ended:
            return b""
        self._ended = True
        _, body = anthropic_error(error)
        return _event("error", body)

    def _choice(self, choice: ChunkChoice, out: list[bytes]) -> None:
        delta = choice.delta
        text = delta.content or ""
        if delta.refusal:
            self._refusal = True
            text += delta.refusal
        if text:
            if self._open is None or self._open_call is not None:
                self._close(out)
                self._start(out, {"type": "text", "text": ""}, None)
            self._text.append(text)
        for call in delta.tool_calls or ():
            self._tool_call(call, out)
        if choice.finish_reason is not None:
            self._finish = choice.finish_reason
            matched = (choice.model_extra or {}).get("stop_reason")
            self._matched = matched if isinstance(matched, str) else None

    def _tool_call(self, delta: ChoiceDeltaToolCall, out: list[bytes]) -> None:
        index = delta.index if delta.index is not None else self._last_call
        self._last_call = index
        call = self._calls.get(index)
        if call is None or (delta.id and call.given and delta.id != call.id):
            call = _Call(id=delta.id or new_tool_use_id(), given=delta.id is not None)
            self._calls[index] = call
        elif delta.id and not call.given and call.block is None:
            call.id, call.given = delta.id, True
        function = delta.function
        if function is not None:
            if function.name and call.name is None:
                call.name = function.name
            if function.arguments:
                call.arguments.append(function.arguments)
        if call.block is None and call.name is not None:
            self._close(out)
            name = self._names.get(call.name, call.name)
            block = {"type": "tool_use", "id": call.id, "name": name, "input": {}}
            call.block = self._start(out, block, call)
            self._tool_use = True

    def _start(self, out: list[bytes], block: dict[str, Any], call: _Call | None) -> int:
        index = self._blocks
        self._blocks += 1
        out.append(_event("content_block_start", {"index": index, "content_block": block}))
        self._open = index
        self._open_call = call
        return index

    def _flush(self, out: list[bytes]) -> None:
        if self._text and self._open is not None:
            out.append(_delta(self._open, "text_delta", "text", "".join(self._text)))
        self._text.clear()
        for call in self._calls.values():
            if call.block is not None and call.arguments:
                arguments = "".join(call.arguments)
                out.append(_delta(call.block, "input_json_delta", "partial_json", arguments))
                call.arguments.clear()

    def _close(self, out: list[bytes]) -> None:
        self._flush(out)
        if self._open is not None:
            out.append(_block_stop(self._open))
        self._open = None
        self._open_call = None
