"""Time as an injectable dependency, so policies and tests never wait for real."""

from __future__ import annotations

import asyncio
import time
from typing import Protocol

__all__ = ["Clock", "FakeClock", "SystemClock", "sleep_until"]


class Clock(Protocol):
    """Monotonic time, wall time and sleeping, as used by retries, breakers and health checks."""

    def monotonic(self) -> float: ...

    def time(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...


class SystemClock:
    """The real clock."""

    def monotonic(self) -> float:
        return time.monotonic()

    def time(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class FakeClock:
    """A clock that only moves when told to; ``sleep`` advances it at once and records the wait."""

    def __init__(self, *, start: float = 1_000.0, wall: float = 1_700_000_000.0) -> None:
        self._now = start
        self._wall_offset = wall - start
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self._now

    def time(self) -> float:
        return self._now + self._wall_offset

    def advance(self, seconds: float) -> None:
        """Move time forward."""
        self._now += seconds

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self._now += max(seconds, 0.0)
        await asyncio.sleep(0)


async def sleep_until(clock: Clock, when: float) -> None:
    """Sleep until ``clock.monotonic()`` reaches ``when``. Event-loop timers may fire a little
    early (uvloop's by up to a millisecond), so the rest is slept again until it has passed."""
    while (left := when - clock.monotonic()) > 0:
        await clock.sleep(left)
