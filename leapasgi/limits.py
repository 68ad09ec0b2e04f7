"""Per-provider concurrency limits: at most N requests in flight, at most M more waiting.

Envoy's circuit-breaker thresholds (``max_requests``, ``max_pending_requests``) per provider:
a request that finds every slot taken waits in line; one that finds the line full too is
turned away at once (``FULL``), so the manager can fail over to another provider. Being
turned away (full, shed or timed out) is local overflow, never the provider's fault
(envoy#25487): it does not touch the breaker or the provider's error counts.

The line is a priority queue: higher ``priority`` first, then the earliest deadline (none
last), then first come first served. A freed slot goes straight to the first in line; nothing
polls. A request that could not be served in time even if it joined the line is shed at once
(``SHED``) rather than left to time out there; see ``expected_wait``. One that joins gives up
when too little of its time is left to be served (``TIMED_OUT``).

``max_in_flight`` can be changed at any time (``set_limit``): raising it hands the new slots to
the line at once; lowering it lets the requests in flight finish, their slots going away as
they end.

The caller bounds a wait with the seconds left to its request; waits are timed on the running
loop. The injected clock only measures them, for ``wait_seconds``.
"""

from __future__ import annotations

import asyncio
import math
from bisect import bisect_left
from dataclasses import dataclass, field
from enum import Enum
from heapq import heapify, heappop, heappush
from itertools import count, pairwise

from .clock import Clock, SystemClock

__all__ = ["WAIT_BUCKETS", "Acquired", "ConcurrencyLimit", "WaitHistogram", "expected_wait"]

# Seconds waited for a slot, as ``le`` bounds (a +Inf bucket follows): from a turn of the line
# to the longest request timeout worth showing.
WAIT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Acquired(Enum):
    """How a request for a slot ended (compare with ``is``: it has no truth value)."""

    TAKEN = "taken"  # it holds a slot; release() it when done
    FULL = "full"  # every slot and every place in line taken: turned away at once
    SHED = "shed"  # it could not be served within its time: turned away at once
    TIMED_OUT = "timed_out"  # it waited in line until too little time was left

    def __bool__(self) -> bool:
        # Every member but TAKEN is a refusal; `if await limit.acquire(...)` would admit them.
        raise TypeError("compare an Acquired with `is`, not by truth")


def expected_wait(ahead: int, max_in_flight: int, service_time: float) -> float:
    """Seconds a request with ``ahead`` requests to be served before it can expect to wait.

    It gets a slot when ``ahead + 1`` requests in flight have ended; with every slot busy
    they end at ``max_in_flight / service_time`` a second. For exponentially distributed
    service times (each slot ends memorylessly) this is the exact mean; for steadier ones it
    errs long, which only sheds a little early. Later arrivals of a higher priority can still
    push a request back; it gives up in line then (``TIMED_OUT``).
    """
    return (ahead + 1) / max_in_flight * service_time


class WaitHistogram:
    """Seconds waited in line for a slot, in cumulative ``le`` buckets as /metrics shows them."""

    __slots__ = ("_counts", "buckets", "count", "sum")

    def __init__(self, buckets: tuple[float, ...] = WAIT_BUCKETS) -> None:
        if any(not math.isfinite(b) for b in buckets) or any(a >= b for a, b in pairwise(buckets)):
            raise ValueError(f"buckets must be finite and strictly increasing, got {buckets!r}")
        self.buckets = buckets
        self.count = 0
        self.sum = 0.0
        self._counts = [0] * (len(buckets) + 1)

    def observe(self, seconds: float) -> None:
        """Count one wait of ``seconds``."""
        self._counts[bisect_left(self.buckets, seconds)] += 1
        self.count += 1
        self.sum += seconds

    @property
    def counts(self) -> tuple[int, ...]:
        """Waits of at most each bound, then all of them (+Inf): cumulative."""
        total = 0
        cumulative = []
        for n in self._counts:
            total += n
            cumulative.append(total)
        return tuple(cumulative)


@dataclass(order=True, slots=True)
class _Waiter:
    rank: int  # -priority: a min-heap serves the highest priority first
    deadline: float  # +inf for none: last
    arrival: int
    slot: asyncio.Future[None] = field(compare=False)


