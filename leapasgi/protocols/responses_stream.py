"""A translated chat stream as Responses API server-sent events.

One writer per response: one response id throughout, and a ``sequence_number`` on every event,
counting from 0. Items open when their first delta arrives and close in ``complete()``; a
message closes early when a tool call begins, since chat sends text before calls.

Delta events are most of a stream, so their JSON is written from pieces encoded when their
part or call opens (``_Delta``): a delta costs one string encoding, not a whole event's.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ..types import ChatCompletionChunk, ChoiceDeltaToolCall, Usage
from .responses_output import (
    RESPONSE_ERROR_CODES,
    function_call_item,
    incomplete_reason,
    message_item,
    namespaced_functions,
    new_call_id,
    new_function_call_id,
    new_message_id,
    output_text_part,
    response_object,
    response_usage,
)
from .responses_request import ResponsesRequest

__all__ = ["ResponsesStreamWriter"]

# Stateless, and built once: json.dumps with options builds an encoder per call.
_JSON = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))
# Per part kind: its delta events' type, and the members that follow the delta.
_DELTA_KINDS = {
    "output_text": ("response.output_text.delta", ',"logprobs":[]'),
    "refusal": ("response.refusal.delta", ""),
}


def _head(kind: str) -> str:
    """An event up to its sequence number; the event names need no JSON escaping."""
    return f'event: {kind}\ndata: {{"type":"{kind}","sequence_number":'


@dataclass(frozen=True, slots=True)
class _Delta:
    """The delta events of one part or call, encoded but for the sequence number and delta."""

    head: str
    middle: str
    tail: str

    @classmethod
    def of(cls, kind: str, where: dict[str, Any], after: str = "") -> _Delta:
        """``kind`` events with the fields ``where`` before the delta and the JSON members
        ``after`` (``,"key":value...``) after it."""
        return cls(_head(kind), "," + _JSON.encode(where)[1:-1] + ',"delta":', after + "}\n\n")

    def frame(self, sequence: int, delta: str) -> bytes:
        """The event numbered ``sequence`` carrying ``delta``."""
        return f"{self.head}{sequence}{self.middle}{_JSON.encode(delta)}{self.tail}".encode()


@dataclass(slots=True)
class _Part:
    """One content part of a message: output text or a refusal, in pieces."""

    kind: str
    delta: _Delta
    pieces: list[str] = field(default_factory=list)

    def text(self) -> str:
        return "".join(self.pieces)

    def wire(self) -> dict[str, Any]:
        if self.kind == "refusal":
            return {"type": "refusal", "refusal": self.text()}
        return output_text_part(self.text())


@dataclass(slots=True)
class _Message:
    """An assistant message item being written."""

    index: int
    item_id: str
    parts: list[_Part] = field(default_factory=list)
    status: str = "in_progress"

    def wire(self) -> dict[str, Any]:
        return message_item(self.item_id, [p.wire() for p in self.parts], status=self.status)


def _in_part(message: _Message, index: int) -> dict[str, Any]:
    """The fields that place an event in content part ``index`` of ``message``."""
    return {"item_id": message.item_id, "output_index": message.index, "content_index": index}


@dataclass(slots=True)
class _Call:
    """A function call item being written; announced once its name is known."""

    call_id: str | None
    name: str | None
    item_id: str = ""
    index: int | None = None
    pieces: list[str] = field(default_factory=list)
    status: str = "in_progress"
    namespace: str | None = None
    delta: _Delta | None = None

    def wire(self) -> dict[str, Any]:
        return function_call_item(
            self.item_id,
            call_id=self.call_id or "",
            name=self.name or "",
            arguments="".join(self.pieces),
            status=self.status,
            namespace=self.namespace,
        )


class ResponsesStreamWriter:
    """Turns the chat chunks of a translated stream into Responses SSE events (bytes)."""

    def __init__(self, request: ResponsesRequest, *, response_id: str, created_at: int) -> None:
        self._request = request
        self._id = response_id
        self._created_at = created_at
        self._namespaces = namespaced_functions(request.tools)
        self._sequence = 0
        self._started = False
        self._final: dict[str, Any] | None = None
        self._output: list[_Message | _Call] = []
        self._message: _Message | None = None
        self._calls: dict[int, _Call] = {}
        self._finish_reason: str | None = None
        self._usage: Usage | None = None

    @property
    def response(self) -> dict[str, Any]:
        """The final (or failed) Response object; while streaming, a snapshot in progress."""
        if self._final is not None:
            return self._final
        return self._snapshot("in_progress", [item.wire() for item in self._output])

    @property
    def usage(self) -> tuple[int, int] | None:
        """(input_tokens, output_tokens), once the stream reported usage."""
        if self._usage is None:
            return None
        return self._usage.prompt_tokens, self._usage.completion_tokens

    def preamble(self) -> bytes:
        """``response.created`` then ``response.in_progress``; b"" once sent."""
        if self._started:
            return b""
        self._started = True
        # The same response in both events: encoded once.
        fields = _JSON.encode({"response": self._snapshot("in_progress", [])})
        return self._frame("response.created", fields) + self._frame("response.in_progress", fields)

    def feed(self, chunks: Sequence[ChatCompletionChunk]) -> bytes:
        """The events for ``chunks`` (choice 0; others are not asked for); may be b""."""
        if self._final is not None:
            return b""
        out = [self.preamble()]
        for chunk in chunks:
            if chunk.usage is not None:
                self._usage = chunk.usage
            for choice in chunk.choices:
                if choice.index != 0:
                    continue
                delta = choice.delta
                if delta.content:
                    out.append(self._text("output_text", delta.content))
                if delta.refusal:
                    out.append(self._text("refusal", delta.refusal))
                for call in delta.tool_calls or ():
                    out.append(self._call(call))
                if choice.finish_reason is not None:
                    self._finish_reason = choice.finish_reason
        return b"".join(out)

    def complete(self) -> bytes:
        """Closes the open parts and items, then ``response.completed`` (or
        ``response.incomplete`` when the answer was cut short) with the usage."""
        if self._final is not None:
            return b""
        out = [self.preamble()]
        for call in self._calls.values():
            if call.index is None:
                out.append(self._announce(call))
        if not self._output:
            out.append(self._text("output_text", ""))
        reason = incomplete_reason(self._finish_reason)
        last = self._output[-1]
        for item in self._output:
            if item.status == "in_progress":
                status = "incomplete" if reason and item is last else "completed"
                out.append(self._close(item, status))
        status = "incomplete" if reason else "completed"
        self._final = self._snapshot(status, [item.wire() for item in self._output], reason)
        out.append(self._event(f"response.{status}", response=self._final))
        return b"".join(out)

    def fail(self, message: str, *, code: str, error_type: str = "server_error") -> bytes:
        """``response.failed`` (status failed, with the error), then an ``error`` event, which
        is what makes the openai SDK raise ``APIError``; open items are left unclosed."""
        if self._final is not None:
            return b""
        out = [self.preamble()]
        for item in self._output:
            if item.status == "in_progress":
                item.status = "incomplete"
        error = {
            "code": code if code in RESPONSE_ERROR_CODES else "server_error",
            "message": message,
        }
        self._final = self._snapshot("failed", [item.wire() for item in self._output], error=error)
        out.append(self._event("response.failed", response=self._final))
        # The SDK raises on a top-level "error" object; the flat fields are the documented shape.
        nested = {"type": error_type, "code": code, "message": message, "param": None}
        out.append(self._event("error", code=code, message=message, param=None, error=nested))
        return b"".join(out)

    def _snapshot(
        self,
        status: str,
        output: list[dict[str, Any]],
        incomplete: str | None = None,
        error: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        return response_object(
            self._request,
            response_id=self._id,
            created_at=self._created_at,
            status=status,
            output=output,
            usage=response_usage(self._usage),
            incomplete=incomplete,
            error=error,
        )

    def _text(self, kind: str, delta: str) -> bytes:
        message = self._message
        # Most chunks carry more of the open part: one frame, nothing to open or close.
        if message is not None and message.parts and message.parts[-1].kind == kind:
            part = message.parts[-1]
            part.pieces.append(delta)
            return part.delta.frame(self._next(), delta) if delta else b""
        out = []
        if message is None:
            message = _Message(len(self._output), new_message_id())
            self._message = message
            self._output.append(message)
            out.append(self._event("response.output_item.added", **self._at(message)))
        if message.parts:
            out.append(self._close_part(message))
        where = _in_part(message, len(message.parts))
        event, after = _DELTA_KINDS[kind]
        part = _Part(kind, _Delta.of(event, where, after))
        message.parts.append(part)
        out.append(self._event("response.content_part.added", **where, part=part.wire()))
        part.pieces.append(delta)
        if delta:
            out.append(part.delta.frame(self._next(), delta))
        return b"".join(out)

    def _call(self, delta: ChoiceDeltaToolCall) -> bytes:
        function = delta.function
        index = delta.index or 0
        call = self._calls.get(index)
        if call is None:
            call = _Call(delta.id, function.name if function else None)
            self._calls[index] = call
        elif call.index is None:
            call.call_id = call.call_id or delta.id
            call.name = call.name or (function.name if function else None)
        arguments = function.arguments if function else None
        if call.delta is not None:
            if not arguments:
                return b""
            call.pieces.append(arguments)
            return call.delta.frame(self._next(), arguments)
        if arguments:
            call.pieces.append(arguments)
        return self._announce(call) if call.name else b""

    def _announce(self, call: _Call) -> bytes:
        out = []
        if self._message is not None:
            out.append(self._close(self._message, "completed"))
        call.index = len(self._output)
        call.item_id = new_function_call_id()
        call.call_id = call.call_id or new_call_id()
        call.namespace = self._namespaces.get(call.name or "")
        call.delta = _Delta.of(
            "response.function_call_arguments.delta",
            {"item_id": call.item_id, "output_index": call.index},
        )
        self._output.append(call)
        buffered = "".join(call.pieces)
        call.pieces = []
        out.append(self._event("response.output_item.added", **self._at(call)))
        if buffered:
            call.pieces.append(buffered)
            out.append(call.delta.frame(self._next(), buffered))
        return b"".join(out)

    def _close(self, item: _Message | _Call, status: str) -> bytes:
        out = []
        if isinstance(item, _Message):
            if item.parts:
                out.append(self._close_part(item))
            self._message = None
        else:
            out.append(
                self._event(
                    "response.function_call_arguments.done",
                    item_id=item.item_id,
                    output_index=item.index,
                    arguments="".join(item.pieces),
                )
            )
        item.status = status
        out.append(self._event("response.output_item.done", **self._at(item)))
        return b"".join(out)

    def _close_part(self, message: _Message) -> bytes:
        part = message.parts[-1]
        where = _in_part(message, len(message.parts) - 1)
        if part.kind == "output_text":
            done = self._event("response.output_text.done", **where, text=part.text(), logprobs=[])
        else:
            done = self._event("response.refusal.done", **where, refusal=part.text())
        return done + self._event("response.content_part.done", **where, part=part.wire())

    def _at(self, item: _Message | _Call) -> dict[str, Any]:
        return {"output_index": item.index, "item": item.wire()}

    def _next(self) -> int:
        """The next event's sequence number."""
        sequence = self._sequence
        self._sequence = sequence + 1
        return sequence

    def _event(self, kind: str, **fields: Any) -> bytes:
        return self._frame(kind, _JSON.encode(fields))

    def _frame(self, kind: str, fields: str) -> bytes:
        """The event ``kind`` with the fields of the JSON object ``fields`` after its type and
        sequence number (``fields`` has at least one)."""
        return f"{_head(kind)}{self._next()},{fields[1:]}\n\n".encode()
