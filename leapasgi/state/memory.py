"""State kept in this process: the default backend, and a shared backend's fallback when it
is degraded. Every operation is synchronous underneath (no I/O), so under asyncio each runs
to completion: a check-and-reserve is atomic without a lock.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Callable
from itertools import count

from ..clock import Clock, SystemClock
from ..conversations import MemoryResponseStore
from .base import RATE_WINDOW, BreakerEvent, Bucket, Reservation, StateStatus

__all__ = [
    "DEFAULT_CACHE_MAX_BYTES",
    "DEFAULT_CACHE_MAX_ENTRIES",
    "MemoryCacheStore",
    "MemoryLimiter",
    "MemoryLock",
    "MemoryState",
    "MemorySticky",
    "NullBoard",
]

DEFAULT_CACHE_MAX_BYTES = 64 * 1024 * 1024
DEFAULT_CACHE_MAX_ENTRIES = 10_000
# Open reservations past which lapsed ones (never settled, their window gone) are forgotten.
_MAX_OPEN = 10_000
# Sessions remembered for sticky routing; the least recently used go first.
MAX_SESSIONS = 100_000


class _Use:
    """One reservation's share of one window."""

    __slots__ = ("at", "live", "tokens")

    def __init__(self, at: float, tokens: int) -> None:
        self.at = at
        self.tokens = tokens
        self.live = True


class _Window:
    """The last minute of one bucket: each request's time and tokens, oldest first."""

    __slots__ = ("requests", "tokens", "uses")

    def __init__(self) -> None:
        self.uses: deque[_Use] = deque()
        self.requests = 0
        self.tokens = 0

    def prune(self, now: float) -> None:
        uses = self.uses
        start = now - RATE_WINDOW
        while uses and uses[0].at <= start:
            use = uses.popleft()
            if use.live:
                self.requests -= 1
                self.tokens -= use.tokens

    def wait(self, now: float, rpm: int | None, tpm: int | None, tokens: int) -> float:
        """Seconds until one more request of ``tokens`` fits; 0 when it fits now."""
        wait = 0.0
        if rpm is not None and self.requests >= rpm:
            live = [use for use in self.uses if use.live]
            wait = live[self.requests - rpm].at + RATE_WINDOW - now
        if tpm is not None and self.tokens + tokens > tpm:
            if tokens > tpm:
                return RATE_WINDOW  # never fits in one window; the caller reports it
            excess = self.tokens + tokens - tpm
            for use in self.uses:
                if use.live:
                    excess -= use.tokens
                    if excess <= 0:
                        wait = max(wait, use.at + RATE_WINDOW - now)
                        break
        return max(wait, 0.001) if wait else 0.0