class ConcurrencyLimit:
    """Slots for one provider: ``max_in_flight`` at once, ``max_waiting`` more in line."""

    __slots__ = (
        "_arrivals",
        "_clock",
        "_line",
        "in_flight",
        "max_in_flight",
        "max_waiting",
        "overflows",
        "shed",
        "timed_out",
        "wait_seconds",
    )

    def __init__(
        self, max_in_flight: int, max_waiting: int = 0, *, clock: Clock | None = None
    ) -> None:
        _check_limit(max_in_flight)
        if max_waiting < 0:
            raise ValueError(f"max_waiting must not be negative, got {max_waiting}")
        self.max_in_flight = max_in_flight
        self.max_waiting = max_waiting
        self.in_flight = 0
        # Requests turned away: the line was full; they could not be served in time; they
        # waited until too little time was left.
        self.overflows = 0
        self.shed = 0
        self.timed_out = 0
        self.wait_seconds = WaitHistogram()
        self._clock = clock or SystemClock()
        self._line: list[_Waiter] = []
        self._arrivals = count()

    @property
    def waiting(self) -> int:
        """Requests in line for a slot."""
        return len(self._line)

    def set_limit(self, max_in_flight: int) -> None:
        """Change the number of slots: new ones go to the line at once; with fewer, requests
        in flight finish (``in_flight`` stays above the limit until enough have)."""
        _check_limit(max_in_flight)
        self.max_in_flight = max_in_flight
        self._hand_over()

    def try_acquire(self) -> bool:
        """Take a slot if one is free and nobody is in line: a new request never jumps it."""
        if self.in_flight < self.max_in_flight and not self._line:
            self.in_flight += 1
            return True
        return False

    async def acquire(
        self,
        max_wait: float,
        *,
        priority: int = 0,
        deadline: float | None = None,
        service_time: float = 0.0,
    ) -> Acquired:
        """Take a slot, waiting in line at most ``max_wait`` seconds less ``service_time``.

        ``priority`` (higher first) and ``deadline`` (a monotonic time, earliest first) place
        the request in line; ``service_time`` is the provider's typical latency. FULL and SHED
        are decided before anything is awaited. Cancelling the wait gives up the place in line.
        """
        if service_time < 0:
            raise ValueError(f"service_time must not be negative, got {service_time}")
        if self.try_acquire():
            return Acquired.TAKEN
        line = self._line
        if len(line) >= self.max_waiting:
            self.overflows += 1
            return Acquired.FULL
        waiter = _Waiter(
            -priority,
            math.inf if deadline is None else deadline,
            next(self._arrivals),
            asyncio.get_running_loop().create_future(),
        )
        ahead = sum(1 for other in line if other < waiter)
        # Requests in flight beyond a lowered limit must end before any slot frees up.
        ahead += max(self.in_flight - self.max_in_flight, 0)
        patience = max_wait - service_time
        if patience <= 0 or expected_wait(ahead, self.max_in_flight, service_time) > patience:
            self.shed += 1
            return Acquired.SHED
        heappush(line, waiter)
        started = self._clock.monotonic()
        try:
            async with asyncio.timeout(patience):
                await waiter.slot
        except BaseException as exc:
            if waiter.slot.done() and not waiter.slot.cancelled():
                # The slot was handed over just as we gave up: pass it on.
                self.release()
            elif waiter in line:  # a handover may have dropped it already
                line.remove(waiter)
                heapify(line)
            if isinstance(exc, TimeoutError):
                self.timed_out += 1
                return Acquired.TIMED_OUT
            raise
        self.wait_seconds.observe(self._clock.monotonic() - started)
        return Acquired.TAKEN

    def release(self) -> None:
        """Give a slot back; the first one in line gets it straight away (unless the limit was
        lowered below the requests in flight: then the slot goes away)."""
        if self.in_flight > 0:
            self.in_flight -= 1
        self._hand_over()

    def _hand_over(self) -> None:
        line = self._line
        while line and self.in_flight < self.max_in_flight:
            slot = heappop(line).slot
            if not slot.done():  # else cancelled, and about to leave
                self.in_flight += 1
                slot.set_result(None)


def _check_limit(max_in_flight: int) -> None:
    if max_in_flight < 1:
        raise ValueError(f"max_in_flight must be at least 1, got {max_in_flight}")
