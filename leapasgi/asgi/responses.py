"""``POST /v1/responses`` (JSON and SSE), ``GET`` and ``DELETE /v1/responses/{id}``.

Conversation state is the gateway's own: ``previous_response_id`` is rebuilt from the store
into the whole history, so a chain may change provider at any turn, and a follow-up works the
moment the previous answer was sent (it is stored before its last byte goes out). A provider
that speaks Responses gets the client's body with that history as its ``input``; any other gets
its chat form, and the answer is translated back with the gateway's own response id.
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from ..access import owner_of
from ..conversations import ResponseStore, StoredResponse, history_of
from ..dispatch import Batch
from ..exceptions import InvalidRequestError, LeapError, NotFoundError
from ..native import EventBatch, NativeCall, NativeReply, ProtocolRequest, WireProtocol
from ..outcome import Outcome
from ..protocols.responses import (
    ResponsesRequest,
    ResponsesStreamWriter,
    input_items,
    new_response_id,
    parse_responses_request,
    response_from_chat,
    responses_to_chat,
)
from ..protocols.responses_output import response_object
from ..sse import PING, encode_event
from ..streaming import ChunkBatch
from ..types import ChatCompletion
from ._endpoint import ProtocolEndpoint, json_object
from ._http import outcome_headers, send_error, send_response
from .relay import SSERelay, guarded
from .routes import error_response

__all__ = ["ResponseResource", "ResponsesEndpoint", "Turn", "prepare_turn"]

# Fields of the client's body a native upstream never sees: the gateway keeps the chain.
_GATEWAY_FIELDS = ("previous_response_id", "generate")
_TERMINAL = frozenset({"response.completed", "response.incomplete"})


@dataclass(slots=True)
class Turn:
    """One response to make: the request, this turn's input items, and what is dispatched."""

    request: ResponsesRequest
    items: list[dict[str, Any]]
    exchange: ProtocolRequest
    response_id: str
    created_at: int
    owner: str | None
    # The bytes of the request body, when it came as bytes (sizes the stored turn).
    request_bytes: int | None = None

    def stored(
        self, response: dict[str, Any], *, answer_bytes: int | None = None
    ) -> StoredResponse:
        """The response as the store keeps it, under the id the client was given; with
        ``answer_bytes`` (the encoded answer's length) its size needs no encoding."""
        response_id = response.get("id")
        known = self.request_bytes
        return StoredResponse(
            response_id if isinstance(response_id, str) else self.response_id,
            response,
            tuple(self.items),
            self.request.previous_response_id,
            self.owner,
            known + answer_bytes if known is not None and answer_bytes is not None else None,
        )

    def answered(self, answer: NativeReply | ChatCompletion) -> tuple[dict[str, Any], bytes]:
        """The Response object the dispatcher's ``answer`` to this turn makes, and its bytes:
        the upstream's own when it answered natively, else built from its chat completion."""
        if isinstance(answer, NativeReply):
            return answer.data, answer.raw
        response = response_from_chat(
            answer, self.request, response_id=self.response_id, created_at=self.created_at
        )
        return response, json.dumps(response, separators=(",", ":")).encode()

    def empty_response(self) -> dict[str, Any]:
        """The answer to ``generate: false``: nothing generated, the input kept."""
        return response_object(
            self.request,
            response_id=self.response_id,
            created_at=self.created_at,
            status="completed",
            output=[],
        )


async def prepare_turn(
    data: dict[str, Any],
    *,
    owner: str | None,
    stores: list[ResponseStore],
    stream: bool | None = None,
    raw: bytes | None = None,
) -> Turn:
    """Parse a ``response.create`` body (``raw``: the bytes it was read from) and rebuild its
    history from ``stores``; ``stream`` overrides the body's."""
    request = parse_responses_request(data, raw=raw)
    if data.get("background") is True:
        # A background response lives on at one upstream, polled there; the gateway answers
        # each response itself, so it cannot offer that.
        raise InvalidRequestError(
            "Background responses are not supported by the gateway",
            param="background",
            code="invalid_value",
        )
    if stream is None:
        stream = bool(request.stream)
    items = input_items(request)
    history: list[dict[str, Any]] = []
    if request.previous_response_id:
        history = await history_of(request.previous_response_id, stores, owner=owner)
    full = [*history, *items]
    body = {k: v for k, v in data.items() if k not in _GATEWAY_FIELDS}
    body["input"] = full
    body["stream"] = stream
    call = NativeCall(WireProtocol.RESPONSES, body, stream=stream)
    return Turn(
        request,
        items,
        ProtocolRequest(call, functools.partial(responses_to_chat, request, full)),
        new_response_id(),
        int(time.time()),
        owner,
        len(raw) if raw is not None else None,
    )


