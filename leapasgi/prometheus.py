"""Prometheus metrics for ``/metrics``, in the text exposition format 0.0.4.

Recording runs on the request hot path, so it only looks up and updates values keyed by label
tuples; every string is built at render time. Gauges are not stored: they are read from registry
snapshots when rendered. Each family holds at most ``max_series`` label sets; later ones are
folded into a single series whose label values are all ``"other"``, so memory stays bounded.

Pure code, no I/O and no locks: under asyncio each call runs to completion without interleaving.
"""

from __future__ import annotations

import math
import re
from bisect import bisect_left
from collections.abc import Iterable, Iterator
from itertools import pairwise
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar

from .health import BreakerState
from .limits import WAIT_BUCKETS
from .registry import ProviderSnapshot, ProviderStatus

if TYPE_CHECKING:
    from .cache import CacheSnapshot
    from .state.base import StateStatus

__all__ = [
    "CONTENT_TYPE",
    "DEFAULT_BUCKETS",
    "MAX_SERIES",
    "OTHER",
    "OVERHEAD_BUCKETS",
    "Counter",
    "GatewayMetrics",
    "Histogram",
]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
DEFAULT_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0
)  # fmt: skip
OVERHEAD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1)
MAX_SERIES = 10_000
OTHER = "other"

_METRIC_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
# HTTP statuses as label values, built once so recording never formats a number.
_STATUS_TEXT = tuple(str(code) for code in range(600))
_STREAM_TEXT = ("false", "true")
_PROVIDER = ("provider",)

V = TypeVar("V")


class _Family(Generic[V]):
    """One metric family: a name, a help text, label names and a value per label set."""

    __slots__ = ("_max_series", "_other", "_series", "help", "labels", "name")

    kind: ClassVar[str]

    def __init__(
        self, name: str, help: str, labels: tuple[str, ...], *, max_series: int = MAX_SERIES
    ) -> None:
        if not _METRIC_NAME.match(name):
            raise ValueError(f"invalid metric name {name!r}")
        for label in labels:
            if not _LABEL_NAME.match(label) or label.startswith("__"):
                raise ValueError(f"invalid label name {label!r}")
        if len(set(labels)) != len(labels):
            raise ValueError(f"duplicate label names in {labels!r}")
        if max_series < 1:
            raise ValueError(f"max_series must be at least 1, got {max_series}")
        self.name = name
        self.help = help
        self.labels = labels
        self._max_series = max_series
        self._other = (OTHER,) * len(labels)
        self._series: dict[tuple[str, ...], V] = {}
        if not labels:
            self._series[()] = self._new()

    def _new(self) -> V:
        raise NotImplementedError

    @property
    def used(self) -> bool:
        """Whether any series was recorded (a family shown only once it means something)."""
        return bool(self._series)

    def _admit(self, label_values: tuple[str, ...]) -> V:
        # Only reached for a label set not seen yet: the hot path never gets here.
        if len(label_values) != len(self.labels):
            raise ValueError(
                f"{self.name} takes {len(self.labels)} label values, got {len(label_values)}"
            )
        key = label_values if len(self._series) < self._max_series else self._other
        series = self._series.get(key)
        if series is None:
            series = self._series[key] = self._new()
        return series

    def _samples(self, pairs: str, value: V) -> Iterator[str]:
        raise NotImplementedError

    def render(self) -> str:
        """This family as exposition text: HELP, TYPE, then its samples sorted by label values."""
        lines = [f"# HELP {self.name} {_escape_help(self.help)}", f"# TYPE {self.name} {self.kind}"]
        for key in sorted(self._series):
            pairs = ",".join(
                f'{label}="{_escape_label(value)}"'
                for label, value in zip(self.labels, key, strict=True)
            )
            lines.extend(self._samples(pairs, self._series[key]))
        lines.append("")
        return "\n".join(lines)


