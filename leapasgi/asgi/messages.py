"""``POST /v1/messages`` (Anthropic Messages) and ``POST /v1/messages/count_tokens``.

A provider that speaks Messages gets the client's body as sent (``cache_control``,
``thinking`` and the rest kept) with the client's ``anthropic-version`` and ``anthropic-beta``;
any other gets its chat form, and the answer is translated back. Errors are Anthropic's shape
with Anthropic's statuses, before the stream and inside it.
"""

from __future__ import annotations

import functools
import json
import logging

from starlette.types import Receive, Scope, Send

from ..dispatch import Batch
from ..exceptions import LeapError, ModelNotFoundError
from ..native import EventBatch, NativeCall, NativeReply, ProtocolRequest, WireProtocol
from ..outcome import Outcome
from ..protocols.messages import (
    FORWARDED_HEADERS,
    MessagesRequest,
    anthropic_error,
    new_message_id,
    parse_count_tokens_request,
    parse_messages_request,
    tokens_count,
)
from ..protocols.messages_chat import message_from_chat, messages_to_chat
from ..protocols.messages_stream import PING, MessagesStreamWriter
from ..sse import encode_event
from ..streaming import ChunkBatch
from ._endpoint import ProtocolEndpoint, json_object
from ._http import error_headers, outcome_headers, send_json, send_response
from .relay import SSERelay, guarded

__all__ = ["CountTokensEndpoint", "MessagesEndpoint", "send_anthropic_error"]

logger = logging.getLogger("leapasgi")

# The longest forwarded header value (anthropic-beta lists run to a few hundred bytes).
MAX_FORWARDED_VALUE = 4096


async def send_anthropic_error(send: Send, error: LeapError, outcome: Outcome) -> None:
    """Answer ``error`` in Anthropic's shape, with its status and the request's headers."""
    outcome.failed(error)
    status, body = anthropic_error(error, request_id=outcome.request_id)
    headers = [*error_headers(error), *_headers(outcome)]
    await send_json(send, status, body, headers=headers)


def _headers(outcome: Outcome) -> list[tuple[bytes, bytes]]:
    # The anthropic SDK reads the request id from ``request-id``.
    return [(b"request-id", outcome.request_id.encode()), *outcome_headers(outcome)]


def forwarded(scope: Scope) -> dict[str, str]:
    """The allow-listed client headers, for a native upstream: printable ASCII, capped (a
    value that is not is dropped, never passed on mangled)."""
    return {
        name.decode(): value.decode("ascii")
        for name, value in scope["headers"]
        if name in FORWARDED_HEADERS
        and len(value) <= MAX_FORWARDED_VALUE
        and all(32 <= byte < 127 for byte in value)
    }


class MessagesEndpoint(ProtocolEndpoint):
    """The Anthropic Messages endpoint of one gateway."""

    send_error = staticmethod(send_anthropic_error)
    api = "messages"

    async def handle(
        self, scope: Scope, receive: Receive, send: Send, body: bytes, outcome: Outcome
    ) -> None:
        data = json_object(body)
        request = parse_messages_request(data, raw=body)
        call = NativeCall(
            WireProtocol.MESSAGES, data, forwarded(scope), stream=bool(request.stream)
        )
        exchange = ProtocolRequest(call, functools.partial(messages_to_chat, request))
        message_id = new_message_id()
        if request.stream:
            stream = self.manager.open_exchange(exchange, outcome=outcome)
            encoder = MessagesEncoder(request, message_id)
            await SSERelay(stream, self.keepalive, receive, send, encoder, headers=_headers).run()
            return
        answer = await guarded(self.manager.exchange(exchange, outcome=outcome), receive, outcome)
        if answer is None:
            return
        if isinstance(answer, NativeReply):
            raw = answer.raw
        else:
            message = message_from_chat(answer, request, message_id=message_id)
            raw = json.dumps(message, separators=(",", ":")).encode()
        await send_response(send, 200, raw, headers=_headers(outcome))
        outcome.sent = True


class MessagesEncoder:
    """A Messages stream: native events as the upstream sent them, or chat chunks translated
    (``message_start`` goes out with the first content, so failover stays invisible)."""

    ping = PING
    keeping = False

    async def keep(self) -> None:
        return None

    def __init__(self, request: MessagesRequest, message_id: str) -> None:
        self._request = request
        self._message_id = message_id
        self._writer: MessagesStreamWriter | None = None
        self.answered = False

    def batch(self, batch: Batch) -> bytes:
        if type(batch) is EventBatch:
            if batch.events[-1].name == "message_stop":
                self.answered = True
            return batch.sse()
        assert type(batch) is ChunkBatch
        writer = self._writer
        if writer is None:
            writer = self._writer = MessagesStreamWriter(self._request, message_id=self._message_id)
            return writer.preamble() + writer.feed(batch.chunks)
        return writer.feed(batch.chunks)

    async def end(self) -> bytes:
        return self._writer.complete() if self._writer is not None else b""

    def error_event(self, error: LeapError) -> bytes:
        if self._writer is not None:
            return self._writer.fail(error)
        _, body = anthropic_error(error)
        return encode_event("error", body)

    async def refuse(self, send: Send, error: LeapError, outcome: Outcome) -> None:
        await send_anthropic_error(send, error, outcome)


class CountTokensEndpoint(ProtocolEndpoint):
    """``/v1/messages/count_tokens``: the upstream's count when a provider speaking Messages
    serves the model, else an estimate, marked ``"estimated": true``."""

    send_error = staticmethod(send_anthropic_error)
    # Not one of the conventions' operations: a custom name, as they allow.
    operation = "count_tokens"
    api = "messages"

    async def handle(
        self, scope: Scope, receive: Receive, send: Send, body: bytes, outcome: Outcome
    ) -> None:
        data = json_object(body)
        request = parse_count_tokens_request(data, raw=body)
        routes = self.manager.routes
        if not routes.knows(request.model):
            raise ModelNotFoundError(
                f"The model `{request.model}` does not exist or no configured provider serves it"
            )
        call = NativeCall(WireProtocol.MESSAGES, data, forwarded(scope), endpoint="count_tokens")
        raw: bytes | None = None
        try:
            answer = await self.manager.exchange(ProtocolRequest(call), outcome=outcome)
        except LeapError as error:
            # No provider counts natively, or the one that does failed: estimate instead.
            logger.debug("count_tokens estimated: %s", type(error).__name__)
            outcome.error = None
        else:
            assert isinstance(answer, NativeReply)
            raw = answer.raw
        if raw is None:
            raw = json.dumps({**tokens_count(request), "estimated": True}).encode()
            extra = [(b"x-leap-estimate", b"true")]
        else:
            extra = []
        await send_response(send, 200, raw, headers=[*_headers(outcome), *extra])
        outcome.sent = True
