"""The provider registry: providers by name, their status, breaker and live metrics.

Every method is synchronous and does no I/O, so under asyncio each runs to completion without
interleaving: many tasks can register, change status and record outcomes at once, and reading
a snapshot never waits for anything.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from enum import StrEnum

from .adaptive import AdaptiveLimit
from .clock import Clock, SystemClock
from .exceptions import (
    ConfigurationError,
    ConflictError,
    InvalidRequestError,
    LeapError,
    LeapTimeoutError,
    NotFoundError,
    RateLimitError,
)
from .features import Feature
from .health import BreakerPolicy, BreakerState, CircuitBreaker, Health
from .limits import ConcurrencyLimit
from .native import WireProtocol
from .providers.base import Capabilities, NativeProvider, Provider
from .redact import public_url
from .retry import DEFAULT_MAX_RETRIES
from .state.base import Bucket, RateLimiter, Reservation
from .stats import ProviderStats, Quantiles

__all__ = [
    "Lease",
    "ProviderEntry",
    "ProviderSnapshot",
    "ProviderStatus",
    "Registry",
    "RegistryStats",
    "RouteSettings",
    "Transition",
]

# Transitions kept per provider; older ones are dropped.
MAX_TRANSITIONS = 100


class ProviderStatus(StrEnum):
    """Whether a provider takes traffic."""

    ACTIVE = "active"
    INACTIVE = "inactive"
    UNHEALTHY = "unhealthy"
    MAINTENANCE = "maintenance"


# Statuses an operator can set; UNHEALTHY only ever comes from the breaker or health checks.
ADMIN_STATUSES = frozenset(
    {ProviderStatus.ACTIVE, ProviderStatus.INACTIVE, ProviderStatus.MAINTENANCE}
)


@dataclass(frozen=True, slots=True)
class Transition:
    """A status change: when (wall clock), to what, and why."""

    at: float
    status: ProviderStatus
    cause: str


@dataclass(frozen=True, slots=True)
class RouteSettings:
    """How the manager routes to one provider."""

    priority: int = 0
    weight: float = 1.0
    max_retries: int = DEFAULT_MAX_RETRIES
    models: tuple[str, ...] = ()
    kind: str = "openai_compatible"
    preset: str | None = None
    base_url: str | None = None
    # Requests at once (None: no limit), and how many more may wait for a slot.
    max_in_flight: int | None = None
    max_waiting: int = 0
    # The limit adapts to the provider between min_in_flight and max_in_flight.
    adaptive: bool = False
    min_in_flight: int = 1
    # Requests and tokens per minute (None: no limit), and per model: (model, rpm, tpm).
    rpm: int | None = None
    tpm: int | None = None
    model_limits: tuple[tuple[str, int | None, int | None], ...] = ()


def _overloaded(error: LeapError) -> bool:
    """Whether a failure says the provider is overloaded (429, 503, 529, a timeout): what
    an adaptive limit backs off from. Other failures say nothing about its queue."""
    status = error.upstream_status
    return isinstance(error, RateLimitError | LeapTimeoutError) or status in (503, 529)


def _native(provider: Provider, capabilities: Capabilities) -> NativeProvider | None:
    """The provider as a NativeProvider when it declares protocols besides chat; one that
    declares them without the methods is refused at registration, not at its first request."""
    if not capabilities.protocols - {WireProtocol.CHAT_COMPLETIONS}:
        return None
    if not isinstance(provider, NativeProvider):
        spoken = ", ".join(sorted(capabilities.protocols))
        raise ConfigurationError(
            f"Provider {provider.name!r} declares the protocols {spoken} but has no "
            "send() and open() to serve them"
        )
    return provider


class ProviderEntry:
    """One registered provider with its settings, status history, breaker and live stats."""

    __slots__ = (
        "_admin",
        "_buckets",
        "_clock",
        "_effective",
        "_kept",
        "_on_idle",
        "adaptive",
        "breaker",
        "capabilities",
        "discovered_models",
        "held_for_rate_limit",
        "limit",
        "native",
        "observer",
        "provider",
        "rated",
        "sampled_at",
        "settings",
        "stats",
        "transitions",
    )

    def __init__(
        self, provider: Provider, settings: RouteSettings, *, policy: BreakerPolicy, clock: Clock
    ) -> None:
        self.provider = provider
        self.settings = settings
        # What the provider declared about itself when it was registered.
        self.capabilities = capabilities = provider.capabilities
        self.native = _native(provider, capabilities)
        self.breaker = CircuitBreaker(policy, clock=clock)
        self.stats = ProviderStats()
        self.discovered_models: tuple[str, ...] | None = None
        self.transitions: deque[Transition] = deque(maxlen=MAX_TRANSITIONS)
        self.limit = (
            ConcurrencyLimit(settings.max_in_flight, settings.max_waiting, clock=clock)
            if settings.max_in_flight is not None
            else None
        )
        # The adaptive limiter that sets ``limit`` (None: a fixed limit, or none).
        self.adaptive = (
            AdaptiveLimit(
                floor=min(settings.min_in_flight, settings.max_in_flight),
                ceiling=settings.max_in_flight,
                initial=settings.min_in_flight,
                clock=clock,
            )
            if settings.adaptive and settings.max_in_flight is not None
            else None
        )
        # Monotonic time of the last outcome with a latency sample; least-latency probes a
        # provider that has gone without one for long.
        self.sampled_at: float | None = None
        # Whether the Retry-After hold on the breaker came with a 429 (else a 503).
        self.held_for_rate_limit = False
        self._clock = clock
        self._admin = ProviderStatus.ACTIVE
        self._effective = ProviderStatus.ACTIVE
        # Leases handed to a stream's consumer, which might never close it; see reclaim().
        self._kept: set[Lease] = set()
        self._on_idle: Callable[[], None] | None = None
        # Told of every ejection, hold and recovery here (a shared state backend's board).
        self.observer: Callable[[ProviderEntry], None] | None = None
        # Whether requests here are rate limited (RPM/TPM), and the buckets per model.
        self.rated = bool(settings.rpm or settings.tpm or settings.model_limits)
        self._buckets: dict[str, tuple[Bucket, ...]] = {}
        self._note(ProviderStatus.ACTIVE, "registered")

    @property
    def name(self) -> str:
        return self.provider.name

    @property
    def status(self) -> ProviderStatus:
        """The admin status, or UNHEALTHY while an active provider is ejected."""
        if self._admin is not ProviderStatus.ACTIVE:
            return self._admin
        if self.breaker.state is not BreakerState.CLOSED:
            return ProviderStatus.UNHEALTHY
        return ProviderStatus.ACTIVE

    @property
    def models(self) -> tuple[str, ...]:
        """Configured models, else the ones discovered from ``GET /models``."""
        return self.settings.models or self.discovered_models or ()

    def lease(self, *, expires_at: float) -> Lease:
        """Start an attempt here (with a ``limit``, the caller holds a slot already); the
        lease ends it, once, with its outcome. ``expires_at`` is the request's deadline."""
        self.stats.begin()
        return Lease(self, expires_at)

    def end(self, lease: Lease) -> None:
        """``lease``'s attempt ended, whatever its outcome (the lease records which); its slot
        is given back."""
        self.stats.end()
        if self.limit is not None:
            self.limit.release()
        if self._kept:
            self._kept.discard(lease)
        if self._on_idle is not None and self.stats.in_flight == 0:
            on_idle, self._on_idle = self._on_idle, None
            on_idle()

    def keep(self, lease: Lease) -> None:
        """``lease`` now belongs to a stream's consumer, beyond the dispatcher's reach: if it
        is never closed, ``reclaim`` ends it at its deadline."""
        self._kept.add(lease)

    def reclaim(self, now: float) -> int:
        """End, as abandoned, every kept lease whose deadline has passed (a stream dropped
        without being closed); returns how many. Slots never depend on the garbage collector."""
        expired = [lease for lease in self._kept if lease.expires_at <= now]
        for lease in expired:
            lease.abandoned()
        return len(expired)

    def buckets(self, model: str) -> tuple[Bucket, ...]:
        """The rate limits a request for ``model`` (the provider's name for it) counts against."""
        buckets = self._buckets.get(model)
        if buckets is None:
            settings = self.settings
            found = []
            if settings.rpm or settings.tpm:
                found.append(Bucket(f"p:{self.name}", settings.rpm, settings.tpm))
            for name, rpm, tpm in settings.model_limits:
                if name == model:
                    found.append(Bucket(f"m:{self.name}:{name}", rpm, tpm))
            buckets = self._buckets[model] = tuple(found)
        return buckets

    def when_idle(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once no request is in flight here (now, if none is)."""
        if self.stats.in_flight == 0:
            callback()
        else:
            self._on_idle = callback

    def succeeded(
        self,
        latency: float,
        *,
        ttft: float | None = None,
        prompt_tokens: int = 0,
        completion_tokens: int = 0,
    ) -> None:
        """Record a success: it resets the failure count and closes a half-open breaker."""
        now = self._clock.monotonic()
        self.stats.record_success(
            latency,
            now=now,
            ttft=ttft,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
        )
        self.sampled_at = now
        self.breaker.record_success()
        self.refresh("a request succeeded")
        if self.adaptive is not None:
            # A stream's time to first token is the cleaner signal of the provider's queue.
            sample = ttft if ttft is not None else latency
            self._adapt(sample, now - latency, overloaded=False)

    def failed(self, error: LeapError, latency: float) -> None:
        """Record a provider failure; enough of them in a row eject the provider, and its
        Retry-After hint holds requests away until the hint ends. A 429 with a hint only
        holds: it is a quota answer, not ill health (Envoy's consecutive_5xx skips it too)."""
        kind = type(error).__name__
        now = self._clock.monotonic()
        self.stats.record_failure(kind, latency, now=now, message=error.message[:200])
        self.sampled_at = now
        if self.adaptive is not None and _overloaded(error):
            self._adapt(latency, now - latency, overloaded=True)
        if error.retry_after:
            self.breaker.hold(error.retry_after)
            self.held_for_rate_limit = isinstance(error, RateLimitError)
            if self.observer is not None:
                self.observer(self)
            if self.held_for_rate_limit:
                self.breaker.release_probe()
                return
        if self.breaker.record_failure():
            count = self.breaker.consecutive_failures or self.stats.consecutive_errors
            cause = f"ejected after {count} consecutive failures (last: {kind})"
            if self._admin is ProviderStatus.ACTIVE:
                # Every ejection is recorded, a repeated one (a failed probe) included.
                self._note(self.status, cause)
            if self.observer is not None:
                self.observer(self)

    def _adapt(self, latency: float, started: float, *, overloaded: bool) -> None:
        """Feed the adaptive limiter one outcome; a new limit applies to the slots at once."""
        assert self.adaptive is not None
        assert self.limit is not None
        limit = self.adaptive.on_sample(
            latency, in_flight=self.stats.in_flight, overloaded=overloaded, started=started
        )
        if limit is not None:
            self.limit.set_limit(limit)

    def refused(self, error: LeapError) -> None:
        """Record an error that is the caller's, not the provider's (400, 404, 413, 422...)."""
        self.stats.record_client_error(type(error).__name__)
        self.breaker.release_probe()

    def abandoned(self) -> None:
        """A request ended without a verdict (the caller went away)."""
        self.breaker.release_probe()

    def checked(self, ok: bool, cause: str) -> None:
        """Record an active health check's result."""
        self.breaker.record_check(ok)
        self.refresh(cause)

    def set_admin(self, status: ProviderStatus, cause: str) -> None:
        self._admin = status
        self.refresh(cause)

    def refresh(self, cause: str) -> None:
        """Record a transition if the effective status changed (and tell the observer)."""
        status = self.status
        if status is not self._effective:
            self._note(status, cause)
            if self.observer is not None:
                self.observer(self)

    def adopt(
        self,
        *,
        open_until: float | None,
        hold_until: float | None,
        rate_limited: bool,
        times_ejected: int,
        at: float,
    ) -> None:
        """Apply another replica's ejection, hold or recovery (monotonic times here)."""
        self.breaker.adopt(
            open_until=open_until, hold_until=hold_until, times_ejected=times_ejected, at=at
        )
        if hold_until is not None:
            self.held_for_rate_limit = rate_limited
        status = self.status
        if status is not self._effective:
            self._note(status, "seen by another replica")

    def _note(self, status: ProviderStatus, cause: str) -> None:
        self._effective = status
        self.transitions.append(Transition(self._clock.time(), status, cause))


class Lease:
    """One attempt's hold on a provider: its place in the in-flight count (and its slot, when
    the provider has a limit) from the start of the attempt until its outcome is recorded.
    Whatever ends it first records the outcome; later calls do nothing."""

    __slots__ = ("entry", "expires_at", "live", "reserved")

    def __init__(self, entry: ProviderEntry, expires_at: float) -> None:
        self.entry = entry
        self.expires_at = expires_at
        self.live = True
        # The rate limits this attempt holds, settled when it ends.
        self.reserved: tuple[RateLimiter, Reservation] | None = None

    def succeeded(
        self,
        latency: float,
        *,
        ttft: float | None = None,
        prompt_tokens: int = 0,
        completion_tokens: int = 0,
    ) -> None:
        """The attempt served the request."""
        if self._end():
            if self.reserved is not None:
                limiter, reservation = self.reserved
                used = prompt_tokens + completion_tokens
                limiter.settle(reservation, used or reservation.tokens)
            self.entry.succeeded(
                latency, ttft=ttft, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens
            )

    def failed(self, error: LeapError, latency: float) -> None:
        """The attempt failed through the provider's fault."""
        if self._end():
            self._give_back()
            self.entry.failed(error, latency)

    def refused(self, error: LeapError) -> None:
        """The attempt failed through the caller's fault (400, 404...)."""
        if self._end():
            self._give_back()
            self.entry.refused(error)

    def abandoned(self) -> None:
        """The attempt ended without a verdict (the caller went away, or dropped a stream)."""
        if self._end():
            self._give_back()
            self.entry.abandoned()

    def _end(self) -> bool:
        if not self.live:
            return False
        self.live = False
        self.entry.end(self)
        return True

    def _give_back(self) -> None:
        if self.reserved is not None:
            limiter, reservation = self.reserved
            limiter.settle(reservation, None)

    def __repr__(self) -> str:
        return f"Lease({self.entry.name!r}, live={self.live})"


@dataclass(frozen=True, slots=True)
class ProviderSnapshot:
    """A point-in-time view of one provider, safe to return to admins: no key, no secrets."""

    name: str
    kind: str
    preset: str | None
    base_url: str | None
    status: ProviderStatus
    health: Health
    breaker: BreakerState
    times_ejected: int
    ejected_until: float | None
    features: tuple[str, ...]
    models: tuple[str, ...]
    priority: int
    weight: float
    last_check_at: float | None
    last_check_ok: bool | None
    requests: int
    successes: int
    errors: dict[str, int]
    consecutive_errors: int
    in_flight: int
    latency_ewma: float | None
    latency: Quantiles | None
    ttft: Quantiles | None
    prompt_tokens: int
    completion_tokens: int
    success_rate: float | None
    last_error: str | None
    transitions: tuple[Transition, ...] = field(default=())
    # The APIs it speaks natively (chat completions, responses, messages, embeddings).
    protocols: tuple[str, ...] = ()
    # Wall-clock end of a Retry-After hold; None when none is on.
    held_until: float | None = None
    # The concurrency limit (None: none), requests waiting for a slot, and those turned away.
    max_in_flight: int | None = None
    max_waiting: int = 0
    # The limit adapts to the provider between min_in_flight and max_in_flight.
    adaptive: bool = False
    min_in_flight: int = 1
    # Requests and tokens per minute (None: no limit), and per model: (model, rpm, tpm).
    rpm: int | None = None
    tpm: int | None = None
    model_limits: tuple[tuple[str, int | None, int | None], ...] = ()
    waiting: int = 0
    overflows: int = 0
    # The limit now (an adaptive one moves), requests shed (they could not be answered in
    # time) or given up in line, and the waits in line: cumulative counts per WAIT_BUCKETS
    # bound and +Inf, and their sum.
    limit: int | None = None
    shed: int = 0
    timed_out: int = 0
    wait_counts: tuple[int, ...] = ()
    wait_sum: float = 0.0


@dataclass(frozen=True, slots=True)
class RegistryStats:
    """Totals over every provider."""

    total: int
    active: int
    healthy: int
    in_flight: int
    requests: int
    successes: int
    errors: int
    success_rate: float | None


class Registry:
    """Providers by name: register, replace, remove, look up, change status, snapshot."""

    def __init__(self, *, clock: Clock | None = None, policy: BreakerPolicy | None = None) -> None:
        self._clock = clock or SystemClock()
        self._policy = policy or BreakerPolicy()
        self._entries: dict[str, ProviderEntry] = {}
        # Bumped whenever the set of providers or their model lists change; caches key on it.
        self.version = 0
        # Told of every provider's ejections, holds and recoveries (see ``observe``).
        self.observer: Callable[[ProviderEntry], None] | None = None

    def observe(self, observer: Callable[[ProviderEntry], None] | None) -> None:
        """Tell ``observer`` of every ejection, hold and recovery, now and for providers
        registered later."""
        self.observer = observer
        for entry in self._entries.values():
            entry.observer = observer

    @property
    def clock(self) -> Clock:
        return self._clock

    def touch(self) -> None:
        """Note a change that routing caches must see (e.g. discovered model lists)."""
        self.version += 1

    def register(
        self, provider: Provider, settings: RouteSettings | None = None, *, replace: bool = False
    ) -> ProviderEntry:
        """Add ``provider``; an existing name is an error unless ``replace`` is true."""
        name = provider.name
        if name in self._entries and not replace:
            raise ConflictError(
                f"A provider named {name!r} is already registered",
                code="duplicate_provider",
                retryable=False,
            )
        entry = ProviderEntry(
            provider, settings or RouteSettings(), policy=self._policy, clock=self._clock
        )
        entry.observer = self.observer
        self._entries[name] = entry
        self.version += 1
        return entry

    def replace(self, provider: Provider, settings: RouteSettings | None = None) -> ProviderEntry:
        """Register ``provider`` in place of the one with its name; returns the new entry."""
        return self.register(provider, settings, replace=True)

    def remove(self, name: str) -> ProviderEntry:
        """Take a provider out of the registry; the caller closes it."""
        entry = self.get(name)
        del self._entries[name]
        self.version += 1
        return entry

    def get(self, name: str) -> ProviderEntry:
        """The entry called ``name``; NotFoundError (404) otherwise."""
        try:
            return self._entries[name]
        except KeyError:
            raise NotFoundError(f"No provider named {name!r}", param="name") from None

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[ProviderEntry]:
        return iter(list(self._entries.values()))

    def __len__(self) -> int:
        return len(self._entries)

    def names(self) -> list[str]:
        """Registered names, in registration order."""
        return list(self._entries)

    def set_status(self, name: str, status: ProviderStatus | str, *, cause: str) -> None:
        """Set the admin status: active, inactive or maintenance (drain)."""
        if status not in ADMIN_STATUSES:
            raise InvalidRequestError(
                "Status must be active, inactive or maintenance; unhealthy comes from health",
                param="status",
                code="invalid_status",
            )
        self.get(name).set_admin(ProviderStatus(status), cause)

    def drained(self, name: str) -> bool:
        """True when a provider in maintenance has no request left in flight."""
        entry = self.get(name)
        return entry.status is ProviderStatus.MAINTENANCE and entry.stats.in_flight == 0

    def snapshot(self, name: str) -> ProviderSnapshot:
        """A point-in-time view of one provider."""
        return _snapshot(self.get(name), self._clock.monotonic(), self._clock.time())

    def snapshots(self) -> list[ProviderSnapshot]:
        """Views of every provider, in registration order."""
        now, wall = self._clock.monotonic(), self._clock.time()
        return [_snapshot(entry, now, wall) for entry in list(self._entries.values())]

    def stats(self) -> RegistryStats:
        """Totals: providers, active, healthy, in flight, success rate."""
        entries = list(self._entries.values())
        successes = sum(e.stats.successes for e in entries)
        errors = sum(e.stats.error_count for e in entries)
        finished = successes + sum(e.stats.failures for e in entries)
        return RegistryStats(
            total=len(entries),
            active=sum(1 for e in entries if e.status is ProviderStatus.ACTIVE),
            healthy=sum(1 for e in entries if e.breaker.health is not Health.UNHEALTHY),
            in_flight=sum(e.stats.in_flight for e in entries),
            requests=sum(e.stats.requests for e in entries),
            successes=successes,
            errors=errors,
            success_rate=successes / finished if finished else None,
        )


def _snapshot(entry: ProviderEntry, now: float, wall: float) -> ProviderSnapshot:
    stats = entry.stats
    breaker = entry.breaker
    limit = entry.limit

    def wall_time(monotonic: float | None) -> float | None:
        # Breaker times are monotonic; snapshots show wall-clock times, like transitions.
        return None if monotonic is None else monotonic - now + wall

    return ProviderSnapshot(
        name=entry.name,
        kind=entry.settings.kind,
        preset=entry.settings.preset,
        base_url=public_url(entry.settings.base_url) if entry.settings.base_url else None,
        status=entry.status,
        health=breaker.health,
        breaker=breaker.state,
        times_ejected=breaker.times_ejected,
        ejected_until=wall_time(breaker.open_until)
        if breaker.state is not BreakerState.CLOSED
        else None,
        features=tuple(f.value for f in Feature if entry.capabilities.supports(f)),
        protocols=tuple(p.value for p in WireProtocol if p in entry.capabilities.protocols),
        models=entry.models,
        priority=entry.settings.priority,
        weight=entry.settings.weight,
        last_check_at=wall_time(breaker.last_check_at),
        last_check_ok=breaker.last_check_ok,
        requests=stats.requests,
        successes=stats.successes,
        errors=dict(stats.errors),
        consecutive_errors=stats.consecutive_errors,
        in_flight=stats.in_flight,
        latency_ewma=stats.ewma.value,
        latency=stats.latency.quantiles(),
        ttft=stats.ttft.quantiles(),
        prompt_tokens=stats.prompt_tokens,
        completion_tokens=stats.completion_tokens,
        success_rate=stats.success_rate,
        last_error=stats.last_error,
        transitions=tuple(entry.transitions),
        held_until=wall_time(breaker.held_until),
        max_in_flight=entry.settings.max_in_flight,
        max_waiting=entry.settings.max_waiting if limit is not None else 0,
        adaptive=entry.adaptive is not None,
        min_in_flight=entry.settings.min_in_flight,
        waiting=limit.waiting if limit is not None else 0,
        overflows=limit.overflows if limit is not None else 0,
        limit=limit.max_in_flight if limit is not None else None,
        shed=limit.shed if limit is not None else 0,
        timed_out=limit.timed_out if limit is not None else 0,
        wait_counts=limit.wait_seconds.counts if limit is not None else (),
        wait_sum=limit.wait_seconds.sum if limit is not None else 0.0,
    )
