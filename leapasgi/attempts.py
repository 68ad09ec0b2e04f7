"""The attempts of one request: which route comes next, and what each failure leads to.

Fresh candidates are tried first, in the balancer's order; a failed provider that may be retried
comes back after its backoff (or Retry-After). Everything shares one deadline and one attempt
budget, so retries and failovers never multiply. A provider under a Retry-After hold is tried
when its hold ends, if that is within the deadline; one at its concurrency limit is skipped
without counting as an attempt or as the provider's failure.
"""

from __future__ import annotations

import heapq
import random
from collections import deque
from collections.abc import Callable

from .clock import Clock
from .exceptions import (
    DeadlineExceededError,
    LeapError,
    NoProviderAvailableError,
    ProviderBusyError,
    RateLimitError,
)
from .health import least_recently_ejected
from .registry import ProviderEntry, Registry
from .retry import RetryPolicy
from .routing import Route
from .trail import OK, Attempt, RoutingTrail

__all__ = ["BUSY_RETRY_AFTER", "UNAVAILABLE_RETRY_AFTER", "RequestAttempts"]

# Retry-After for a 429 or 503 when nothing can serve and no upstream gave a hint.
UNAVAILABLE_RETRY_AFTER = 5.0
# Retry-After when every provider able to serve was at its concurrency limit: slots free fast.
BUSY_RETRY_AFTER = 1.0


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
        deadline: float,
        trail: RoutingTrail | None = None,
    ) -> None:
        self.trail = trail if trail is not None else RoutingTrail()
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
        # (seconds left, came with a 429) of the shortest hold that outlasts the deadline.
        self._held: tuple[float, bool] | None = None

    async def next(self) -> Route | None:
        """The next route to try, waiting for a due retry if nothing fresh is left."""
        trail = self.trail
        if trail.tries >= self._max_attempts:
            return None
        registry = self._registry
        while self._fresh:
            route = self._fresh.popleft()
            if route.provider not in registry:
                continue
            entry = registry.get(route.provider)
            if entry.breaker.allow():
                return route
            held_until = entry.breaker.held_until
            if held_until is not None:
                self._hold(route, entry, held_until)
                continue
            self._ejected.append(route)
            trail.attempts.append(Attempt(route.provider, route.model, "ejected", skipped=True))
        if self._later:
            when, _, route = heapq.heappop(self._later)
            wait = when - self._clock.monotonic()
            if wait > 0:
                await self._clock.sleep(wait)
            if route.provider in registry and registry.get(route.provider).breaker.allow():
                return route
            return await self.next()
        if self._ejected and trail.tries == 0:
            # Panic mode: every candidate is ejected; try the one ejected longest ago rather
            # than failing at once (the breaker admits it as a probe).
            by_name = {r.provider: r for r in self._ejected}
            breakers = {name: registry.get(name).breaker for name in by_name}
            route = by_name[least_recently_ejected(breakers) or self._ejected[0].provider]
            self._ejected.clear()
            registry.get(route.provider).breaker.force_probe()
            return route
        return None

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
        if until < self.deadline and left <= max_wait:
            heapq.heappush(self._later, (until, len(self.trail.attempts), route))
        elif self._held is None or left < self._held[0]:
            self._held = (left, entry.held_for_rate_limit)

    def overflowed(self, route: Route, error: ProviderBusyError, *, out_of_time: bool) -> None:
        """Note a provider that was at its concurrency limit: not an attempt, not its failure.
        Raise when the wait for a slot used up the request's time."""
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
        if out_of_time:
            raise self.exhausted()

    def succeeded(self, route: Route, latency: float) -> None:
        """Note the attempt that served the request."""
        self.trail.attempts.append(Attempt(route.provider, route.model, OK, latency=latency))

    def failed(self, route: Route, entry: ProviderEntry, exc: LeapError, started: float) -> None:
        """Record a failed attempt, then raise it if it must go back to the caller unchanged
        (400, 401, 403, 404, 413, 422, the deadline), or queue a retry of the same provider."""
        latency = self._clock.monotonic() - started
        final = not exc.retryable or isinstance(exc, DeadlineExceededError)
        if final:
            entry.refused(exc)
        else:
            entry.failed(exc, latency)
        self.trail.attempts.append(
            Attempt(
                route.provider,
                route.model,
                type(exc).__name__,
                status=exc.upstream_status,
                latency=latency,
                message=exc.message,
            )
        )
        if final:
            raise self._with_trail(exc)
        self._last_error = exc
        if exc.retry_after is not None:
            self._hints.append(exc.retry_after)
        if exc.retry_here:
            self._retry_later(route, entry, exc)

    def _retry_later(self, route: Route, entry: ProviderEntry, exc: LeapError) -> None:
        retry = self._retries.get(route.provider, 0)
        policy = self._policy(entry.settings.max_retries)
        delay = policy.delay(retry, retry_after=exc.retry_after, rng=self._rng.random)
        if delay is None:
            return
        when = self._clock.monotonic() + delay
        if when < self.deadline:
            self._retries[route.provider] = retry + 1
            # The sequence number (one attempt noted per push) keeps equal times in the order
            # they were queued, and routes are never compared.
            heapq.heappush(self._later, (when, len(self.trail.attempts), route))

    def exhausted(self) -> LeapError:
        """The error for a request nothing could serve: the last upstream error, else a 503
        (or a 429 when every provider is holding off after a 429); it carries the smallest
        Retry-After any upstream gave, and a default one for a 429 or 503 without a hint."""
        error = self._last_error or self._overflow()
        if error is None:
            error = self._nothing_available()
        if self._hints:
            error.retry_after = min(self._hints)
        elif error.retry_after is None and error.http_status in (429, 503):
            error.retry_after = UNAVAILABLE_RETRY_AFTER
        return self._with_trail(error)

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

    def _with_trail(self, error: LeapError) -> LeapError:
        error.attempts = self.trail.tries
        error.trail = self.trail
        return error
