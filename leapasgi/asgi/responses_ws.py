"""The Responses API's WebSocket mode: ``GET /v1/responses`` upgraded, as the openai SDK's
``client.responses.connect()`` and Codex CLI (``supports_websockets``) use it.

The key is checked at the handshake: a refused client gets the HTTP error (401 with the OpenAI
error body) instead of the upgrade. Each frame ``{"type": "response.create", ...}`` (text, or
binary holding UTF-8 JSON) carries the fields of a ``POST /v1/responses`` body and makes one
streamed response (``stream`` is implied), whose events go out one JSON text frame each, the
same events as the SSE stream.
Responses run one at a time, in the order their frames came (the SDK's lanes are FIFO); each is
one request in the metrics and the access log.

The connection keeps its own history: every response made on it is kept in a connection-local
store, consulted before the gateway's, so ``previous_response_id`` works within the connection
for ``store: false`` responses too (Codex's warmup, ``generate: false``, is answered by the
gateway and its input is kept for the next turn). Nothing of a ``store: false`` response
outlives the connection.

The edges:

- a frame over ``server.max_body_bytes``: an ``error`` event, then close 1009;
- malformed JSON, an object that is not a ``response.create``, an invalid body: an ``error``
  event (``{"type": "error", "status": ..., "error": {...}}``); the connection stays usable;
- a failure after the response began: ``response.failed`` and ``error``, as over SSE;
- more than MAX_QUEUED frames waiting behind the running response: an ``error`` event, close 1008;
- the client closing mid-response: the upstream request is closed at once;
- no frame and no response running for IDLE_TIMEOUT seconds: close 1000 ("idle timeout").
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import TYPE_CHECKING, Any

from starlette.types import Receive, Scope, Send

from ..access import owner_of
from ..conversations import DEFAULT_TTL, MemoryResponseStore, ResponseStore, StoredResponse
from ..exceptions import InvalidRequestError, LeapError, RequestTooLargeError
from ..native import EventBatch
from ..outcome import Outcome
from ..tenants.identity import tenant_of_scope
from ._http import JSON, error_headers
from .responses import ResponsesEncoder, empty_events, prepare_turn

if TYPE_CHECKING:
    from ..dispatch import Batch
    from ..gateway import GatewayCore
    from ..managed_stream import ManagedStream

__all__ = [
    "IDLE_TIMEOUT",
    "LOCAL_MAX_BYTES",
    "MAX_QUEUED",
    "ResponsesSocket",
    "deny_websocket",
]

logger = logging.getLogger("leapasgi.access")

# Seconds a connection may sit with no frame arriving and no response running.
IDLE_TIMEOUT = 600.0
# response.create frames that may wait behind the running response.
MAX_QUEUED = 16
# The connection-local history: bytes and responses kept (oldest dropped first).
LOCAL_MAX_BYTES = 64 * 1024 * 1024
LOCAL_MAX_ENTRIES = 10_000

# Close codes (RFC 6455).
_NORMAL, _POLICY, _TOO_BIG = 1000, 1008, 1009
# Fields of a response.create frame that are the socket's, not the Responses body's.
_ENVELOPE = frozenset({"type", "stream_id"})
_CREATE = "response.create"


async def deny_websocket(scope: Scope, send: Send, error: LeapError) -> None:
    """Refuse a WebSocket handshake with ``error``: its status and OpenAI error body as the
    HTTP response when the server can send one, else a close before accept (a 403)."""
    if "websocket.http.response" not in scope.get("extensions", {}):
        await send({"type": "websocket.close", "code": _POLICY})
        return
    body = json.dumps(error.to_body(), separators=(",", ":")).encode()
    headers = [
        (b"content-type", JSON),
        (b"content-length", str(len(body)).encode()),
        *error_headers(error),
    ]
    await send(
        {"type": "websocket.http.response.start", "status": error.http_status, "headers": headers}
    )
    await send({"type": "websocket.http.response.body", "body": body})


class ResponsesSocket:
    """The ``/v1/responses`` WebSocket of one gateway (an ASGI app for a ``WebSocketRoute``)."""

    def __init__(self, gateway: GatewayCore, *, idle_timeout: float = IDLE_TIMEOUT) -> None:
        self.gateway = gateway
        self.idle_timeout = idle_timeout
        self.max_body = gateway.config.server.max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (await receive())["type"] != "websocket.connect":
            return  # gone before the handshake
        refused = await self.gateway.refusal(scope)
        if refused is not None:
            with self.gateway.recorder.outcome(api="responses") as outcome:
                outcome.failed(refused)
                await deny_websocket(scope, send, refused)
            return
        await send({"type": "websocket.accept"})
        await _Connection(self, scope, receive, send).run()


class _Ending:
    """Why the server closes a connection: the error to report first, and the close frame."""

    def __init__(self, code: int, reason: str, error: LeapError | None = None) -> None:
        self.code = code
        self.reason = reason
        self.error = error


class _ClientGone(Exception):
    """Raised when a frame could not be sent: the client has gone."""


class _Kept:
    """Where a response made on the connection is kept: in the connection's own store always,
    and in the gateway's unless it said ``store: false``."""

    def __init__(self, local: ResponseStore, shared: ResponseStore | None) -> None:
        self._local = local
        self._shared = shared

    async def get(self, response_id: str, *, owner: str | None) -> StoredResponse | None:
        return await self._local.get(response_id, owner=owner)

    async def put(self, stored: StoredResponse) -> None:
        await self._local.put(stored)
        if self._shared is not None:
            await self._shared.put(stored)

    async def delete(self, response_id: str, *, owner: str | None) -> bool:
        return await self._local.delete(response_id, owner=owner)


