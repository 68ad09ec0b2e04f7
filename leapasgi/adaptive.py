"""An adaptive concurrency limit: a provider's in-flight limit, following what it can take.

A gradient controller on a measured no-load latency, after Envoy's adaptive concurrency
filter (minRTT windows) and TCP Vegas (grow while there is no queue, shrink when there is),
with TCP Reno's halving on loss:

- **Windows.** Latencies are summarised in windows by their median, so that a few slow
  outliers do not move it. A window takes ``max(MIN_WINDOW_SAMPLES, limit)`` answers (about
  one round trip of a busy provider), more if they are uneven, until the median is known
  within ``MEDIAN_PRECISION`` (``MAX_WINDOW_SAMPLES`` at most). It counts only requests that
  started after it opened: older ones ran under a limit no longer in force.
- **Limit.** A window's median above ``baseline x (1 + TOLERANCE)`` means a queue: the limit
  is multiplied by ``baseline x (1 + TOLERANCE) / median`` (at least ``MIN_GRADIENT``, and
  at least one request less), which brings the latency back to the tolerance. Otherwise the
  limit grows by ``max(1, GROWTH x limit)``, but only when the window saw at least
  ``SATURATION x limit`` requests in flight: not while the provider is not even busy. So it
  settles between ``capacity x (1 + TOLERANCE)`` and ``1 + GROWTH`` times that.
- **Baseline.** The provider's latency without a queue, always a **probe**'s median: a window
  at ``PROBE_DEPTH`` of the limit, under what the provider serves without a queue, so that
  its queue drains. A probe clearly (``TOLERANCE``) faster than the baseline it replaces
  shows that one had a queue in it, and may have one itself: the next window probes deeper
  by the same factor until the latency stops falling, and the limit goes back to where that
  last step started, at most. The limit starts with a probe. It probes again after
  ``QUEUED_WINDOWS`` windows in a row with a queue: cuts in proportion to the latency end a
  queue of our own, so one that outlasts them is the provider's own latency, and if the
  probe finds the provider slower, those cuts are undone. It probes after a window clearly
  faster than the baseline, and while the limit binds, whenever the baseline is
  ``BASELINE_MAX_AGE`` seconds and ``BASELINE_MAX_WINDOWS`` windows old, in case the
  provider got faster under our own queue.
- **Overload.** A 429, 503, 529 or timeout multiplies the limit by ``BACKOFF`` at once, once
  per round: those from requests that started before the last cut were sent under the old
  limit and are already answered by it. Their latency is no sample.

Pure code: no I/O; time comes only from the injected clock. The limit never leaves the floor
and ceiling given.
"""

from __future__ import annotations

import math
from bisect import insort

from .clock import Clock

__all__ = [
    "BACKOFF",
    "BASELINE_MAX_AGE",
    "BASELINE_MAX_WINDOWS",
    "GROWTH",
    "MAX_WINDOW_SAMPLES",
    "MEDIAN_PRECISION",
    "MIN_GRADIENT",
    "MIN_WINDOW_SAMPLES",
    "PROBE_DEPTH",
    "QUEUED_WINDOWS",
    "SATURATION",
    "TOLERANCE",
    "AdaptiveLimit",
]

