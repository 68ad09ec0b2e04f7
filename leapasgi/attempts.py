"""The attempts of one request: which route comes next, and what each failure leads to.

Fresh candidates are tried first, in the balancer's order; a failed provider that may be retried
comes back after its backoff (or Retry-After). Everything shares one deadline and one attempt
budget, so retries and failovers never multiply. A provider under a Retry-After hold is tried
when its hold ends, if that is within the deadline; one at its concurrency limit is skipped
without counting as an attempt or as the provider's failure.

Nothing here raises: each failure returns a ``Decision``, and the dispatcher ends the request
with ``final_error`` or ``exhausted_error``.
"""

from __future__ import annotations

import heapq
import random
from collections import deque
from collections.abc import Callable
from enum import Enum

from .clock import Clock, sleep_until
from .deadline import Deadline
from .exceptions import LeapError, NoProviderAvailableError, ProviderBusyError, RateLimitError
from .health import least_recently_ejected
from .registry import ProviderEntry, Registry
from .retry import RetryPolicy, is_final
from .routing import Route
from .trail import CANCELLED, OK, Attempt, RoutingTrail

__all__ = ["BUSY_RETRY_AFTER", "UNAVAILABLE_RETRY_AFTER", "Decision", "RequestAttempts"]

# Retry-After for a 429 or 503 when nothing can serve and no upstream gave a hint.
UNAVAILABLE_RETRY_AFTER = 5.0
# Retry-After when every provider able to serve was at its concurrency limit: slots free fast.
BUSY_RETRY_AFTER = 1.0


class Decision(Enum):
    """What a failed attempt leads to."""

    RETRY = "retry"  # the same provider again, after its backoff; others may come first
    FAIL_OVER = "fail_over"  # not this provider again: the next candidate, if any
    FINAL = "final"  # the error goes back to the caller as it is (400, 404, the deadline...)


