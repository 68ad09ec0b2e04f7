"""``POST /v1/chat/completions``: JSON, or SSE when the body says ``"stream": true``.

A plain ASGI callable, because this is the hot path: the body is read with a size cap, parsed
once, and handed to the manager; a client that goes away cancels the upstream call at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING

from starlette.types import Receive, Scope, Send

from ..exceptions import LeapError
from ..outcome import Outcome
from ..sse import DONE, PING, encode_json
from ..types import ChatCompletionRequest, parse_chat_request
from ._http import ClientGone, outcome_headers, read_body, send_error, send_response

if TYPE_CHECKING:
    from ..gateway import GatewayCore
    from ..managed_stream import ManagedStream

__all__ = ["ChatEndpoint"]

logger = logging.getLogger("leapasgi.access")

_SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]
# Seconds a request runs before a task starts watching for its client's disconnect.
WATCH_AFTER = 0.02


class ChatEndpoint:
    """The chat completions endpoint of one gateway. Each request's ``Outcome`` is recorded
    once, when the ``with`` block around it ends, whichever way it ended."""

    def __init__(self, gateway: GatewayCore) -> None:
        self._recorder = gateway.recorder
        self._manager = gateway.manager
        self._access = gateway.access
        self._max_body = gateway.config.server.max_body_bytes
        self._keepalive = gateway.config.server.keepalive_interval

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        with Outcome(sink=self._recorder) as outcome:
            try:
                await self._serve(scope, receive, send, outcome)
            except Exception:
                # Outside Starlette's middleware, so never a traceback to the client from here.
                logger.exception("unhandled error in the chat endpoint")
                # If the response had already begun, the server refuses a second start:
                # nothing more can be said to this client then.
                error = LeapError("The gateway failed unexpectedly", code="internal_error")
                outcome.failed(error)
                with contextlib.suppress(RuntimeError, OSError):
                    await send_error(send, error, outcome)

    async def _serve(self, scope: Scope, receive: Receive, send: Send, outcome: Outcome) -> None:
        refused = self._access.refusal(scope)
        if refused is not None:
            await send_error(send, refused, outcome)
            return
        try:
            body = await read_body(receive, scope, self._max_body)
            request = parse_chat_request(body)
        except ClientGone:
            outcome.gone = True
            return
        except LeapError as error:
            await send_error(send, error, outcome)
            return
        if request.stream:
            stream = self._manager.stream(request, outcome=outcome)
            await _Stream(stream, self._keepalive, receive, send).run()
        else:
            await self._complete(request, outcome, receive, send)

    async def _complete(
        self, request: ChatCompletionRequest, outcome: Outcome, receive: Receive, send: Send
    ) -> None:
        guard = _DisconnectGuard(receive)
        try:
            completion = await self._manager.chat(request, outcome=outcome)
        except LeapError as error:
            guard.close()
            await send_error(send, error, outcome)
            return
        except asyncio.CancelledError:
            if not guard.absorb():
                raise
            outcome.gone = True
            return
        finally:
            guard.close()
        await send_response(send, 200, completion.to_wire_json(), headers=outcome_headers(outcome))
        outcome.sent = True


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

    __slots__ = (
        "_pinging",
        "_seen",
        "_timer",
        "finished",
        "headers_sent",
        "keepalive",
        "receive",
        "send",
        "sent",
        "stream",
    )

    def __init__(
        self, stream: ManagedStream, keepalive: float, receive: Receive, send: Send
    ) -> None:
        self.stream = stream
        self.keepalive = keepalive
        self.receive = receive
        self.send = send
        self.headers_sent = False
        self.finished = False
        self.sent = 0
        self._seen = 0
        self._timer: asyncio.TimerHandle | None = None
        self._pinging: asyncio.Task[None] | None = None

    async def run(self) -> None:
        guard = _DisconnectGuard(self.receive)
        stream = self.stream
        self._arm()
        try:
            await self._relay(stream)
        except asyncio.CancelledError:
            if not guard.absorb():
                raise
            stream.outcome.gone = True
        finally:
            self.finished = True
            guard.close()
            self._disarm()
            # Also when the client left: the upstream request must be closed now.
            await stream.aclose()

    async def _relay(self, stream: ManagedStream) -> None:
        """Send the chunks of each upstream read in one write as they come, then [DONE]; a
        failure ends the stream with the error (as a response, or an in-band event)."""
        send = self.send
        next_batch = stream.next_batch
        try:
            while True:
                try:
                    batch = await next_batch()
                except StopAsyncIteration:
                    break
                if not self.headers_sent:
                    await self._start()
                self.sent += 1
                await send({"type": "http.response.body", "body": batch.sse(), "more_body": True})
        except LeapError as error:
            self.finished = True
            await self._fail(error)
            return
        self.finished = True
        await self._start()
        await send({"type": "http.response.body", "body": DONE, "more_body": False})
        stream.outcome.sent = True

    # Keep-alive: a timer (no task per stream) checks every interval whether anything was
    # sent since its last look; only a silent interval starts a task that sends a comment.

    def _arm(self) -> None:
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(self.keepalive, self._tick)

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
        headers = [*_SSE_HEADERS, *outcome_headers(self.stream.outcome)]
        await self.send({"type": "http.response.start", "status": 200, "headers": headers})

    async def _fail(self, error: LeapError) -> None:
        outcome = self.stream.outcome
        if not self.headers_sent:
            self.headers_sent = True
            await send_error(self.send, error, outcome)
            return
        # After the first byte there is no status to change: one error event, then the end.
        outcome.failed(error)
        event = encode_json(error.to_body())
        await self.send({"type": "http.response.body", "body": event, "more_body": False})
