"""The idle and deadline clocks for the reads of one response body.

One timer per idle period rather than one per read: arming a timer costs more than a read of
a streamed chunk, and a stream has hundreds of reads. The timer only cancels the task while a
read is waiting, so a slow consumer never counts as upstream silence.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

__all__ = ["Expired", "ReadWatch"]


class Expired(Exception):
    """Raised from ``ReadWatch.read`` when a clock ran out; ``kind`` is "idle" or "deadline"."""

    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.kind = kind


class ReadWatch:
    """Bounds each read by ``idle`` seconds of silence and all of them by a deadline."""

    __slots__ = ("_deadline", "_expired", "_handle", "_idle", "_loop", "_since", "_task")

    def __init__(self, *, idle: float, remaining: float) -> None:
        self._loop = asyncio.get_running_loop()
        now = self._loop.time()
        self._idle = idle
        self._deadline = now + remaining
        self._since: float | None = None  # when the read now waiting began
        self._task: asyncio.Task[object] | None = None
        self._handle: asyncio.TimerHandle | None = None
        self._expired: str | None = None

    async def read(self, read: Callable[[], Awaitable[bytes]]) -> bytes:
        """``await read()`` within the clocks; Expired when one runs out."""
        if self._expired is not None:
            raise Expired(self._expired)
        loop = self._loop
        self._since = since = loop.time()
        self._task = asyncio.current_task()
        if self._handle is None:
            self._handle = loop.call_at(min(since + self._idle, self._deadline), self._fire)
        try:
            return await read()
        except asyncio.CancelledError:
            task = self._task
            if self._expired is not None and task is not None and task.uncancel() == 0:
                raise Expired(self._expired) from None
            raise
        finally:
            self._since = None

    def close(self) -> None:
        """Stop the timer; call when the response is done with."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _fire(self) -> None:
        self._handle = None
        now = self._loop.time()
        since = self._since
        if now >= self._deadline:
            self._expire("deadline")
            return
        if since is not None and now >= since + self._idle:
            self._expire("idle")
            return
        start = since if since is not None else now
        self._handle = self._loop.call_at(min(start + self._idle, self._deadline), self._fire)

    def _expire(self, kind: str) -> None:
        self._expired = kind
        if self._since is not None and self._task is not None:
            self._task.cancel()
