"""``POST /v1/chat/completions``: JSON, or SSE when the body says ``"stream": true``.

A plain ASGI callable, because this is the hot path: the body is read with a size cap, parsed
once, and handed to the manager; a client that goes away cancels the upstream call at once.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import TYPE_CHECKING

import anyio
from starlette.types import Receive, Scope, Send

from ..exceptions import AuthenticationError, LeapError
from ..sse import DONE, PING
from ..trail import RoutingTrail
from ..types import ChatCompletionChunk, ChatCompletionRequest, parse_chat_request
from ._http import ClientGone, read_body, send_error, send_response

if TYPE_CHECKING:
    from ..gateway import Gateway

__all__ = ["ChatEndpoint"]

logger = logging.getLogger("leapasgi.access")

_SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]
_END = object()
# Chunks buffered between the upstream reader and a slow client before upstream reads pause.
_STREAM_BUFFER = 8
# Status recorded for a request whose client went away before the answer (nginx's convention).
CLIENT_CLOSED = 499


class ChatEndpoint:
    """The chat completions endpoint of one gateway."""

    def __init__(self, gateway: Gateway) -> None:
        self._gateway = gateway

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        gateway = self._gateway
        if not gateway.auth.allows(scope):
            error = AuthenticationError("Invalid or missing API key")
            await send_error(send, error)
            gateway.record_failure(error, started=started, request=None)
            return
        try:
            body = await read_body(receive, scope, gateway.config.server.max_body_bytes)
            request = parse_chat_request(body)
        except ClientGone:
            return
        except LeapError as error:
            await send_error(send, error)
            gateway.record_failure(error, started=started, request=None)
            return
        if request.stream:
            await _Stream(gateway, request, started, receive, send).run()
        else:
            await _complete(gateway, request, started, receive, send)


async def _complete(
    gateway: Gateway, request: ChatCompletionRequest, started: float, receive: Receive, send: Send
) -> None:
    result = None
    error: LeapError | None = None
    async with anyio.create_task_group() as group:
        group.start_soon(_cancel_on_disconnect, receive, group.cancel_scope)
        try:
            result = await gateway.manager.chat_with_trail(request)
        except LeapError as exc:
            error = exc
        group.cancel_scope.cancel()
    if error is not None:
        await send_error(send, error)
        gateway.record_failure(error, started=started, request=request)
        return
    if result is None:  # the client went away; the upstream call was cancelled
        gateway.record_gone(request, started=started)
        return
    completion, trail = result
    headers = gateway.trail_headers(trail, started)
    if completion.request_id is not None:
        headers.append((b"x-request-id", completion.request_id.encode()))
    await send_response(send, 200, completion.to_wire_json(), headers=headers)
    usage = completion.usage
    gateway.record_success(
        request,
        trail,
        started=started,
        prompt_tokens=usage.prompt_tokens if usage else 0,
        completion_tokens=usage.completion_tokens if usage else 0,
    )


async def _cancel_on_disconnect(receive: Receive, scope: anyio.CancelScope) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            scope.cancel()
            return


class _Stream:
    """One SSE response: errors before the first chunk are plain HTTP errors; later ones are
    one in-band error event. Keep-alive comments flow while the upstream is silent."""

    def __init__(
        self,
        gateway: Gateway,
        request: ChatCompletionRequest,
        started: float,
        receive: Receive,
        send: Send,
    ) -> None:
        self.gateway = gateway
        self.request = request
        self.started = started
        self.receive = receive
        self.send = send
        self.queue: asyncio.Queue[object] = asyncio.Queue(_STREAM_BUFFER)
        self.trail = RoutingTrail()
        self.headers_sent = False
        self.first_at: float | None = None
        self.usage_prompt = 0
        self.usage_completion = 0

    async def run(self) -> None:
        outcome: object = None
        async with anyio.create_task_group() as group:
            group.start_soon(_cancel_on_disconnect, self.receive, group.cancel_scope)
            group.start_soon(self._produce)
            outcome = await self._consume()
            group.cancel_scope.cancel()
        gateway = self.gateway
        if isinstance(outcome, LeapError):
            gateway.record_failure(outcome, started=self.started, request=self.request)
        elif outcome is _END:
            gateway.record_success(
                self.request,
                self.trail,
                started=self.started,
                ttft=None if self.first_at is None else self.first_at - self.started,
                prompt_tokens=self.usage_prompt,
                completion_tokens=self.usage_completion,
            )
        else:
            gateway.record_gone(self.request, started=self.started)

    async def _produce(self) -> None:
        stream = self.gateway.manager.stream(self.request)
        self.trail = stream.trail
        put = self.queue.put
        try:
            async for chunk in stream:
                await put(chunk)
        except LeapError as error:
            await put(error)
            return
        finally:
            # Also when cancelled (the client left): the upstream request must be closed now.
            with anyio.CancelScope(shield=True):
                await stream.aclose()
        await put(_END)

    async def _consume(self) -> object:
        """Send what the producer delivers; returns _END, the error, or None if cancelled."""
        interval = self.gateway.config.server.keepalive_interval
        get = self.queue.get
        send = self.send
        while True:
            try:
                async with asyncio.timeout(interval):
                    item = await get()
            except TimeoutError:
                await self._start()
                await send({"type": "http.response.body", "body": PING, "more_body": True})
                continue
            if isinstance(item, ChatCompletionChunk):
                if self.first_at is None:
                    self.first_at = time.perf_counter()
                await self._start()
                if item.usage is not None:
                    self.usage_prompt = item.usage.prompt_tokens
                    self.usage_completion = item.usage.completion_tokens
                body = b"data: " + item.to_wire_json() + b"\n\n"
                await send({"type": "http.response.body", "body": body, "more_body": True})
                continue
            if isinstance(item, LeapError):
                await self._fail(item)
                return item
            await self._start()
            await send({"type": "http.response.body", "body": DONE, "more_body": False})
            return _END

    async def _start(self) -> None:
        if self.headers_sent:
            return
        self.headers_sent = True
        headers = [*_SSE_HEADERS, *self.gateway.trail_headers(self.trail, self.started)]
        await self.send({"type": "http.response.start", "status": 200, "headers": headers})

    async def _fail(self, error: LeapError) -> None:
        if not self.headers_sent:
            self.headers_sent = True
            await send_error(self.send, error)
            return
        # After the first byte there is no status to change: one error event, then the end.
        event = b"data: " + json.dumps(error.to_body(), separators=(",", ":")).encode() + b"\n\n"
        await self.send({"type": "http.response.body", "body": event, "more_body": False})