class _Connection:
    """One accepted connection: a reader queues the frames, a worker answers them in order
    and is the only one sending while the connection is open."""

    def __init__(self, socket: ResponsesSocket, scope: Scope, receive: Receive, send: Send) -> None:
        gateway = socket.gateway
        self._gateway = gateway
        self._receive = receive
        self._send = send
        self._owner = owner_of(scope)
        # The caller identified at the handshake: every response is its (accounted, limited).
        self._tenant = tenant_of_scope(scope)
        self._max_body = socket.max_body
        self._idle_timeout = socket.idle_timeout
        self._local = MemoryResponseStore(
            ttl=DEFAULT_TTL,
            max_entries=LOCAL_MAX_ENTRIES,
            max_bytes=LOCAL_MAX_BYTES,
            clock=gateway.manager.registry.clock,
        )
        self._stores: list[ResponseStore] = [self._local, gateway.response_store]
        self._queue: asyncio.Queue[str | bytes] = asyncio.Queue(MAX_QUEUED)
        self._idle: asyncio.Timeout | None = None

    async def run(self) -> None:
        ending: _Ending | None = None
        worker: asyncio.Task[None] | None = None
        try:
            async with asyncio.timeout(None) as idle:
                self._idle = idle
                self._rest()
                worker = asyncio.create_task(self._work())
                ending = await self._read()
        except TimeoutError:
            if self._idle is None or not self._idle.expired():
                raise
            ending = _Ending(_NORMAL, "idle timeout")
        finally:
            if worker is not None:
                # The client gone, or the server closing: a response running is cut now,
                # which closes its upstream request.
                worker.cancel()
                await asyncio.wait([worker])
        if ending is not None:
            with contextlib.suppress(_ClientGone, OSError):
                if ending.error is not None:
                    with self._gateway.recorder.outcome(api="responses") as outcome:
                        outcome.failed(ending.error)
                        await self._frame(_error_frame(ending.error, outcome, None))
                await self._send(
                    {"type": "websocket.close", "code": ending.code, "reason": ending.reason}
                )

    async def _read(self) -> _Ending | None:
        """Queue each frame for the worker; None when the client has gone, else why the
        server closes."""
        queue = self._queue
        while True:
            message = await self._receive()
            kind = message["type"]
            if kind == "websocket.disconnect":
                return None
            if kind != "websocket.receive":
                continue
            frame = message.get("text")
            if frame is None:
                frame = message.get("bytes") or b""
            if _size(frame) > self._max_body:
                too_big = RequestTooLargeError(
                    f"The event is larger than the {self._max_body} byte limit"
                )
                return _Ending(_TOO_BIG, "message too big", too_big)
            if queue.full():
                queued = InvalidRequestError(
                    f"More than {MAX_QUEUED} events are waiting on this connection",
                    code="too_many_queued_events",
                )
                return _Ending(_POLICY, "too many queued events", queued)
            queue.put_nowait(frame)
            self._busy()

    async def _work(self) -> None:
        queue = self._queue
        while True:
            frame = await queue.get()
            await self._respond(frame)
            if queue.empty():
                self._rest()

    def _busy(self) -> None:
        idle = self._idle
        if idle is not None and not idle.expired():
            idle.reschedule(None)

    def _rest(self) -> None:
        idle = self._idle
        if idle is not None and not idle.expired():
            idle.reschedule(asyncio.get_running_loop().time() + self._idle_timeout)

    async def _respond(self, frame: str | bytes) -> None:
        """One frame: one request, recorded when its response (or its error) has been sent."""
        with self._gateway.recorder.outcome(api="responses") as outcome:
            outcome.tenant = self._tenant
            stream_id: str | None = None
            try:
                try:
                    data = _client_event(frame)
                    stream_id = data.get("stream_id")
                    await self._create(data, stream_id, outcome)
                except LeapError as error:  # before the response began
                    outcome.failed(error)
                    await self._frame(_error_frame(error, outcome, stream_id))
            except _ClientGone:
                if not outcome.sent:
                    outcome.gone = True
            except Exception:
                logger.exception("unhandled error in the Responses WebSocket")
                failure = LeapError("The gateway failed unexpectedly", code="internal_error")
                outcome.failed(failure)
                with contextlib.suppress(_ClientGone):
                    await self._frame(_error_frame(failure, outcome, stream_id))

    async def _create(self, data: dict[str, Any], stream_id: str | None, outcome: Outcome) -> None:
        body = {key: value for key, value in data.items() if key not in _ENVELOPE}
        turn = await prepare_turn(body, owner=self._owner, stores=self._stores, stream=True)
        shared = self._gateway.response_store if turn.request.store is not False else None
        kept = _Kept(self._local, shared)
        if body.get("generate") is False:
            response = turn.empty_response()
            await kept.put(turn.stored(response))
            outcome.model = turn.request.model
            outcome.stream = True
            await self._events(_payloads(empty_events(response)), stream_id)
            outcome.sent = True
            return
        stream = self._gateway.manager.open_exchange(turn.exchange, outcome=outcome)
        try:
            await self._relay(stream, ResponsesEncoder(turn, kept), stream_id)
        finally:
            await stream.aclose()

    async def _relay(
        self, stream: ManagedStream[Batch], encoder: ResponsesEncoder, stream_id: str | None
    ) -> None:
        """Each event of the stream as a frame; the response is kept before its last event
        goes out. A failure after the first event ends it in-band; one before is raised."""
        outcome = stream.outcome
        started = False
        try:
            while True:
                try:
                    batch = await stream.next_batch()
                except StopAsyncIteration:
                    break
                started = True
                body = encoder.batch(batch)
                if encoder.keeping:
                    await encoder.keep()
                if type(batch) is EventBatch:
                    payloads = [event.raw for event in batch.events]
                else:
                    payloads = _payloads(body)
                await self._events(payloads, stream_id)
            tail = await encoder.end()
        except LeapError as error:
            if not started:
                raise
            outcome.failed(error)
            await self._events(_payloads(encoder.error_event(error)), stream_id)
            return
        except asyncio.CancelledError:
            if encoder.answered:
                # Gone right after the last event: the answer was whole.
                with contextlib.suppress(LeapError):
                    await encoder.end()
                outcome.sent = True
            raise
        await self._events(_payloads(tail), stream_id)
        outcome.sent = True

    async def _events(self, payloads: list[bytes], stream_id: str | None) -> None:
        if stream_id is not None:
            tag = b'{"stream_id":' + json.dumps(stream_id).encode() + b","
            payloads = [tag + p[1:] if p[:1] == b"{" else p for p in payloads]
        for payload in payloads:
            await self._frame(payload)

    async def _frame(self, payload: bytes) -> None:
        text = payload.decode(errors="replace")
        try:
            await self._send({"type": "websocket.send", "text": text})
        except OSError as exc:  # the server's "client disconnected"
            raise _ClientGone from exc


