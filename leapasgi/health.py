"""Passive health: consecutive-failure ejection with a circuit breaker (Envoy outlier detection).

A breaker is CLOSED (traffic flows), OPEN (ejected until ``open_until``) or HALF_OPEN (one probe
request is out; its outcome closes the breaker or ejects it again for longer). Ejection times
grow as ``base x times_ejected`` up to a cap, and the multiplier shrinks again while healthy.

Apart from ejection, an upstream's Retry-After hint holds requests away until it ends (capped
like an ejection): the upstream said when to come back, so no request goes there before.

Pure code: no I/O; time comes only from the injected clock.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

from .clock import Clock

__all__ = [
    "DEFAULT_BASE_EJECTION",
    "DEFAULT_FAILURE_THRESHOLD",
    "DEFAULT_MAX_EJECTION",
    "BreakerPolicy",
    "BreakerState",
    "CircuitBreaker",
    "Health",
    "least_recently_ejected",
]

DEFAULT_FAILURE_THRESHOLD = 5
DEFAULT_BASE_EJECTION = 30.0
DEFAULT_MAX_EJECTION = 300.0


class Health(StrEnum):
    """Health as reported: unknown until the first outcome or check."""

    HEALTHY = "healthy"
    UNHEALTHY = "unhealthy"
    UNKNOWN = "unknown"


class BreakerState(StrEnum):
    """Circuit breaker state."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(frozen=True, slots=True)
class BreakerPolicy:
    """When to eject a provider and for how long (Envoy outlier-detection defaults)."""

    failure_threshold: int = DEFAULT_FAILURE_THRESHOLD
    base_ejection: float = DEFAULT_BASE_EJECTION
    max_ejection: float = DEFAULT_MAX_EJECTION

    def __post_init__(self) -> None:
        if self.failure_threshold < 1:
            raise ValueError(f"failure_threshold must be at least 1, got {self.failure_threshold}")
        if not self.base_ejection > 0:
            raise ValueError(f"base_ejection must be positive, got {self.base_ejection}")
        if self.max_ejection < 0:
            raise ValueError(f"max_ejection must not be negative, got {self.max_ejection}")

    def ejection_time(self, times_ejected: int) -> float:
        """Seconds the ``times_ejected``-th ejection in a row lasts: base x n, capped."""
        # As in Envoy, the cap is never below the base time.
        return min(self.base_ejection * times_ejected, max(self.max_ejection, self.base_ejection))