# A window's median within 25% of the baseline is no queue (Envoy's default minRTT buffer):
# latency has noise of its own. The provider's queue adds about this much to its latency, at
# most this and GROWTH together (x1.375).
TOLERANCE = 0.25
# One window cuts the limit to half at most (Envoy and Gradient2 clamp alike): one bad window
# cannot collapse it, and a real queue is still halved every round trip.
MIN_GRADIENT = 0.5
# Growth per window without a queue, as a share of the limit (at least one request): a
# provider ten times bigger is found in about 25 windows, and the overshoot past the
# tolerance, before the next window takes it back, is at most 10%.
GROWTH = 0.1
# Grow only when a window saw at least half the limit in flight (Netflix's rule in Vegas and
# Gradient2): below that the limit is not what holds requests back.
SATURATION = 0.5
# The fewest answers a window (or a probe) summarises: fewer make a noisy median.
MIN_WINDOW_SAMPLES = 8
# A window goes on until its median is known within 10% (one standard error), a fraction of
# TOLERANCE, so that noise rarely passes for a queue; uneven latencies need more answers (LLM
# answers of any length, about 160). Up to a cap, where it decides with what it has.
MEDIAN_PRECISION = 0.1
MAX_WINDOW_SAMPLES = 256
# Multiplier for the limit on a 429/503/529 or timeout: TCP Reno's halving, since the provider
# said outright that it is over its capacity.
BACKOFF = 0.5
# A probe's limit, as a share of the limit: the limit settles at most 1.375 times the
# provider's capacity, so 0.7 of it is under capacity (0.96 at most). Deeper costs more
# throughput; shallower could probe with a queue and let a baseline creep up.
PROBE_DEPTH = 0.7
# Windows in a row that saw a queue before the baseline is re-measured: each cuts the limit in
# proportion to the queue, so one of our own is gone after one window, two if it was deep
# enough for MIN_GRADIENT to hold the first cut back. A third says the latency is the
# provider's own (Envoy re-measures after five windows at the floor; this needs no floor).
QUEUED_WINDOWS = 3
# While the limit binds, the baseline is re-measured once it is this many seconds and this
# many windows old (BBR re-probes its min RTT every 10 s): a probe, a window or two at 70%,
# then costs a few percent of throughput at most, however slow the provider.
BASELINE_MAX_AGE = 10.0
BASELINE_MAX_WINDOWS = 10
# A sample counts only if it started this long after its window opened: one that started at
# the same moment (give or take float error) may have been sent under the old limit.
_SLACK = 1e-6
# Shorter latencies count as this long: below a millisecond, event-loop noise is no signal
# (a mock provider answers at once).
_RESOLUTION = 0.001


