"""Per-provider concurrency limits: at most N requests in flight, at most M more waiting.

Envoy's circuit-breaker thresholds (``max_requests``, ``max_pending_requests``) per provider:
a request that finds every slot taken waits in line, first come first served; one that finds
the line full too is turned away at once, so the manager can fail over to another provider.
Being turned away is local overflow, never the provider's fault (envoy#25487): it does not
touch the breaker or the provider's error counts.

No clock of its own: the caller bounds a wait with the seconds left to its request.
"""

from __future__ import annotations

import asyncio
from collections import deque

__all__ = ["ConcurrencyLimit"]


class ConcurrencyLimit:
    """Slots for one provider: ``max_in_flight`` at once, ``max_waiting`` more in a FIFO line."""

    __slots__ = ("_waiters", "in_flight", "max_in_flight", "max_waiting", "overflows")

    def __init__(self, max_in_flight: int, max_waiting: int = 0) -> None:
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be at least 1, got {max_in_flight}")
        if max_waiting < 0:
            raise ValueError(f"max_waiting must not be negative, got {max_waiting}")
        self.max_in_flight = max_in_flight
        self.max_waiting = max_waiting
        self.in_flight = 0
        # Requests turned away because every slot and every place in line was taken.
        self.overflows = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def waiting(self) -> int:
        """Requests in line for a slot."""
        return len(self._waiters)

    def try_acquire(self) -> bool:
        """Take a slot if one is free and nobody is in line before us."""
        if self.in_flight < self.max_in_flight and not self._waiters:
            self.in_flight += 1
            return True
        return False

    async def acquire(self, max_wait: float) -> bool:
        """Take a slot, waiting in line at most ``max_wait`` seconds; False when the line is
        full (at once) or the wait ran out. Cancelling the wait gives up the place in line."""
        if self.try_acquire():
            return True
        if len(self._waiters) >= self.max_waiting or max_wait <= 0:
            self.overflows += 1
            return False
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout(max_wait):
                await waiter
        except BaseException as exc:
            if waiter.done() and not waiter.cancelled():
                # The slot was handed over just as we gave up: pass it on.
                self.release()
            elif waiter in self._waiters:  # release() may have dropped it already
                self._waiters.remove(waiter)
            if isinstance(exc, TimeoutError):
                return False
            raise
        return True

    def release(self) -> None:
        """Give a slot back; the first one in line gets it straight away."""
        waiters = self._waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        if self.in_flight > 0:
            self.in_flight -= 1
