"""Rate limits in Redis: a sliding window per bucket, exact across replicas.

One script checks and reserves every bucket of a request at once (``_lua.LIMIT_RESERVE``).
Settlements wait in this process and ride along with the next reserve, applied first in the
same script; a background task sends those left when no reserve comes soon. While Redis is
away they are kept (the oldest dropped past a bound: an unsettled reservation still ends with
its window) and sent once it is back.
"""

from __future__ import annotations

import asyncio
import os
from collections import deque
from collections.abc import Callable, Coroutine
from typing import Any

from . import _lua
from ._redis_link import DOWN, Link, ms
from ._resp import Script
from .base import Bucket, Reservation
from .memory import MemoryLimiter

__all__ = [
    "MAX_PENDING_SETTLES",
    "SETTLE_BATCH",
    "SETTLE_CARRIED",
    "SETTLE_DELAY",
    "RedisLimiter",
]

# Settlements sent in one script call, carried by one reserve, and kept while Redis is away.
SETTLE_BATCH = 256
SETTLE_CARRIED = 16
MAX_PENDING_SETTLES = 10_000
# Seconds a settlement waits for a reserve to carry it before it is sent on its own.
SETTLE_DELAY = 0.02

_RESERVE = Script(_lua.LIMIT_RESERVE)
_SETTLE = Script(_lua.LIMIT_SETTLE)

# (reservation id, its buckets' keys, tokens used or -1 to release)
_Settlement = tuple[str, list[str], int]


class RedisLimiter:
    """Sliding windows per bucket in Redis; the fallback's while degraded."""

    def __init__(
        self,
        link: Link,
        prefix: str,
        *,
        window: float,
        fallback: MemoryLimiter,
        spawn: Callable[[Coroutine[Any, Any, None]], asyncio.Task[None]],
    ) -> None:
        self._link = link
        self._prefix = f"{prefix}:rl:"
        self._window_ms = ms(window)
        self._fallback = fallback
        self._spawn = spawn
        self._pending: deque[_Settlement] = deque(maxlen=MAX_PENDING_SETTLES)
        self._flusher: asyncio.Task[None] | None = None

    async def reserve(self, buckets: tuple[Bucket, ...], tokens: int) -> Reservation | float:
        if not self._link.up:
            return self._fallback.reserve_now(buckets, tokens)
        rid = os.urandom(8).hex()
        keys = self._keys(buckets)
        if not keys:
            return Reservation(rid, buckets, tokens)
        carried = self._take(SETTLE_CARRIED)
        batch_keys, words = _settle_words(carried)
        words += (str(self._window_ms), rid, str(tokens))
        for bucket in buckets:
            if bucket.rpm is not None or bucket.tpm is not None:
                words.append("-1" if bucket.rpm is None else str(bucket.rpm))
                words.append("-1" if bucket.tpm is None else str(bucket.tpm))
        batch_keys += keys
        try:
            wait = await self._link.run(_RESERVE, batch_keys, (" ".join(words),))
        except asyncio.CancelledError:
            # The script may have run: give back what it took, send what it carried again.
            self._pending.extendleft(reversed(carried))
            self._queue((rid, keys, -1))
            raise
        if wait is DOWN:
            self._pending.extendleft(reversed(carried))
            self._queue((rid, keys, -1))
            return self._fallback.reserve_now(buckets, tokens)
        if wait:
            return max(int(wait) / 1000, 0.001)
        return Reservation(rid, buckets, tokens)

    def settle(self, reservation: Reservation, tokens: int | None) -> None:
        if reservation.settled:
            return
        if reservation.id.startswith("m"):  # made by the fallback while degraded
            self._fallback.settle(reservation, tokens)
            return
        reservation.settled = True
        if tokens is not None and not any(b.tpm is not None for b in reservation.buckets):
            return  # no bucket counts tokens: nothing to correct
        keys = self._keys(reservation.buckets)
        if keys:
            self._queue((reservation.id, keys, -1 if tokens is None else tokens))

    async def flush(self) -> None:
        """Send the settlements made so far now, and wait until they reached Redis (or it
        failed)."""
        await self._send()
        while (flusher := self._flusher) is not None:
            await asyncio.wait({flusher})

    def kick(self, delay: float = 0.0) -> None:
        """Have pending settlements sent, unless that is under way or Redis is away."""
        if self._pending and self._flusher is None and self._link.up:
            self._flusher = self._spawn(self._flush(delay))

    def pending(self) -> int:
        return len(self._pending)

    def _keys(self, buckets: tuple[Bucket, ...]) -> list[str]:
        keys: list[str] = []
        for bucket in buckets:
            if bucket.rpm is not None or bucket.tpm is not None:
                base = self._prefix + bucket.key
                keys += (base + ":z", base + ":h")
        return keys

    def _queue(self, settlement: _Settlement) -> None:
        self._pending.append(settlement)
        self.kick(SETTLE_DELAY)

    def _take(self, most: int) -> list[_Settlement]:
        pending = self._pending
        return [pending.popleft() for _ in range(min(len(pending), most))]

    async def _flush(self, delay: float) -> None:
        try:
            if delay:
                await asyncio.sleep(delay)
            await self._send()
        finally:
            self._flusher = None

    async def _send(self) -> None:
        while self._pending and self._link.up:
            batch = self._take(SETTLE_BATCH)
            keys, words = _settle_words(batch)
            done: object = DOWN
            try:
                done = await self._link.run(_SETTLE, keys, (" ".join(words),))
            finally:
                if done is DOWN:  # failed or cancelled: sent again once Redis is back
                    self._pending.extendleft(reversed(batch))
            if done is DOWN:
                return


def _settle_words(batch: list[_Settlement]) -> tuple[list[str], list[str]]:
    """The keys and words of ``batch`` for the settle part of the limiter's scripts."""
    keys: list[str] = []
    words = [str(len(batch))]
    for rid, bucket_keys, tokens in batch:
        keys += bucket_keys
        words += (rid, str(tokens), str(len(bucket_keys) // 2))
    return keys, words