class Counter(_Family[list[float]]):
    """A monotonically increasing count per label set."""

    __slots__ = ()

    kind = "counter"

    def inc(self, *label_values: str, amount: float = 1.0) -> None:
        """Add ``amount`` (not negative) to the series for ``label_values``."""
        if amount < 0:
            raise ValueError(f"a counter only goes up, got {amount}")
        cell = self._series.get(label_values)
        if cell is None:
            cell = self._admit(label_values)
        cell[0] += amount

    def _new(self) -> list[float]:
        # A one-item list so ``inc`` updates in place after a single lookup.
        return [0.0]

    def _samples(self, pairs: str, value: list[float]) -> Iterator[str]:
        yield _sample(self.name, pairs, value[0])


class _HistogramSeries:
    __slots__ = ("counts", "sum")

    def __init__(self, size: int) -> None:
        self.counts = [0] * size
        self.sum = 0.0


class Histogram(_Family[_HistogramSeries]):
    """Observations counted into cumulative ``le`` buckets, with their sum and count."""

    __slots__ = ("_le", "buckets")

    kind = "histogram"

    def __init__(
        self,
        name: str,
        help: str,
        labels: tuple[str, ...],
        buckets: tuple[float, ...] = DEFAULT_BUCKETS,
        *,
        max_series: int = MAX_SERIES,
    ) -> None:
        if "le" in labels:
            raise ValueError("'le' is reserved for histogram buckets")
        bounds = tuple(float(b) for b in buckets if b != math.inf)
        if any(math.isnan(b) for b in bounds) or any(a >= b for a, b in pairwise(bounds)):
            raise ValueError(f"buckets must be strictly increasing, got {buckets!r}")
        self.buckets = bounds
        self._le = tuple(_format_value(bound) for bound in (*bounds, math.inf))
        super().__init__(name, help, labels, max_series=max_series)

    def observe(self, value: float, *label_values: str) -> None:
        """Count ``value`` into the series for ``label_values``."""
        series = self._series.get(label_values)
        if series is None:
            series = self._admit(label_values)
        series.counts[bisect_left(self.buckets, value)] += 1
        series.sum += value

    def load(self, cumulative: tuple[int, ...], total: float, *label_values: str) -> None:
        """Set the series for ``label_values`` from counts kept elsewhere: cumulative, one per
        bucket and +Inf (as a limit's wait histogram keeps them), and their sum."""
        if len(cumulative) != len(self.buckets) + 1:
            return
        series = self._admit(label_values)
        previous = 0
        for index, count in enumerate(cumulative):
            series.counts[index] = count - previous
            previous = count
        series.sum = total

    def _new(self) -> _HistogramSeries:
        return _HistogramSeries(len(self.buckets) + 1)

    def _samples(self, pairs: str, value: _HistogramSeries) -> Iterator[str]:
        prefix = f"{pairs}," if pairs else ""
        cumulative = 0
        for bound, count in zip(self._le, value.counts, strict=True):
            cumulative += count
            le = f'{prefix}le="{bound}"'
            yield _sample(f"{self.name}_bucket", le, cumulative)
        yield _sample(f"{self.name}_sum", pairs, value.sum)
        yield _sample(f"{self.name}_count", pairs, cumulative)


class _Gauge(_Family[float]):
    __slots__ = ()

    kind = "gauge"

    def set(self, value: float, *label_values: str) -> None:
        self._series[label_values] = value

    def _new(self) -> float:
        return 0.0

    def _samples(self, pairs: str, value: float) -> Iterator[str]:
        yield _sample(self.name, pairs, value)


