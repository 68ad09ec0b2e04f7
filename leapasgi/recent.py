"""What the dashboard shows of finished requests: the last ones' routing trails and, per
provider, a per-second ring of counts and latencies. Names, statuses and timings only: never a
prompt, a completion or an upstream's error text (which may echo the prompt)."""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .outcome import Outcome

__all__ = ["RECENT_REQUESTS", "SERIES_SECONDS", "RecentRequests"]

# The requests listed, the seconds each plot covers, and the latencies kept per second.
RECENT_REQUESTS = 50
SERIES_SECONDS = 60
LATENCIES_PER_SECOND = 512
# Tenants whose spend is summed here (the ledger keeps every one; this is a live view).
MAX_TENANTS = 1000


class _Second:
    """One provider's requests finished within one second."""

    __slots__ = ("at", "errors", "latencies", "requests")

    def __init__(self, at: int) -> None:
        self.at = at
        self.requests = 0
        self.errors = 0
        self.latencies: list[float] = []


def _quantile(ordered: list[float], q: float) -> float | None:
    if not ordered:
        return None
    return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]


class RecentRequests:
    """A bounded live view of finished requests, fed by the recorder."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self.requests: deque[dict[str, Any]] = deque(maxlen=RECENT_REQUESTS)
        self._seconds: dict[str, deque[_Second]] = {}
        self.cache: dict[str, int] = {}
        self.spend: dict[str, float] = {}

    def add(self, outcome: Outcome, *, provider: str, latency: float) -> None:
        """Note one finished request."""
        trail = outcome.trail
        error = outcome.error
        status = outcome.status
        self.requests.appendleft(
            {
                "id": outcome.request_id,
                "at": time.time(),
                "operation": outcome.operation,
                "model": (outcome.model or "")[:128],
                "provider": provider,
                "status": status,
                "error": type(error).__name__ if error is not None else None,
                "ms": round(latency * 1000, 1),
                "overhead_ms": round(max(0.0, latency - trail.upstream_seconds) * 1000, 1),
                "cache": outcome.cache,
                "stream": outcome.stream,
                "attempts": [
                    {
                        "provider": a.provider,
                        "model": a.model[:128],
                        "outcome": a.outcome,
                        "status": a.status,
                        "ms": round(a.latency * 1000, 1),
                        "skipped": a.skipped,
                    }
                    for a in trail.attempts
                ],
            }
        )
        second = self._second(provider)
        second.requests += 1
        if error is not None or status >= 500:
            second.errors += 1
        elif len(second.latencies) < LATENCIES_PER_SECOND:
            second.latencies.append(latency)
        if outcome.cache is not None:
            self.cache[outcome.cache] = self.cache.get(outcome.cache, 0) + 1
        tenant, cost = outcome.tenant, outcome.cost_usd
        if tenant is not None and cost is not None and self._tracks(tenant.id):
            self.spend[tenant.id] = self.spend.get(tenant.id, 0.0) + cost

    def _tracks(self, tenant: str) -> bool:
        return tenant in self.spend or len(self.spend) < MAX_TENANTS

    def _second(self, provider: str) -> _Second:
        now = int(self._clock())
        ring = self._seconds.get(provider)
        if ring is None:
            ring = self._seconds[provider] = deque(maxlen=SERIES_SECONDS)
        if not ring or ring[-1].at != now:
            ring.append(_Second(now))
        return ring[-1]

    def series(self) -> dict[str, dict[str, list[float | None]]]:
        """Per provider, the last SERIES_SECONDS seconds (oldest first, the current one
        last): requests, errors, and latency p50/p95 in milliseconds (None: no request)."""
        now = int(self._clock())
        out: dict[str, dict[str, list[float | None]]] = {}
        for provider, ring in self._seconds.items():
            by_second = {s.at: s for s in ring}
            rate: list[float | None] = []
            errors: list[float | None] = []
            p50: list[float | None] = []
            p95: list[float | None] = []
            for at in range(now - SERIES_SECONDS + 1, now + 1):
                second = by_second.get(at)
                ordered = sorted(second.latencies) if second is not None else []
                rate.append(second.requests if second is not None else 0)
                errors.append(second.errors if second is not None else 0)
                p50.append(_ms(_quantile(ordered, 0.5)))
                p95.append(_ms(_quantile(ordered, 0.95)))
            out[provider] = {"rate": rate, "errors": errors, "p50": p50, "p95": p95}
        return out

    def cache_hit_rate(self) -> float | None:
        """Hits over lookups (hits and misses), None before the first lookup."""
        hits, misses = self.cache.get("hit", 0), self.cache.get("miss", 0)
        return hits / (hits + misses) if hits + misses else None


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)