class ResponsesEndpoint(ProtocolEndpoint):
    """The Responses endpoint of one gateway."""

    api = "responses"

    async def handle(
        self, scope: Scope, receive: Receive, send: Send, body: bytes, outcome: Outcome
    ) -> None:
        data = json_object(body)
        store = self.gateway.response_store
        turn = await prepare_turn(data, owner=owner_of(scope), stores=[store], raw=body)
        stream = turn.exchange.native.stream
        keep = turn.request.store is not False
        if data.get("generate") is False:
            await self._empty(turn, store if keep else None, send, outcome, stream=stream)
            return
        if stream:
            opened = self.manager.open_exchange(turn.exchange, outcome=outcome)
            encoder = ResponsesEncoder(turn, store if keep else None)
            await SSERelay(opened, self.keepalive, receive, send, encoder).run()
            return
        answer = await guarded(
            self.manager.exchange(turn.exchange, outcome=outcome), receive, outcome
        )
        if answer is None:
            return
        response, raw = turn.answered(answer)
        if keep:
            await store.put(turn.stored(response, answer_bytes=len(raw)))
        await send_response(send, 200, raw, headers=outcome_headers(outcome))
        outcome.sent = True

    async def _empty(
        self,
        turn: Turn,
        store: ResponseStore | None,
        send: Send,
        outcome: Outcome,
        *,
        stream: bool,
    ) -> None:
        response = turn.empty_response()
        if store is not None:
            await store.put(turn.stored(response))
        outcome.model = turn.request.model
        if not stream:
            raw = json.dumps(response, separators=(",", ":")).encode()
            await send_response(send, 200, raw, headers=outcome_headers(outcome))
        else:
            events = empty_events(response)
            await send_response(
                send,
                200,
                events,
                content_type=b"text/event-stream; charset=utf-8",
                headers=outcome_headers(outcome),
            )
        outcome.sent = True


def empty_events(response: dict[str, Any]) -> bytes:
    """``response.created`` and ``response.completed`` for a turn that generated nothing."""
    started = {**response, "status": "in_progress"}
    return encode_event(
        "response.created",
        {"type": "response.created", "sequence_number": 0, "response": started},
    ) + encode_event(
        "response.completed",
        {"type": "response.completed", "sequence_number": 1, "response": response},
    )


class ResponsesEncoder:
    """A Responses stream: native events as the upstream sent them, or chat chunks translated
    with one response id throughout; the finished response is stored before its last event
    is sent, so a follow-up can name it at once."""

    ping = PING

    def __init__(self, turn: Turn, store: ResponseStore | None) -> None:
        self._turn = turn
        self._store = store
        self._writer: ResponsesStreamWriter | None = None
        self._final: dict[str, Any] | None = None  # a native stream's finished response
        self._kept = False
        self._final_bytes = 0
        self._sequence = 0

    @property
    def answered(self) -> bool:
        """The protocol's last event has gone out: a client leaving now loses nothing."""
        return self._final is not None

    def batch(self, batch: Batch) -> bytes:
        if type(batch) is EventBatch:
            events = batch.events
            # Upstream sequence numbers count every event from 0: the next one is this many.
            self._sequence += len(events)
            last = events[-1]
            if last.name in _TERMINAL and last.data is not None:
                response = last.data.get("response")
                if isinstance(response, dict):
                    self._final = response
                    self._final_bytes = len(last.raw)
            return batch.sse()
        assert type(batch) is ChunkBatch
        writer = self._writer
        if writer is None:
            turn = self._turn
            writer = self._writer = ResponsesStreamWriter(
                turn.request, response_id=turn.response_id, created_at=turn.created_at
            )
        return writer.feed(batch.chunks)

    @property
    def keeping(self) -> bool:
        return self._final is not None and not self._kept

    async def keep(self) -> None:
        """Store a native stream's finished response, once, before its last event is sent."""
        if self._final is not None and not self._kept:
            self._kept = True
            await self._keep(self._final, self._final_bytes)

    async def end(self) -> bytes:
        writer = self._writer
        if writer is not None:
            tail = writer.complete()
            # The last events carry the whole response: their length stands for its size.
            await self._keep(writer.response, len(tail))
            return tail
        await self.keep()
        return b""

    async def _keep(self, response: dict[str, Any], answer_bytes: int) -> None:
        if self._store is not None:
            await self._store.put(self._turn.stored(response, answer_bytes=answer_bytes))

    def error_event(self, error: LeapError) -> bytes:
        code = error.code or "server_error"
        if self._writer is not None:
            return self._writer.fail(error.message, code=code, error_type=error.error_type)
        nested = {"type": error.error_type, "code": code, "message": error.message, "param": None}
        return encode_event(
            "error",
            {
                "type": "error",
                "sequence_number": self._sequence,
                "code": code,
                "message": error.message,
                "param": None,
                "error": nested,
            },
        )

    async def refuse(self, send: Send, error: LeapError, outcome: Outcome) -> None:
        await send_error(send, error, outcome)


class ResponseResource:
    """``GET`` and ``DELETE /v1/responses/{id}``: the client's own stored responses."""

    def __init__(
        self, store: ResponseStore, refusal: Callable[[Scope], Awaitable[LeapError | None]]
    ) -> None:
        self._store = store
        self._refusal = refusal

    async def serve(self, request: Request) -> Response:
        """GET or DELETE, one route (so a 405 lists both in Allow)."""
        if request.method == "DELETE":
            return await self.delete(request)
        return await self.get(request)

    async def get(self, request: Request) -> Response:
        refused = await self._refusal(request.scope)
        if refused is not None:
            return error_response(refused)
        response_id = request.path_params["response_id"]
        stored = await self._store.get(response_id, owner=owner_of(request.scope))
        if stored is None:
            return error_response(_missing(response_id))
        return Response(
            json.dumps(stored.response, separators=(",", ":")), media_type="application/json"
        )

    async def delete(self, request: Request) -> Response:
        refused = await self._refusal(request.scope)
        if refused is not None:
            return error_response(refused)
        response_id = request.path_params["response_id"]
        if not await self._store.delete(response_id, owner=owner_of(request.scope)):
            return error_response(_missing(response_id))
        body = {"id": response_id, "object": "response.deleted", "deleted": True}
        return Response(json.dumps(body), media_type="application/json")


def _missing(response_id: str) -> NotFoundError:
    shown = response_id if len(response_id) <= 64 and response_id.isprintable() else "..."
    return NotFoundError(f"Response with id '{shown}' not found.", param="response_id")