class CircuitBreaker:
    """Consecutive-failure ejection with growing ejection times and a single half-open probe."""

    __slots__ = (
        "_clock",
        "_closed_at",
        "_consecutive_failures",
        "_ejected_at",
        "_hold_until",
        "_known",
        "_last_check_at",
        "_last_check_ok",
        "_open_until",
        "_policy",
        "_state",
        "_times_ejected",
    )

    def __init__(self, policy: BreakerPolicy | None = None, *, clock: Clock) -> None:
        self._policy = policy if policy is not None else BreakerPolicy()
        self._clock = clock
        self._state = BreakerState.CLOSED
        self._consecutive_failures = 0
        self._times_ejected = 0
        self._ejected_at: float | None = None
        self._open_until: float | None = None
        # Monotonic time the breaker last closed after an ejection; drives the multiplier decay.
        self._closed_at: float | None = None
        self._hold_until: float | None = None
        self._known = False
        self._last_check_at: float | None = None
        self._last_check_ok: bool | None = None

    @property
    def state(self) -> BreakerState:
        """CLOSED, OPEN or HALF_OPEN; OPEN stays OPEN until an ``allow()`` call starts the probe."""
        return self._state

    @property
    def consecutive_failures(self) -> int:
        """Provider failures since the last success."""
        return self._consecutive_failures

    @property
    def times_ejected(self) -> int:
        """The current ejection multiplier, after decay for healthy time."""
        return self._decayed_times_ejected()

    @property
    def ejected_at(self) -> float | None:
        """Monotonic time of the last ejection; None if never ejected."""
        return self._ejected_at

    @property
    def open_until(self) -> float | None:
        """Monotonic time the current or last ejection ends; None if never ejected."""
        return self._open_until

    @property
    def held_until(self) -> float | None:
        """Monotonic time a Retry-After hold ends; None when no hold is on."""
        until = self._hold_until
        if until is None or self._clock.monotonic() >= until:
            return None
        return until

    @property
    def health(self) -> Health:
        """UNKNOWN before any outcome or check, UNHEALTHY while ejected, HEALTHY otherwise."""
        if not self._known:
            return Health.UNKNOWN
        # A failed health check always ejects, so "after a failed check" is covered by OPEN.
        if self._state is BreakerState.CLOSED:
            return Health.HEALTHY
        return Health.UNHEALTHY

    @property
    def last_check_at(self) -> float | None:
        """Monotonic time of the last active health check."""
        return self._last_check_at

    @property
    def last_check_ok(self) -> bool | None:
        """Whether the last active health check passed; None if never checked."""
        return self._last_check_ok

    def allow(self) -> bool:
        """Whether a request may go here now; once an ejection ends, True for one probe only.
        Always False during a Retry-After hold."""
        if self._hold_until is not None:
            if self._clock.monotonic() < self._hold_until:
                return False
            self._hold_until = None
        state = self._state
        if state is BreakerState.CLOSED:
            return True
        if state is BreakerState.HALF_OPEN:
            return False
        if self._open_until is not None and self._clock.monotonic() < self._open_until:
            return False
        self._state = BreakerState.HALF_OPEN
        return True

    def force_probe(self) -> None:
        """Send the probe now, before ``open_until`` (panic mode); no-op unless OPEN."""
        if self._state is BreakerState.OPEN:
            self._state = BreakerState.HALF_OPEN

    def record_success(self) -> None:
        """A request succeeded: reset the failure count, and close if it was the probe."""
        self._known = True
        self._consecutive_failures = 0
        if self._state is BreakerState.HALF_OPEN:
            self._close()

    def record_failure(self) -> bool:
        """A request failed through the provider's fault; True when this failure ejected it."""
        self._known = True
        self._consecutive_failures += 1
        state = self._state
        if state is BreakerState.HALF_OPEN or (
            state is BreakerState.CLOSED
            and self._consecutive_failures >= self._policy.failure_threshold
        ):
            self._eject()
            return True
        # OPEN: a request already in flight at ejection time; it must not extend the ejection.
        return False

    def hold(self, seconds: float) -> None:
        """Keep requests away for ``seconds`` (an upstream's Retry-After), at most as long as
        the longest ejection; a longer hold already on is kept."""
        if not seconds > 0:
            return
        policy = self._policy
        until = self._clock.monotonic() + min(
            seconds, max(policy.max_ejection, policy.base_ejection)
        )
        if self._hold_until is None or until > self._hold_until:
            self._hold_until = until

    def release_probe(self) -> None:
        """The probe ended without a verdict: back to OPEN with the same ``open_until``."""
        if self._state is BreakerState.HALF_OPEN:
            self._state = BreakerState.OPEN

    def record_check(self, ok: bool) -> None:
        """Result of an active health check: a failure ejects now, a success un-ejects."""
        self._known = True
        self._last_check_at = self._clock.monotonic()
        self._last_check_ok = ok
        if ok:
            if self._state is not BreakerState.CLOSED:
                self._consecutive_failures = 0
                self._close()
        elif self._state is BreakerState.CLOSED:
            self._eject()

    def adopt(
        self, *, open_until: float | None, hold_until: float | None, times_ejected: int, at: float
    ) -> None:
        """Apply another replica's view of this provider (monotonic times on this clock; ``at``
        is when it was true): an ejection ending later than ours ejects us until then, an end
        of ejection newer than our last ejection closes us, a longer hold holds us too."""
        now = self._clock.monotonic()
        if open_until is not None:
            if open_until > now and (
                self._state is BreakerState.CLOSED
                or self._open_until is None
                or open_until > self._open_until
            ):
                self._known = True
                self._state = BreakerState.OPEN
                self._ejected_at = at
                self._open_until = open_until
                self._times_ejected = max(self._times_ejected, times_ejected)
                self._closed_at = None
        elif self._state is not BreakerState.CLOSED and (
            self._ejected_at is None or self._ejected_at <= at
        ):
            self._consecutive_failures = 0
            self._close()
        if (
            hold_until is not None
            and hold_until > now
            and (self._hold_until is None or hold_until > self._hold_until)
        ):
            self._hold_until = hold_until

    def _eject(self) -> None:
        now = self._clock.monotonic()
        self._times_ejected = self._decayed_times_ejected(now) + 1
        self._state = BreakerState.OPEN
        self._ejected_at = now
        self._open_until = now + self._policy.ejection_time(self._times_ejected)
        self._closed_at = None

    def _close(self) -> None:
        self._state = BreakerState.CLOSED
        self._closed_at = self._clock.monotonic()

    def _decayed_times_ejected(self, now: float | None = None) -> int:
        # Envoy takes one off the multiplier per healthy interval; ours is base_ejection long.
        if self._state is not BreakerState.CLOSED or self._closed_at is None:
            return self._times_ejected
        if now is None:
            now = self._clock.monotonic()
        healthy_intervals = int(max(now - self._closed_at, 0.0) // self._policy.base_ejection)
        return max(self._times_ejected - healthy_intervals, 0)


def least_recently_ejected(breakers: Mapping[str, CircuitBreaker]) -> str | None:
    """The name ejected longest ago (never ejected counts as oldest); None for an empty mapping."""
    best: str | None = None
    best_at = 0.0
    for name, breaker in breakers.items():
        at = breaker.ejected_at
        if at is None:
            return name
        if best is None or at < best_at:
            best, best_at = name, at
    return best
