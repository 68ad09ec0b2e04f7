"""Relaying a stream to its client as SSE, for every protocol: the client's disconnect cancels
the request, keep-alives fill silences, and a failure is the protocol's error response before
the first byte and its in-band error event after it. A ``StreamEncoder`` says what each
protocol writes."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Generic, Protocol, TypeVar

from starlette.types import Receive, Send

from ..dispatch import Batch
from ..exceptions import LeapError
from ..sse import DONE, PING, encode_json
from ._http import outcome_headers, send_error

if TYPE_CHECKING:
    from ..managed_stream import ManagedStream
    from ..outcome import Outcome

__all__ = [
    "WATCH_AFTER",
    "ChatEncoder",
    "DisconnectGuard",
    "SSERelay",
    "StreamEncoder",
    "guarded",
]

SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]
# Seconds a request runs before a task starts watching for its client's disconnect.
WATCH_AFTER = 0.02

_B = TypeVar("_B", bound=Batch, contravariant=True)
_T = TypeVar("_T")


class StreamEncoder(Protocol[_B]):
    """What one protocol writes on an SSE stream."""

    ping: bytes

    @property
    def answered(self) -> bool:
        """The protocol's last event has been sent (a client leaving now loses nothing)."""
        ...

    def batch(self, batch: _B) -> bytes:
        """The bytes for one batch (the first included); may be empty."""
        ...

    @property
    def keeping(self) -> bool:
        """The last batch finished an answer that must be kept before its bytes go out."""
        ...

    async def keep(self) -> None:
        """Keep the finished answer (a follow-up may name it the moment it arrives)."""
        ...

    async def end(self) -> bytes:
        """The last bytes of a stream that ended well (a protocol may keep its answer first)."""
        ...

    def error_event(self, error: LeapError) -> bytes:
        """The in-band error that ends a stream which failed after its first byte."""
        ...

    async def refuse(self, send: Send, error: LeapError, outcome: Outcome) -> None:
        """Answer a stream that failed before its first byte with the protocol's error."""
        ...


class ChatEncoder:
    """Chat completions: the chunks as ``data:`` events, then ``[DONE]``."""

    ping = PING
    answered = False  # [DONE] is the last event, and ``end()`` sends it
    keeping = False

    async def keep(self) -> None:
        return None

    def batch(self, batch: Batch) -> bytes:
        return batch.sse()

    async def end(self) -> bytes:
        return DONE

    def error_event(self, error: LeapError) -> bytes:
        return encode_json(error.to_body())

    async def refuse(self, send: Send, error: LeapError, outcome: Outcome) -> None:
        await send_error(send, error, outcome)


CHAT_ENCODER = ChatEncoder()


class DisconnectGuard:
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


class SSERelay(Generic[_B]):
    """One SSE response: errors before the first byte are the protocol's error responses;
    later ones are one in-band error event. Keep-alives go out whenever the upstream is silent
    for the keep-alive interval (which also starts the response if nothing came yet)."""

    __slots__ = (
        "_pinging",
        "_seen",
        "_timer",
        "encoder",
        "finished",
        "headers",
        "headers_sent",
        "keepalive",
        "receive",
        "send",
        "sent",
        "stream",
    )

    def __init__(
        self,
        stream: ManagedStream[_B],
        keepalive: float,
        receive: Receive,
        send: Send,
        encoder: StreamEncoder[_B],
        *,
        headers: Callable[[Outcome], list[tuple[bytes, bytes]]] = outcome_headers,
    ) -> None:
        self.stream = stream
        self.headers = headers
        self.keepalive = keepalive
        self.receive = receive
        self.send = send
        self.encoder = encoder
        self.headers_sent = False
        self.finished = False
        self.sent = 0
        self._seen = 0
        self._timer: asyncio.TimerHandle | None = None
        self._pinging: asyncio.Task[None] | None = None

    async def run(self) -> None:
        guard = DisconnectGuard(self.receive)
        stream = self.stream
        self._arm()
        try:
            await self._relay(stream)
        except asyncio.CancelledError:
            if not guard.absorb():
                raise
            if self.encoder.answered:
                # Gone right after the last event (Codex does it every turn): the answer was
                # whole, so it is finished and counted as sent, not as a client gone.
                await self.encoder.end()
                stream.outcome.sent = True
            else:
                stream.outcome.gone = True
        finally:
            self.finished = True
            guard.close()
            self._disarm()
            # Also when the client left: the upstream request must be closed now.
            await stream.aclose()

    async def _relay(self, stream: ManagedStream[_B]) -> None:
        """Send the events of each upstream read in one write as they come, then the end; a
        failure ends the stream with the error (as a response, or an in-band event)."""
        send = self.send
        next_batch = stream.next_batch
        encoder = self.encoder
        encode = encoder.batch
        try:
            while True:
                try:
                    batch = await next_batch()
                except StopAsyncIteration:
                    break
                if not self.headers_sent:
                    await self._start()
                self.sent += 1
                body = encode(batch)
                if encoder.keeping:
                    await encoder.keep()
                if body:
                    await send({"type": "http.response.body", "body": body, "more_body": True})
            end = await self.encoder.end()
        except LeapError as error:
            self.finished = True
            await self._fail(error)
            return
        self.finished = True
        await self._start()
        await send({"type": "http.response.body", "body": end, "more_body": False})
        stream.outcome.sent = True

    # Keep-alive: a timer (no task per stream) checks every interval whether anything was
    # sent since its last look; only a silent interval starts a task that sends a ping.

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
                body = self.encoder.ping
                await self.send({"type": "http.response.body", "body": body, "more_body": True})
        except OSError:
            return  # the client is gone; the disconnect guard ends the request
        finally:
            self._pinging = None

    async def _start(self) -> None:
        if self.headers_sent:
            return
        self.headers_sent = True
        headers = [*SSE_HEADERS, *self.headers(self.stream.outcome)]
        await self.send({"type": "http.response.start", "status": 200, "headers": headers})

    async def _fail(self, error: LeapError) -> None:
        outcome = self.stream.outcome
        if not self.headers_sent:
            self.headers_sent = True
            await self.encoder.refuse(self.send, error, outcome)
            return
        # After the first byte there is no status to change: one error event, then the end.
        outcome.failed(error)
        event = self.encoder.error_event(error)
        await self.send({"type": "http.response.body", "body": event, "more_body": False})


async def guarded(call: Awaitable[_T], receive: Receive, outcome: Outcome) -> _T | None:
    """Await ``call``, cancelled at once if the client disconnects (then None, and the
    outcome notes the client gone)."""
    guard = DisconnectGuard(receive)
    try:
        return await call
    except asyncio.CancelledError:
        if not guard.absorb():
            raise
        outcome.gone = True
        return None
    finally:
        guard.close()
