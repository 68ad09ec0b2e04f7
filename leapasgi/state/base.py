"""What the gateway keeps beyond one request, behind one interface: a ``StateBackend``.

    StateBackend
    ├── limiter: RateLimiter      RPM and TPM per provider and per model: check and reserve at
    │                             once, settle (reconcile or release) when the attempt ends
    ├── cache: CacheStore         response cache entries, and claims that coalesce misses
    ├── sticky: StickyTable       session -> the provider that served it
    ├── lock: ClusterLock         one holder at a time (the health prober)
    ├── board: HealthBoard        breaker ejections and Retry-After holds, seen by every replica
    └── responses(...)            the Responses API's conversation store

``MemoryState`` (``state/memory.py``) keeps it in this process: the default, nothing to run.
``RedisState`` (``state/redis.py``) shares it between replicas and processes, and falls back to
its own memory when Redis is slow or gone (degraded: limits become ``limit / replicas``).

The hot path never waits on a backend for anything switched off: no limits configured, no
limiter call; no cache, no lookup; no sticky routing, no session read.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from ..conversations import ResponseStore

__all__ = [
    "BreakerEvent",
    "Bucket",
    "CacheStore",
    "ClusterLock",
    "HealthBoard",
    "RateLimiter",
    "Reservation",
    "StateBackend",
    "StateStatus",
    "StickyTable",
]

# The window RPM and TPM are counted over, in seconds.
RATE_WINDOW = 60.0


@dataclass(frozen=True, slots=True)
class Bucket:
    """One rate limit: requests and tokens per minute under one name (``None``: no limit)."""

    key: str  # "p:<provider>" or "m:<provider>:<model>"
    rpm: int | None = None
    tpm: int | None = None


@dataclass(slots=True)
class Reservation:
    """Requests and tokens taken from some buckets, until settled (or its lease, the
    window, runs out)."""

    id: str
    buckets: tuple[Bucket, ...]
    tokens: int
    settled: bool = False


class RateLimiter(Protocol):
    """Exact, atomic rate limits: every bucket admits the request, or none is charged."""

    async def reserve(self, buckets: tuple[Bucket, ...], tokens: int) -> Reservation | float:
        """Take one request and ``tokens`` from every bucket; when one has no room, the
        seconds until it may have (nothing is taken then)."""
        ...

    def settle(self, reservation: Reservation, tokens: int | None) -> None:
        """End ``reservation``: ``tokens`` used in fact (the estimate is corrected), or None
        to give everything back (the attempt failed or was cancelled). Never waits: a shared
        backend does it in the background. A second call does nothing."""
        ...


class CacheStore(Protocol):
    """Cache entries by key (bytes in, bytes out), and claims that make one caller of many
    the one that fills an entry."""

    async def get(self, key: str) -> bytes | None: ...

    async def lookup(self, key: str, *, claim: float | None = None) -> bytes | bool:
        """The entry under ``key``; without one, with ``claim`` (seconds), whether this
        caller now fills it (True) or another does (False): a get and a claim at once."""
        ...

    async def put(self, key: str, value: bytes, ttl: float, *, release: bool = False) -> None:
        """Keep ``value`` for ``ttl`` seconds (within the store's bounds); with ``release``,
        give up this caller's claim on ``key`` too."""
        ...

    async def delete(self, key: str) -> bool: ...

    async def clear(self) -> int:
        """Forget every entry; returns how many there were (as far as known)."""
        ...

    async def claim(self, key: str, ttl: float) -> bool:
        """Become the one filling ``key`` (True), unless another caller is (False); a claim
        lapses after ``ttl`` seconds if never released."""
        ...

    async def claimed(self, key: str) -> bool:
        """Whether someone is filling ``key`` now."""
        ...

    async def release(self, key: str) -> None:
        """Give up the claim on ``key`` (filled or failed)."""
        ...

    def usage(self) -> tuple[int, int]:
        """(entries, bytes) kept in this process; a shared store reports its local part."""
        ...


class StickyTable(Protocol):
    """Which provider served a session last."""

    async def get(self, session: str) -> str | None: ...

    async def set(self, session: str, provider: str, ttl: float) -> None: ...


class ClusterLock(Protocol):
    """A named lock with a lease, held by one replica at a time."""

    async def acquire(self, name: str, ttl: float) -> bool:
        """Take or renew the lock for ``ttl`` seconds; False while another replica holds it."""
        ...


@dataclass(frozen=True, slots=True)
class BreakerEvent:
    """A provider's ejection or hold (or their end) as other replicas apply it. Times are wall
    clock (``time.time()``), comparable between hosts; ``at`` orders events per provider."""

    provider: str
    at: float
    open_until: float | None = None  # ejected until then; None: not ejected
    hold_until: float | None = None  # Retry-After hold until then; None: no hold
    rate_limited: bool = False  # the hold came with a 429
    times_ejected: int = 0
    origin: str = ""  # the replica that published it


class HealthBoard(Protocol):
    """Breaker events shared between replicas."""

    def publish(self, event: BreakerEvent) -> None:
        """Tell the other replicas (never waits)."""
        ...


@dataclass(frozen=True, slots=True)
class StateStatus:
    """How the state backend is doing, for readiness and metrics."""

    backend: str  # "memory" or "redis"
    shared: bool  # state is shared with other replicas now
    degraded: bool = False  # a shared backend running on local state
    since: float | None = None  # wall time degraded mode began
    detail: str | None = None  # why (never a URL or a credential)
    replicas: int = 1
    errors: int = 0  # operations that failed or timed out
    details: dict[str, int] = field(default_factory=dict)


class StateBackend(Protocol):
    """Everything the gateway keeps beyond one request."""

    @property
    def kind(self) -> str: ...

    @property
    def limiter(self) -> RateLimiter: ...

    @property
    def cache(self) -> CacheStore: ...

    @property
    def sticky(self) -> StickyTable: ...

    @property
    def lock(self) -> ClusterLock: ...

    @property
    def board(self) -> HealthBoard: ...

    def responses(self, *, ttl: float, max_entries: int, max_bytes: int) -> ResponseStore:
        """The Responses API's conversation store, kept here."""
        ...

    def status(self) -> StateStatus: ...

    async def start(self, on_event: Callable[[BreakerEvent], None]) -> None:
        """Connect and start syncing; ``on_event`` applies another replica's breaker event.
        Never raises for an unreachable backend: it starts degraded and says so."""
        ...

    async def aclose(self) -> None: ...
