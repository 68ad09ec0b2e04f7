"""``POST /v1/chat/completions``: JSON, or SSE when the body says ``"stream": true``.

A plain ASGI callable, because this is the hot path: the body is read with a size cap, parsed
once, and handed to the manager; a client that goes away cancels the upstream call at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from typing import TYPE_CHECKING

from starlette.types import Receive, Scope, Send

from ..exceptions import AuthenticationError, LeapError
from ..sse import DONE, PING
from ..trail import RoutingTrail
from ..types import ChatCompletionRequest, parse_chat_request
from ._http import ClientGone, read_body, send_error, send_response

if TYPE_CHECKING:
    from ..gateway import Gateway
    from ..manager import ManagedStream

__all__ = ["ChatEndpoint"]

logger = logging.getLogger("leapasgi.access")

_SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]
_END = object()
# Seconds a request runs before a task starts watching for its client's disconnect.
WATCH_AFTER = 0.02
# Status recorded for a request whose client went away before the answer (nginx's convention).
CLIENT_CLOSED = 499


class ChatEndpoint:
    """The chat completions endpoint of one gateway."""

    def __init__(self, gateway: Gateway) -> None:
        self._gateway = gateway

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self._serve(scope, receive, send)
        except Exception:
            # Outside Starlette's middleware, so never a traceback to the client from here.
            logger.exception("unhandled error in the chat endpoint")
            # If the response had already begun, the server refuses a second start: nothing
            # more can be said to this client then.
            with contextlib.suppress(RuntimeError, OSError):
                await send_error(send, LeapError("The gateway failed unexpectedly"))

    async def _serve(self, scope: Scope, receive: Receive, send: Send) -> None:
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
    guard = _DisconnectGuard(receive)
    try:
        completion, trail = await gateway.manager.chat_with_trail(request)
    except LeapError as error:
        guard.close()
        await send_error(send, error)
        gateway.record_failure(error, started=started, request=request)
        return
    except asyncio.CancelledError:
        if not guard.absorb():
            raise
        gateway.record_gone(request, started=started)
        return
    finally:
        guard.close()
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


class _DisconnectGuard:
    """Cancels the request's task the moment its client disconnects.

    The body has been read, so the next ASGI ``receive`` only ever says ``http.disconnect``;
    one small watcher task waits for it. The watcher starts only once the request has run for
    WATCH_AFTER: most calls that end sooner never pay for a task (two extra event-loop turns
    each), and a client leaving sooner than that is noticed when the watcher starts.
    """

    __slots__ = ("_loop", "_receive", "_task", "_timer", "_watcher", "gone")

    def __init__(self, receive: Receive) -> None:
        self.gone = False
        self._receive = receive
        self._task = asyncio.current_task()
        self._loop = loop = asyncio.get_running_loop()
        self._watcher: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = loop.call_later(WATCH_AFTER, self._start)

    def _start(self) -> None:
        self._timer = None
        self._watcher = self._loop.create_task(self._watch())

    async def _watch(self) -> None:
        receive = self._receive
        while (await receive())["type"] != "http.disconnect":
            pass
        self.gone = True
        if self._task is not None:
            self._task.cancel()

    def close(self) -> None:
        """Stop watching; the response is being sent."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._watcher is not None:
            self._watcher.cancel()

    def absorb(self) -> bool:
        """After a CancelledError: True (and the cancellation undone) if it was our doing."""
        self.close()
        if not self.gone or self._task is None:
            return False
        self._task.uncancel()
        return True


class _Stream:
    """One SSE response: errors before the first chunk are plain HTTP errors; later ones are
    one in-band error event. Keep-alive comments go out whenever the upstream is silent for
    the keep-alive interval (which also starts the response if nothing came yet)."""

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
        self.trail = RoutingTrail()
        self.headers_sent = False
        self.finished = False
        self.sent = 0
        self._seen = 0
        self._timer: asyncio.TimerHandle | None = None
        self._pinging: asyncio.Task[None] | None = None
        self.first_at: float | None = None
        self.usage_prompt = 0
        self.usage_completion = 0

    async def run(self) -> None:
        guard = _DisconnectGuard(self.receive)
        stream = self.gateway.manager.stream(self.request)
        self.trail = stream.trail
        self._arm()
        outcome: object = None
        try:
            outcome = await self._relay(stream)
        except asyncio.CancelledError:
            if not guard.absorb():
                raise
        finally:
            self.finished = True
            guard.close()
            self._disarm()
            # Also when the client left: the upstream request must be closed now.
            await stream.aclose()
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

    async def _relay(self, stream: ManagedStream) -> object:
        """Send the chunks of each upstream read in one write as they come; returns _END or
        the error that ended the stream."""
        send = self.send
        next_batch = stream.next_batch
        try:
            while True:
                try:
                    batch = await next_batch()
                except StopAsyncIteration:
                    break
                if not self.headers_sent:
                    self.first_at = time.perf_counter()
                    await self._start()
                for chunk in batch.chunks:
                    usage = chunk.usage
                    if usage is not None:
                        self.usage_prompt = usage.prompt_tokens
                        self.usage_completion = usage.completion_tokens
                self.sent += 1
                await send({"type": "http.response.body", "body": batch.sse(), "more_body": True})
        except LeapError as error:
            self.finished = True
            await self._fail(error)
            return error
        self.finished = True
        await self._start()
        await send({"type": "http.response.body", "body": DONE, "more_body": False})
        return _END

    # Keep-alive: a timer (no task per stream) checks every interval whether anything was
    # sent since its last look; only a silent interval starts a task that sends a comment.

    def _arm(self) -> None:
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(self.gateway.config.server.keepalive_interval, self._tick)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._pinging is not None:
            self._pinging.cancel()

    def _tick(self) -> None:
        if self.finished:
            return
        if self.sent == self._seen and self._pinging is None:
            self._pinging = asyncio.get_running_loop().create_task(self._ping())
        self._seen = self.sent
        self._arm()

    async def _ping(self) -> None:
        try:
            await self._start()
            # Checked again with no await before the send: never after the last event.
            if not self.finished:
                await self.send({"type": "http.response.body", "body": PING, "more_body": True})
        except OSError:
            return  # the client is gone; the disconnect guard ends the request
        finally:
            self._pinging = None

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