class MemoryLimiter:
    """Sliding one-minute windows per bucket, exact within this process. ``divisor`` shares
    each limit between that many replicas (a degraded shared backend's fallback)."""

    def __init__(self, *, clock: Clock | None = None, divisor: int = 1) -> None:
        self._clock = clock or SystemClock()
        self._divisor = max(1, divisor)
        self._windows: dict[str, _Window] = {}
        self._uses: dict[str, list[tuple[_Window, _Use]]] = {}
        self._ids = count(1)
        # Open reservations at which lapsed ones are looked for next (doubling: amortized).
        self._sweep_at = _MAX_OPEN

    def _limit(self, value: int | None) -> int | None:
        if value is None or self._divisor == 1:
            return value
        return max(1, value // self._divisor)

    async def reserve(self, buckets: tuple[Bucket, ...], tokens: int) -> Reservation | float:
        return self.reserve_now(buckets, tokens)

    def reserve_now(self, buckets: tuple[Bucket, ...], tokens: int) -> Reservation | float:
        """``reserve``, synchronously."""
        now = self._clock.monotonic()
        windows = []
        wait = 0.0
        for bucket in buckets:
            window = self._windows.get(bucket.key)
            if window is None:
                window = self._windows[bucket.key] = _Window()
            window.prune(now)
            tpm = self._limit(bucket.tpm)
            wait = max(
                wait,
                window.wait(now, self._limit(bucket.rpm), tpm, tokens if tpm is not None else 0),
            )
            windows.append((window, tpm is not None))
        if wait:
            return wait
        rid = f"m{next(self._ids)}"
        if len(self._uses) >= self._sweep_at:
            self._forget_lapsed(now)
            self._sweep_at = max(_MAX_OPEN, 2 * len(self._uses))
        uses = []
        for window, counts_tokens in windows:
            use = _Use(now, tokens if counts_tokens else 0)
            window.uses.append(use)
            window.requests += 1
            window.tokens += use.tokens
            uses.append((window, use))
        self._uses[rid] = uses
        return Reservation(rid, buckets, tokens)

    def _forget_lapsed(self, now: float) -> None:
        # Every reservation should be settled; one never settled lapses with its window.
        start = now - RATE_WINDOW
        for rid in [rid for rid, uses in self._uses.items() if not uses or uses[0][1].at <= start]:
            del self._uses[rid]

    def settle(self, reservation: Reservation, tokens: int | None) -> None:
        if reservation.settled:
            return
        reservation.settled = True
        uses = self._uses.pop(reservation.id, None)
        if uses is None:
            return  # its window has passed (or it was another limiter's)
        for window, use in uses:
            if not use.live:
                continue
            if tokens is None:
                use.live = False
                window.requests -= 1
                window.tokens -= use.tokens
            elif use.tokens:
                window.tokens += tokens - use.tokens
                use.tokens = tokens


class MemoryCacheStore:
    """Entries in this process, least recently used evicted first past ``max_entries`` or
    ``max_bytes``; each lives ``ttl`` seconds."""

    def __init__(
        self,
        *,
        max_entries: int = DEFAULT_CACHE_MAX_ENTRIES,
        max_bytes: int = DEFAULT_CACHE_MAX_BYTES,
        clock: Clock | None = None,
    ) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._clock = clock or SystemClock()
        self._entries: OrderedDict[str, tuple[bytes, float]] = OrderedDict()
        self._bytes = 0
        self._claims: dict[str, float] = {}
        self.evictions = 0

    async def get(self, key: str) -> bytes | None:
        return self.get_now(key)

    def get_now(self, key: str) -> bytes | None:
        """``get``, synchronously."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        value, expires_at = entry
        if expires_at <= self._clock.monotonic():
            self._drop(key)
            return None
        self._entries.move_to_end(key)
        return value

    async def lookup(self, key: str, *, claim: float | None = None) -> bytes | bool:
        value = self.get_now(key)
        if value is not None:
            return value
        return claim is not None and await self.claim(key, claim)

    async def put(self, key: str, value: bytes, ttl: float, *, release: bool = False) -> None:
        self.put_now(key, value, ttl)
        if release:
            self._claims.pop(key, None)

    def put_now(self, key: str, value: bytes, ttl: float) -> None:
        """``put``, synchronously."""
        if len(value) > self.max_bytes or ttl <= 0:
            return
        if key in self._entries:
            self._drop(key)
        self._entries[key] = (value, self._clock.monotonic() + ttl)
        self._bytes += len(value)
        entries = self._entries
        while len(entries) > self.max_entries or self._bytes > self.max_bytes:
            self._drop(next(iter(entries)))
            self.evictions += 1

    async def delete(self, key: str) -> bool:
        if key not in self._entries:
            return False
        self._drop(key)
        return True

    async def clear(self) -> int:
        count_ = len(self._entries)
        self._entries.clear()
        self._bytes = 0
        return count_

    async def claim(self, key: str, ttl: float) -> bool:
        now = self._clock.monotonic()
        until = self._claims.get(key)
        if until is not None and until > now:
            return False
        self._claims[key] = now + ttl
        return True

    async def claimed(self, key: str) -> bool:
        until = self._claims.get(key)
        return until is not None and until > self._clock.monotonic()

    async def release(self, key: str) -> None:
        self._claims.pop(key, None)

    def usage(self) -> tuple[int, int]:
        return len(self._entries), self._bytes

    def _drop(self, key: str) -> None:
        value, _ = self._entries.pop(key)
        self._bytes -= len(value)


class MemorySticky:
    """Sessions and their providers in this process, the least recently used forgotten first."""

    def __init__(self, *, clock: Clock | None = None, max_sessions: int = MAX_SESSIONS) -> None:
        self._clock = clock or SystemClock()
        self._max = max_sessions
        self._sessions: OrderedDict[str, tuple[str, float]] = OrderedDict()

    async def get(self, session: str) -> str | None:
        return self.get_now(session)

    def get_now(self, session: str) -> str | None:
        """``get``, synchronously."""
        entry = self._sessions.get(session)
        if entry is None:
            return None
        provider, expires_at = entry
        if expires_at <= self._clock.monotonic():
            del self._sessions[session]
            return None
        return provider

    async def set(self, session: str, provider: str, ttl: float) -> None:
        self.set_now(session, provider, ttl)

    def set_now(self, session: str, provider: str, ttl: float) -> None:
        """``set``, synchronously."""
        sessions = self._sessions
        sessions[session] = (provider, self._clock.monotonic() + ttl)
        sessions.move_to_end(session)
        while len(sessions) > self._max:
            sessions.popitem(last=False)


class MemoryLock:
    """One process holds every lock: there is nobody to share with."""

    async def acquire(self, name: str, ttl: float) -> bool:
        return True


class NullBoard:
    """No other replica to tell."""

    def publish(self, event: BreakerEvent) -> None:
        return None


class MemoryState:
    """Everything in this process: nothing to run, nothing shared."""

    kind = "memory"

    def __init__(
        self,
        *,
        clock: Clock | None = None,
        cache_max_entries: int = DEFAULT_CACHE_MAX_ENTRIES,
        cache_max_bytes: int = DEFAULT_CACHE_MAX_BYTES,
    ) -> None:
        self._clock = clock or SystemClock()
        self.limiter = MemoryLimiter(clock=self._clock)
        self.cache = MemoryCacheStore(
            max_entries=cache_max_entries, max_bytes=cache_max_bytes, clock=self._clock
        )
        self.sticky = MemorySticky(clock=self._clock)
        self.lock = MemoryLock()
        self.board = NullBoard()

    def responses(self, *, ttl: float, max_entries: int, max_bytes: int) -> MemoryResponseStore:
        return MemoryResponseStore(
            ttl=ttl, max_entries=max_entries, max_bytes=max_bytes, clock=self._clock
        )

    def status(self) -> StateStatus:
        return StateStatus(backend=self.kind, shared=False)

    async def start(self, on_event: Callable[[BreakerEvent], None]) -> None:
        return None

    async def aclose(self) -> None:
        return None
