"""Routing statistics: live per-provider counters, latency quantiles and the peak-sensitive
EWMA that least-latency balancing reads.

Pure code: no I/O, no clock reads. Every time value comes in as an argument, so the manager
decides which clock is used and tests control it exactly.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

__all__ = [
    "DEFAULT_EWMA_DECAY",
    "DEFAULT_WINDOW",
    "ERROR_LATENCY_PENALTY",
    "LatencyWindow",
    "PeakEWMA",
    "ProviderStats",
    "Quantiles",
]

DEFAULT_WINDOW = 512
DEFAULT_EWMA_DECAY = 10.0
# Added to a failed attempt's latency in the EWMA: a provider answering with fast 5xx/429 must
# never look fast to least-latency routing (Linkerd proxy PR #4537).
ERROR_LATENCY_PENALTY = 2.0


@dataclass(frozen=True, slots=True)
class Quantiles:
    """Latency quantiles in seconds, by nearest rank."""

    p50: float
    p95: float
    p99: float


class LatencyWindow:
    """The most recent ``size`` samples in a ring buffer, with nearest-rank quantiles."""

    __slots__ = ("_next", "_size", "_values")

    def __init__(self, *, size: int = DEFAULT_WINDOW) -> None:
        if size < 1:
            raise ValueError(f"window size must be at least 1, got {size}")
        self._size = size
        self._values: list[float] = []
        self._next = 0

    def add(self, value: float) -> None:
        """Record one sample, replacing the oldest once the window is full."""
        if len(self._values) < self._size:
            self._values.append(value)
            return
        self._values[self._next] = value
        self._next = (self._next + 1) % self._size

    def quantiles(self) -> Quantiles | None:
        """p50/p95/p99 over the samples in the window; None when it is empty."""
        n = len(self._values)
        if n == 0:
            return None
        ordered = sorted(self._values)
        return Quantiles(
            p50=ordered[_rank(50, n)],
            p95=ordered[_rank(95, n)],
            p99=ordered[_rank(99, n)],
        )

    def __len__(self) -> int:
        return len(self._values)


def _rank(percent: int, n: int) -> int:
    # Nearest rank is ceil(p/100 * n), 1-based; integer maths avoids float rounding at the edges.
    return max(-(-percent * n // 100), 1) - 1


class PeakEWMA:
    """Peak-sensitive moving average: a higher sample is taken at once, lower ones pull it down.

    On ``observe(v, now)`` with weight ``w = exp(-(now - last) / decay)``: if ``v`` is above the
    current value it becomes the value; otherwise ``value = value * w + v * (1 - w)``. The value
    only moves when a sample arrives: it does not decay between samples.
    """

    __slots__ = ("_decay", "_last", "_samples", "_value")

    def __init__(self, *, decay: float = DEFAULT_EWMA_DECAY) -> None:
        if not decay > 0:
            raise ValueError(f"decay must be positive, got {decay}")
        self._decay = decay
        self._value: float | None = None
        self._last = 0.0
        self._samples = 0

    def observe(self, value: float, *, now: float) -> None:
        """Fold in one sample taken at monotonic time ``now``."""
        current = self._value
        if current is None or value > current:
            self._value = value
        else:
            # A clock that steps back counts as no time passed, so the sample gets no weight.
            w = math.exp(-max(now - self._last, 0.0) / self._decay)
            self._value = current * w + value * (1.0 - w)
        self._last = max(now, self._last)
        self._samples += 1

    @property
    def value(self) -> float | None:
        """The current estimate; None before the first sample."""
        return self._value

    @property
    def samples(self) -> int:
        """How many samples have been observed."""
        return self._samples


class ProviderStats:
    """Live counters of one provider. Mutated by the manager, read by snapshots; never blocks."""

    __slots__ = (
        "_failures",
        "_penalty",
        "completion_tokens",
        "consecutive_errors",
        "errors",
        "ewma",
        "in_flight",
        "last_error",
        "last_error_at",
        "latency",
        "prompt_tokens",
        "requests",
        "successes",
        "ttft",
    )

    def __init__(
        self,
        *,
        window: int = DEFAULT_WINDOW,
        decay: float = DEFAULT_EWMA_DECAY,
        penalty: float = ERROR_LATENCY_PENALTY,
    ) -> None:
        self.requests = 0
        self.successes = 0
        self.errors: Counter[str] = Counter()
        self.consecutive_errors = 0
        self.in_flight = 0
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.latency = LatencyWindow(size=window)
        self.ttft = LatencyWindow(size=window)
        self.ewma = PeakEWMA(decay=decay)
        self.last_error: str | None = None
        self.last_error_at: float | None = None
        self._penalty = penalty
        self._failures = 0

    def begin(self) -> None:
        """An attempt starts."""
        self.requests += 1
        self.in_flight += 1

    def end(self) -> None:
        """An attempt ends, whatever its outcome."""
        if self.in_flight > 0:
            self.in_flight -= 1

    def record_success(
        self,
        latency: float,
        *,
        now: float,
        ttft: float | None = None,
        prompt_tokens: int = 0,
        completion_tokens: int = 0,
    ) -> None:
        """A successful attempt that took ``latency`` seconds, finishing at monotonic ``now``."""
        self.successes += 1
        self.consecutive_errors = 0
        self.latency.add(latency)
        if ttft is not None:
            self.ttft.add(ttft)
        self.ewma.observe(latency, now=now)
        self.prompt_tokens += prompt_tokens
        self.completion_tokens += completion_tokens

    def record_failure(
        self, kind: str, latency: float, *, now: float, message: str | None = None
    ) -> None:
        """A failed attempt that is the provider's fault (5xx, 429, timeout, connection error)."""
        self.errors[kind] += 1
        self._failures += 1
        self.consecutive_errors += 1
        # Failure latency stays out of the window: it reports what users get from successes.
        self.ewma.observe(latency + self._penalty, now=now)
        self.last_error = message or kind
        self.last_error_at = now

    def record_client_error(self, kind: str) -> None:
        """A failed attempt that is the caller's fault (e.g. 400): counted, not held against it."""
        self.errors[kind] += 1

    @property
    def error_count(self) -> int:
        """All errors recorded, client errors included."""
        return self.errors.total()

    @property
    def failures(self) -> int:
        """Failures that count against the provider (client errors excluded)."""
        return self._failures

    @property
    def success_rate(self) -> float | None:
        """Successes over finished attempts, client errors left out; None if none finished."""
        finished = self.successes + self._failures
        if finished == 0:
            return None
        return self.successes / finished