class GatewayMetrics:
    """Everything /metrics shows: per-request counters and histograms, provider gauges."""

    __slots__ = (
        "cache",
        "duration",
        "errors",
        "hedges",
        "overhead",
        "requests",
        "tokens",
        "ttft",
    )

    def __init__(self, *, max_series: int = MAX_SERIES) -> None:
        self.requests = Counter(
            "leap_requests_total",
            "Requests answered, by provider, model, HTTP status and whether streamed.",
            ("provider", "model", "status", "stream"),
            max_series=max_series,
        )
        self.duration = Histogram(
            "leap_request_duration_seconds",
            "Time from receiving a request to the end of its answer, by provider and model.",
            ("provider", "model"),
            max_series=max_series,
        )
        self.ttft = Histogram(
            "leap_time_to_first_token_seconds",
            "Time from receiving a request to its first token, by provider and model.",
            ("provider", "model"),
            max_series=max_series,
        )
        self.tokens = Counter(
            "leap_tokens_total",
            "Tokens used, by provider, model and direction (prompt or completion).",
            ("provider", "model", "direction"),
            max_series=max_series,
        )
        self.overhead = Histogram(
            "leap_gateway_overhead_seconds",
            "Time a request spent in the gateway itself, upstream time excluded.",
            (),
            OVERHEAD_BUCKETS,
        )
        self.errors = Counter(
            "leap_errors_total",
            "Errors by provider (empty when none was reached) and kind.",
            ("provider", "kind"),
            max_series=max_series,
        )
        # Shown once a request was hedged.
        self.hedges = Counter(
            "leap_hedges_total",
            "Hedged attempts, by the provider hedged to and result: won (it answered first) "
            "or lost (the first attempt did, and the hedge was cancelled).",
            ("provider", "result"),
            max_series=max_series,
        )
        # Shown only by a gateway with the response cache on.
        self.cache = Counter(
            "leap_cache_requests_total",
            "Requests on the response cache's routes, by result: hit, miss or bypass.",
            ("result",),
        )

    def record(
        self,
        *,
        provider: str,
        model: str,
        status: int,
        latency: float,
        overhead: float,
        ttft: float | None = None,
        prompt_tokens: int = 0,
        completion_tokens: int = 0,
        stream: bool = False,
    ) -> None:
        """Record one answered request."""
        status_text = _STATUS_TEXT[status] if 0 <= status < 600 else str(status)
        self.requests.inc(provider, model, status_text, _STREAM_TEXT[stream])
        self.duration.observe(latency, provider, model)
        if ttft is not None:
            self.ttft.observe(ttft, provider, model)
        if prompt_tokens > 0:
            self.tokens.inc(provider, model, "prompt", amount=prompt_tokens)
        if completion_tokens > 0:
            self.tokens.inc(provider, model, "completion", amount=completion_tokens)
        self.overhead.observe(overhead)

    def record_error(self, *, provider: str, kind: str) -> None:
        """Count one error of ``kind``; ``provider`` is "" when no provider was reached."""
        self.errors.inc(provider, kind)

    def record_hedge(self, *, provider: str, won: bool) -> None:
        """Count one hedged attempt to ``provider``, and whether it answered first."""
        self.hedges.inc(provider, "won" if won else "lost")

    def record_cache(self, result: str) -> None:
        """Count what the response cache did with one request ("hit", "miss", "bypass")."""
        self.cache.inc(result)

    def render(
        self,
        snapshots: Iterable[ProviderSnapshot],
        *,
        cache: CacheSnapshot | None = None,
        state: StateStatus | None = None,
    ) -> str:
        """The exposition text: recorded families, provider gauges and, with ``cache``, the
        response cache's families, and with ``state`` the state backend's, sorted by family
        name."""
        families: list[_Family[Any]] = [
            self.requests,
            self.duration,
            self.ttft,
            self.tokens,
            self.overhead,
            self.errors,
            *_provider_gauges(snapshots),
        ]
        if self.hedges.used:
            families.append(self.hedges)
        if cache is not None:
            families += [self.cache, *_cache_families(cache)]
        if state is not None:
            families += _state_families(state)
        families.sort(key=lambda family: family.name)
        return "".join(family.render() for family in families)