class AdaptiveLimit:
    """One provider's concurrency limit, moved by its latency and its overload answers.

    Feed it every ended attempt with ``on_sample``; give the limit it returns to the
    provider's ``ConcurrencyLimit.set_limit``. It starts at ``initial`` (the floor unless
    given) with a probe: the baseline is measured there, and lower while the latency keeps
    falling.
    """

    __slots__ = (
        "_baseline",
        "_ceiling",
        "_clock",
        "_estimate",
        "_floor",
        "_last_cut",
        "_limit",
        "_opened",
        "_peak",
        "_probe_from",
        "_probe_saved",
        "_probed_at",
        "_probed_windows",
        "_queued_from",
        "_queued_windows",
        "_samples",
    )

    def __init__(
        self, *, floor: int, ceiling: int, initial: int | None = None, clock: Clock
    ) -> None:
        if floor < 1:
            raise ValueError(f"floor must be at least 1, got {floor}")
        if ceiling < floor:
            raise ValueError(f"ceiling must be at least the floor ({floor}), got {ceiling}")
        start = floor if initial is None else initial
        if not floor <= start <= ceiling:
            raise ValueError(f"initial must be between {floor} and {ceiling}, got {start}")
        now = clock.monotonic()
        self._floor = floor
        self._ceiling = ceiling
        self._clock = clock
        # The limit as computed (fractional), and the one in force (lower while probing).
        self._estimate = float(start)
        self._limit = start
        # Infinitely slow until the first probe has measured it.
        self._baseline = math.inf
        # Windows in a row with a queue, and the estimate before the first of them cut it.
        self._queued_windows = 0
        self._queued_from = float(start)
        # While probing: the estimate to go back to, and the limit this step came down from.
        self._probe_saved: float | None = float(start)
        self._probe_from = float(start)
        # When the last probe started, and windows since.
        self._probed_at = now
        self._probed_windows = 0
        self._last_cut = -math.inf
        self._opened = now
        self._samples: list[float] = []
        self._peak = 0

    @property
    def limit(self) -> int:
        """Requests allowed in flight now."""
        return self._limit

    @property
    def baseline(self) -> float | None:
        """The provider's latency without a queue, in seconds (None until measured)."""
        return None if self._baseline == math.inf else self._baseline

    @property
    def probing(self) -> bool:
        """Whether the limit is lowered for now, to measure the baseline."""
        return self._probe_saved is not None

    def on_sample(
        self,
        latency: float,
        *,
        in_flight: int,
        overloaded: bool = False,
        started: float | None = None,
    ) -> int | None:
        """One attempt ended after ``latency`` seconds, with ``in_flight`` requests running (it
        included) as it ended; ``overloaded`` for a 429/503/529 or a timeout. Returns the new
        limit when it changed, else None.

        ``started`` is when the attempt started, on this limiter's clock: needed only when
        ``latency`` is not the whole attempt (a stream's time to first token, say).
        Only successes and overloads belong here: a fast 400 or 500 says nothing about the
        provider's queue and would drag the baseline down.
        """
        if not latency >= 0:
            raise ValueError(f"latency must be a non-negative number, got {latency}")
        now = self._clock.monotonic()
        if started is None:
            started = now - latency
        if overloaded:
            return self._overloaded(started, now)
        if started <= self._opened + _SLACK:
            return None
        samples = self._samples
        insort(samples, max(latency, _RESOLUTION))
        self._peak = max(self._peak, in_flight)
        if len(samples) < max(MIN_WINDOW_SAMPLES, self._limit):
            return None
        if len(samples) < min(_needed(samples), MAX_WINDOW_SAMPLES):
            return None
        median = _median(samples)
        peak = self._peak
        self._open_window(now)
        saved = self._probe_saved
        if saved is not None:
            return self._end_probe(median, saved, now)
        return self._end_window(median, peak, now)

    def _overloaded(self, started: float, now: float) -> int | None:
        if started < self._last_cut:
            return None
        self._last_cut = now
        self._open_window(now)
        self._queued_windows = 0
        saved = self._probe_saved
        if saved is not None:
            # The probe goes on, from now, below the cut limit it will go back to.
            saved = self._probe_saved = self._queued_from = max(self._floor, saved * BACKOFF)
            return self._enforce(min(self._limit, _whole(saved)))
        self._estimate = self._queued_from = max(self._floor, self._estimate * BACKOFF)
        return self._enforce(_whole(self._estimate))

    def _end_window(self, median: float, peak: int, now: float) -> int | None:
        baseline = self._baseline
        allowed = baseline * (1 + TOLERANCE)
        estimate = self._estimate
        binding = peak >= SATURATION * estimate
        if median <= allowed:
            self._queued_windows = 0
            if binding:
                estimate += max(1.0, GROWTH * estimate)
        else:
            if not self._queued_windows:
                self._queued_from = estimate
            self._queued_windows += 1
            # At least a whole request less: a cut lost to rounding would leave the queue.
            estimate = min(estimate * max(MIN_GRADIENT, allowed / median), self._limit - 1)
        estimate = self._estimate = min(max(estimate, self._floor), self._ceiling)
        self._probed_windows += 1
        stale = (
            binding
            and self._probed_windows >= BASELINE_MAX_WINDOWS
            and now - self._probed_at >= BASELINE_MAX_AGE
        )
        faster = median * (1 + TOLERANCE) < baseline
        if stale or faster or self._queued_windows >= QUEUED_WINDOWS:
            self._probe_saved = estimate
            return self._probe(estimate, now)
        return self._enforce(_whole(estimate))

    def _end_probe(self, median: float, saved: float, now: float) -> int | None:
        previous = self._baseline
        self._baseline = median
        if median * (1 + TOLERANCE) < previous and self._limit > self._floor:
            return self._probe(self._limit, now)
        if median > previous * (1 + TOLERANCE) and self._queued_windows:
            # The queue those windows saw was the provider's own latency: undo their cuts.
            estimate = max(saved, self._queued_from)
        else:
            estimate = min(saved, self._probe_from)
        self._probe_saved = None
        self._queued_windows = 0
        self._estimate = estimate
        return self._enforce(_whole(estimate))

    def _probe(self, start: float, now: float) -> int | None:
        self._probe_from = start
        self._probed_at = now
        self._probed_windows = 0
        return self._enforce(_whole(PROBE_DEPTH * start))

    def _open_window(self, now: float) -> None:
        self._opened = now
        self._samples = []
        self._peak = 0

    def _enforce(self, limit: int) -> int | None:
        limit = min(max(limit, self._floor), self._ceiling)
        if limit == self._limit:
            return None
        self._limit = limit
        return limit


def _whole(requests: float) -> int:
    # Float error (11 x 1.25 / 1.375 = 9.999...) must not cost a whole request.
    return int(requests + 1e-9)


def _needed(ordered: list[float]) -> int:
    """Answers needed for the median of latencies spread like these to be known within
    MEDIAN_PRECISION: its standard error is sqrt(pi / 2) sigma / sqrt(n), sigma that of their
    logarithms, 1.349 times smaller than their interquartile range."""
    low, high = ordered[len(ordered) // 4], ordered[3 * len(ordered) // 4]
    sigma = math.log(high / low) / 1.349
    return math.ceil((math.sqrt(math.pi / 2) * sigma / MEDIAN_PRECISION) ** 2)


def _median(values: list[float]) -> float:
    middle = len(values) // 2
    if len(values) % 2:
        return values[middle]
    return (values[middle - 1] + values[middle]) / 2