def _client_event(frame: str | bytes) -> dict[str, Any]:
    """A ``response.create`` event, checked; InvalidRequestError for anything else."""
    try:
        data = json.loads(frame)
    except (ValueError, RecursionError):
        raise InvalidRequestError("The event is not valid JSON", code="invalid_json") from None
    if not isinstance(data, dict):
        raise InvalidRequestError("The event must be a JSON object", code="invalid_json")
    kind = data.get("type")
    if kind != _CREATE:
        shown = kind if isinstance(kind, str) and len(kind) <= 64 and kind.isprintable() else "..."
        raise InvalidRequestError(
            f"Invalid value: '{shown}'. Supported values are: '{_CREATE}'.",
            param="type",
            code="invalid_value",
        )
    stream_id = data.get("stream_id")
    if stream_id is not None and not isinstance(stream_id, str):
        raise InvalidRequestError(
            "Invalid 'stream_id': expected a string", param="stream_id", code="invalid_value"
        )
    return data


def _error_frame(error: LeapError, outcome: Outcome, stream_id: str | None) -> bytes:
    """The ``error`` event of a Responses WebSocket, with the status the HTTP answer would
    have had and its headers (Retry-After, the request id)."""
    headers = {name.decode(): value.decode() for name, value in error_headers(error)}
    headers["x-request-id"] = outcome.request_id
    event: dict[str, Any] = {"type": "error", "status": error.http_status}
    event["error"] = {**error.to_body()["error"], "headers": headers}
    if stream_id is not None:
        event["stream_id"] = stream_id
    return json.dumps(event, separators=(",", ":"), ensure_ascii=False).encode()


def _size(frame: str | bytes) -> int:
    """A frame's bytes (a text frame's as UTF-8)."""
    if isinstance(frame, bytes) or frame.isascii():
        return len(frame)
    return len(frame.encode())


def _payloads(sse: bytes) -> list[bytes]:
    """The JSON of each event of SSE the gateway wrote (one ``data:`` line per event)."""
    return [line[6:] for line in sse.split(b"\n") if line.startswith(b"data: ")]