def _provider_gauges(snapshots: Iterable[ProviderSnapshot]) -> list[_Family[Any]]:
    in_flight = _Gauge("leap_provider_in_flight", "Requests in flight to the provider.", _PROVIDER)
    up = _Gauge("leap_provider_up", "1 if the provider's status is active, else 0.", _PROVIDER)
    breaker = _Gauge(
        "leap_provider_breaker_state",
        "Circuit breaker state: 1 for the current state, 0 for the others.",
        ("provider", "state"),
    )
    ewma = _Gauge(
        "leap_provider_latency_ewma_seconds",
        "Peak-sensitive moving average of the provider's latency, when known.",
        _PROVIDER,
    )
    errors = _Gauge(
        "leap_provider_consecutive_errors", "Provider failures since its last success.", _PROVIDER
    )
    waiting = _Gauge(
        "leap_provider_waiting", "Requests waiting for one of the provider's slots.", _PROVIDER
    )
    overflows = Counter(
        "leap_provider_overflows_total",
        "Requests turned away locally because the provider's slots and queue were full.",
        _PROVIDER,
    )
    limit = _Gauge(
        "leap_provider_concurrency_limit",
        "Requests the provider may have in flight now (an adaptive limit moves).",
        _PROVIDER,
    )
    shed = Counter(
        "leap_provider_shed_total",
        "Requests shed at once, or given up in line, because the provider could not answer "
        "them within their deadline.",
        _PROVIDER,
    )
    waits = Histogram(
        "leap_provider_queue_wait_seconds",
        "Time requests waited in line for one of the provider's slots.",
        _PROVIDER,
        WAIT_BUCKETS,
    )
    for snap in snapshots:
        name = snap.name
        in_flight.set(snap.in_flight, name)
        up.set(1 if snap.status is ProviderStatus.ACTIVE else 0, name)
        for state in BreakerState:
            breaker.set(1 if snap.breaker is state else 0, name, state.value)
        if snap.latency_ewma is not None:
            ewma.set(snap.latency_ewma, name)
        errors.set(snap.consecutive_errors, name)
        waiting.set(snap.waiting, name)
        overflows.inc(name, amount=snap.overflows)
        if snap.limit is not None:
            limit.set(snap.limit, name)
            shed.inc(name, amount=snap.shed + snap.timed_out)
            waits.load(snap.wait_counts, snap.wait_sum, name)
    return [in_flight, up, breaker, ewma, errors, waiting, overflows, limit, shed, waits]


def _cache_families(cache: CacheSnapshot) -> list[_Gauge | Counter]:
    coalesced = Counter(
        "leap_cache_coalesced_total",
        "Requests that waited for an identical request's answer instead of calling upstream.",
        (),
    )
    stores = Counter("leap_cache_stores_total", "Answers stored in the response cache.", ())
    too_large = Counter(
        "leap_cache_too_large_total",
        "Complete answers not stored because they were over max_entry_bytes.",
        (),
    )
    errors = Counter("leap_cache_store_errors_total", "Cache store operations that failed.", ())
    entries = _Gauge("leap_cache_entries", "Entries the response cache holds here.", ())
    size = _Gauge("leap_cache_bytes", "Bytes the response cache holds here.", ())
    coalesced.inc(amount=cache.coalesced)
    stores.inc(amount=cache.stored)
    too_large.inc(amount=cache.too_large)
    errors.inc(amount=cache.store_errors)
    entries.set(cache.entries)
    size.set(cache.bytes)
    return [coalesced, stores, too_large, errors, entries, size]


def _state_families(state: StateStatus) -> list[_Gauge | Counter]:
    degraded = _Gauge(
        "leap_state_degraded",
        "1 while a shared state backend is unreachable and this replica runs on local state.",
        ("backend",),
    )
    shared = _Gauge(
        "leap_state_shared", "1 while state is shared with the other replicas.", ("backend",)
    )
    errors = Counter(
        "leap_state_errors_total",
        "State backend operations that failed or timed out.",
        ("backend",),
    )
    degraded.set(1 if state.degraded else 0, state.backend)
    shared.set(1 if state.shared else 0, state.backend)
    errors.inc(state.backend, amount=state.errors)
    return [degraded, shared, errors]


def _sample(name: str, pairs: str, value: float) -> str:
    labels = f"{{{pairs}}}" if pairs else ""
    return f"{name}{labels} {_format_value(value)}"


def _format_value(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if math.isnan(value):
        return "NaN"
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return repr(float(value))


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")