class RequestAttempts:
    """The attempt queue, budget, deadline and routing trail of one request."""

    def __init__(
        self,
        routes: list[Route],
        *,
        registry: Registry,
        clock: Clock,
        rng: random.Random,
        policy: Callable[[int], RetryPolicy],
        max_attempts: int,
        deadline: Deadline,
        trail: RoutingTrail,
    ) -> None:
        self.trail = trail
        self.deadline = deadline
        self._registry = registry
        self._clock = clock
        self._rng = rng
        self._policy = policy
        self._max_attempts = max_attempts
        self._fresh: deque[Route] = deque(routes)
        self._later: list[tuple[float, int, Route]] = []
        self._retries: dict[str, int] = {}
        self._ejected: list[Route] = []
        self._hints: list[float] = []
        self._last_error: LeapError | None = None
        self._busy: list[ProviderBusyError] | None = None
        self._limited: RateLimitError | None = None
        # (seconds left, came with a 429) of the shortest hold that outlasts the deadline.
        self._held: tuple[float, bool] | None = None
        # Set when the request is hedged: its attempts may run two at once (a stream's until
        # the first content).
        self.hedging = False
        self.stream = False
        # Its place in a provider's line (higher first).
        self.priority = 0

    async def next(self) -> Route | None:
        """The next route to try, waiting for a due retry if nothing fresh is left; None when
        the budget is spent or nothing is left to try."""
        trail = self.trail
        registry = self._registry
        while trail.tries < self._max_attempts:
            while self._fresh:
                route = self._fresh.popleft()
                if route.provider in registry and self._admit(route):
                    return route
            if self._later:
                when, _, route = heapq.heappop(self._later)
                await sleep_until(self._clock, when)
                # Held again meanwhile (another request's 429) or ejected: noted, and on.
                if route.provider in registry and self._admit(route):
                    return route
                continue
            return self._panic()
        return None

    @property
    def alternatives(self) -> int:
        """Fresh routes not tried yet (a hedge needs one)."""
        return len(self._fresh)

    def next_fresh(self) -> Route | None:
        """The next fresh route that takes a request now, without waiting (for a hedge); None
        when there is none."""
        registry = self._registry
        while self._fresh:
            route = self._fresh.popleft()
            if route.provider in registry and self._admit(route):
                return route
        return None

    def put_back(self, route: Route) -> None:
        """Return a route ``next_fresh`` gave out and that was not tried: it comes next."""
        self._fresh.appendleft(route)

    def record_hedge(self, route: Route, delay: float) -> None:
        """Note the second attempt of a hedged request, started after ``delay`` seconds."""
        self.trail.hedged = route.provider
        self.trail.notes.append(f"hedged to {route.provider} after {delay:.3g} s")

    def record_cancelled(self, route: Route, latency: float) -> None:
        """Note a hedged attempt cancelled because the other one answered first."""
        self.trail.attempts.append(Attempt(route.provider, route.model, CANCELLED, latency=latency))

    def _admit(self, route: Route) -> bool:
        """True when ``route``'s provider takes a request now; else its Retry-After hold is
        waited for (or noted), or its ejection noted."""
        entry = self._registry.get(route.provider)
        breaker = entry.breaker
        if breaker.allow():
            return True
        held_until = breaker.held_until
        # A hold that ended between the two reads of the clock: asked again, not ejected.
        if held_until is None and breaker.allow():
            return True
        if held_until is not None:
            self._hold(route, entry, held_until)
        else:
            self._ejected.append(route)
            ejected = Attempt(route.provider, route.model, "ejected", skipped=True)
            self.trail.attempts.append(ejected)
        return False

    def _panic(self) -> Route | None:
        """Every candidate is ejected and none was tried: the one ejected longest ago, rather
        than failing at once (the breaker admits it as a probe)."""
        if not self._ejected or self.trail.tries:
            return None
        registry = self._registry
        by_name = {r.provider: r for r in self._ejected}
        breakers = {name: registry.get(name).breaker for name in by_name}
        route = by_name[least_recently_ejected(breakers) or self._ejected[0].provider]
        self._ejected.clear()
        registry.get(route.provider).breaker.force_probe()
        return route

    def _hold(self, route: Route, entry: ProviderEntry, until: float) -> None:
        # Like a Retry-After this request got itself: wait for it if the deadline allows.
        left = until - self._clock.monotonic()
        self.trail.attempts.append(
            Attempt(
                route.provider,
                route.model,
                "held",
                message=f"Retry-After: {left:.3g} s left",
                skipped=True,
            )
        )
        max_wait = self._policy(entry.settings.max_retries).max_retry_after
        if until < self.deadline.at and left <= max_wait:
            heapq.heappush(self._later, (until, len(self.trail.attempts), route))
        elif self._held is None or left < self._held[0]:
            self._held = (left, entry.held_for_rate_limit)

    def record_overflow(self, route: Route, error: ProviderBusyError) -> None:
        """Note a provider that was at its concurrency limit: not an attempt, not its failure."""
        self.trail.attempts.append(
            Attempt(
                route.provider,
                route.model,
                type(error).__name__,
                message=error.message,
                skipped=True,
            )
        )
        if self._busy is None:
            self._busy = [error]
        else:
            self._busy.append(error)

    def record_rate_limited(self, route: Route, error: RateLimitError) -> None:
        """Note a provider over its own RPM or TPM limit: skipped, not its failure; the request
        ends with a 429 when nothing else serves it."""
        self.trail.attempts.append(
            Attempt(
                route.provider,
                route.model,
                type(error).__name__,
                status=429,
                message=error.message,
                skipped=True,
            )
        )
        soonest = self._limited
        if soonest is None or (error.retry_after or 0) < (soonest.retry_after or 0):
            self._limited = error

    def record_success(self, route: Route, latency: float) -> None:
        """Note the attempt that served the request."""
        self.trail.attempts.append(Attempt(route.provider, route.model, OK, latency=latency))

    def record_failure(
        self, route: Route, entry: ProviderEntry, error: LeapError, latency: float
    ) -> Decision:
        """Note a failed attempt and decide what follows: FINAL when the error must go back to
        the caller unchanged, RETRY with the retry queued, else FAIL_OVER."""
        message = error.message
        decision = Decision.FAIL_OVER
        if is_final(error):
            decision = Decision.FINAL
        else:
            self._last_error = error
            if error.retry_after is not None:
                self._hints.append(error.retry_after)
            policy = self._policy(entry.settings.max_retries)
            if error.retry_after is not None and error.retry_after > policy.max_retry_after:
                message += (
                    f" (Retry-After {error.retry_after:g} s is over the "
                    f"{policy.max_retry_after:g} s cap: not retried on this provider)"
                )
            elif self._retry_later(route, policy, error):
                decision = Decision.RETRY
        self.trail.attempts.append(
            Attempt(
                route.provider,
                route.model,
                type(error).__name__,
                status=error.upstream_status,
                latency=latency,
                message=message,
            )
        )
        return decision

    def _retry_later(self, route: Route, policy: RetryPolicy, error: LeapError) -> bool:
        retry = self._retries.get(route.provider, 0)
        delay = policy.after(error, retry, rng=self._rng.random)
        if delay is None:
            return False
        when = self._clock.monotonic() + delay
        if when >= self.deadline.at:
            return False
        self._retries[route.provider] = retry + 1
        # The sequence number (one attempt noted per push) keeps equal times in the order
        # they were queued, and routes are never compared.
        heapq.heappush(self._later, (when, len(self.trail.attempts) + 1, route))
        return True

    def final_error(self, error: LeapError) -> LeapError:
        """The error a request ends with when an attempt's error goes back as it is."""
        return error.for_request(self.trail)

    def exhausted_error(self) -> LeapError:
        """The error for a request nothing could serve: the last upstream error, else a 503
        (or a 429 when every provider is holding off after a 429); it carries the smallest
        Retry-After any upstream gave, and a default one for a 429 or 503 without a hint."""
        error = self._last_error or self._limited or self._overflow() or self._nothing_available()
        retry_after = min(self._hints) if self._hints else None
        if retry_after is None and error.retry_after is None and error.http_status in (429, 503):
            retry_after = UNAVAILABLE_RETRY_AFTER
        return error.for_request(self.trail, retry_after=retry_after)

    def _overflow(self) -> ProviderBusyError | None:
        busy = self._busy
        if busy is None or len(busy) == 1:
            return busy[0] if busy else None
        names = ", ".join(sorted({error.provider or "?" for error in busy}))
        return ProviderBusyError(
            f"Every provider that can serve this request is at its concurrency limit ({names})",
            retry_after=BUSY_RETRY_AFTER,
        )

    def _nothing_available(self) -> LeapError:
        if self._held is None:
            return NoProviderAvailableError(
                "No provider can serve this request right now",
                retry_after=UNAVAILABLE_RETRY_AFTER,
            )
        left, rate_limited = self._held
        cls = RateLimitError if rate_limited else NoProviderAvailableError
        return cls("Every provider asked to wait (Retry-After)", retry_after=left)
