"""The adaptive concurrency limit, on a simulated upstream and a fake clock.

``simulate`` is scorecard row 10 in miniature, deterministic and instant: ``clients`` that
each send again as soon as they are answered, admitted ``limit`` at a time, and an upstream
of ``capacity``: "shared" (latency ``base x max(1, in_flight / capacity)``, as when a server
shares itself among its requests) or "fifo" (``capacity`` workers and a line). Run
``python -m tests.test_adaptive`` for its figures.
"""

from __future__ import annotations

import heapq
import math
import random
from dataclasses import dataclass, field
from typing import Literal

import pytest

from leapasgi.adaptive import (
    MAX_WINDOW_SAMPLES,
    MIN_WINDOW_SAMPLES,
    PROBE_DEPTH,
    QUEUED_WINDOWS,
    AdaptiveLimit,
)
from leapasgi.clock import FakeClock

BASE = 0.05


@dataclass
class Run:
    """What one simulated run saw."""

    seconds: float
    # The upstream's p99 without load.
    unloaded_p99: float
    # (seconds from the start, limit): the first limit, then every change.
    limits: list[tuple[float, int]]
    # (seconds from the start it ended, latency) of every answer, in order.
    answers: list[tuple[float, float]] = field(default_factory=list)

    def limit_range(self, start: float, end: float = math.inf) -> tuple[int, int]:
        """The lowest and highest limit in force between ``start`` and ``end``."""
        before = [limit for at, limit in self.limits if at <= start]
        during = [limit for at, limit in self.limits if start < at < end]
        seen = before[-1:] + during
        return min(seen), max(seen)

    def settled_at(self, low: int, high: int) -> float | None:
        """When the limit came into [low, high] for good (None: it never did)."""
        settled: float | None = None
        for at, limit in self.limits:
            if not low <= limit <= high:
                settled = None
            elif settled is None:
                settled = at
        return settled

    def p99(self, start: float = 0.0, end: float = math.inf) -> float:
        """The 99th percentile latency of the answers that ended between ``start`` and ``end``."""
        latencies = sorted(latency for at, latency in self.answers if start <= at < end)
        return latencies[math.ceil(0.99 * len(latencies)) - 1]

    def throughput(self, start: float = 0.0, end: float | None = None) -> float:
        """Answers a second between ``start`` and ``end``."""
        end = self.seconds if end is None else end
        return sum(1 for at, _ in self.answers if start <= at < end) / (end - start)

    def report(self) -> str:
        """The figures scorecard row 10 asks for."""
        settled = self.settled_at(6, 16)
        low, high = self.limit_range(10.0)
        return "\n".join(
            [
                f"limit settled into [6, 16] at {settled:.2f} s" if settled is not None else "",
                f"limit after 10 s: {low} to {high}, last {self.limits[-1][1]}",
                f"p99 {self.p99() * 1000:.1f} ms, unloaded {self.unloaded_p99 * 1000:.1f} ms "
                f"(x{self.p99() / self.unloaded_p99:.2f}); after 10 s "
                f"x{self.p99(10.0) / self.unloaded_p99:.2f}",
                f"answers a second after 10 s: {self.throughput(10.0):.1f}",
            ]
        )


def simulate(
    *,
    clients: int = 64,
    seconds: float = 30.0,
    capacity: int = 8,
    base: float = BASE,
    upstream: Literal["shared", "fifo"] = "shared",
    jitter: float = 0.0,
    seed: int = 0,
    slower: tuple[float, float] | None = None,
    floor: int = 1,
    ceiling: int = 64,
    initial: int | None = None,
) -> Run:
    """Run ``clients`` closed-loop clients against the upstream through an ``AdaptiveLimit``.

    Each request takes ``base`` seconds, times a uniform ``1 +- jitter``, times ``factor`` from
    ``slower = (at, factor)``'s ``at`` seconds on. A "shared" request's latency is fixed when
    it starts, from the requests in flight then.
    """
    clock = FakeClock()
    start = clock.monotonic()
    noise = random.Random(seed)
    limiter = AdaptiveLimit(floor=floor, ceiling=ceiling, initial=initial, clock=clock)
    run = Run(
        seconds=seconds,
        unloaded_p99=base * (1 + jitter * (2 * 0.99 - 1)),
        limits=[(0.0, limiter.limit)],
    )
    ends: list[tuple[float, int, float]] = []
    workers = [start] * capacity
    in_flight = 0
    sent = 0

    def admit(now: float) -> None:
        nonlocal in_flight, sent
        while in_flight < min(limiter.limit, clients):
            in_flight += 1
            sent += 1
            service = base * (1 + noise.uniform(-jitter, jitter))
            if slower is not None and now - start >= slower[0]:
                service *= slower[1]
            if upstream == "shared":
                end = now + service * max(1.0, in_flight / capacity)
            else:
                end = max(now, heapq.heappop(workers)) + service
                heapq.heappush(workers, end)
            heapq.heappush(ends, (end, sent, end - now))

    admit(start)
    while ends and ends[0][0] - start < seconds:
        end, _, latency = heapq.heappop(ends)
        clock.advance(end - clock.monotonic())
        run.answers.append((end - start, latency))
        changed = limiter.on_sample(latency, in_flight=in_flight)
        if changed is not None:
            run.limits.append((end - start, changed))
        in_flight -= 1
        admit(end)
    return run


def feed(clock: FakeClock, limiter: AdaptiveLimit, latency: float) -> list[int | None]:
    """A window of answers, all ``latency`` long, that started just after the last ones ended,
    with the limit in flight."""
    clock.advance(latency + 0.001)
    count = max(MIN_WINDOW_SAMPLES, limiter.limit)
    return [limiter.on_sample(latency, in_flight=limiter.limit) for _ in range(count)]


def measured(*, limit: int, baseline: float = BASE) -> tuple[FakeClock, AdaptiveLimit]:
    """A limiter at ``limit`` whose first probe has measured ``baseline``."""
    clock = FakeClock()
    limiter = AdaptiveLimit(floor=1, ceiling=100, initial=limit, clock=clock)
    while limiter.probing:
        feed(clock, limiter, baseline)
    assert limiter.baseline == baseline
    assert limiter.limit == limit
    return clock, limiter


# Scorecard row 10: 64 clients, capacity 8, 50 ms, 30 s.


def test_row_10_converges_within_10_seconds_and_keeps_the_queue_short() -> None:
    run = simulate()
    settled = run.settled_at(6, 16)
    assert settled is not None
    assert settled < 10.0
    assert run.p99() < 2 * run.unloaded_p99


def test_row_10_keeps_the_upstream_busy() -> None:
    run = simulate()
    # The upstream serves capacity / base = 160 a second at most.
    assert run.throughput(10.0) > 0.97 * 160


@pytest.mark.parametrize("jitter", [0.05, 0.2, 0.5])
def test_row_10_with_a_fifo_upstream(jitter: float) -> None:
    run = simulate(upstream="fifo", jitter=jitter)
    assert run.settled_at(6, 16) is not None
    assert run.p99() < 2 * run.unloaded_p99
    assert run.throughput(10.0) > 0.95 * 160


@pytest.mark.parametrize("capacity", [2, 8, 32, 128])
def test_the_limit_finds_other_capacities(capacity: int) -> None:
    run = simulate(capacity=capacity, clients=4 * capacity, ceiling=4 * capacity, seconds=60.0)
    low, high = run.limit_range(30.0)
    assert int(PROBE_DEPTH * capacity) <= low
    assert high <= 1.375 * capacity + 1
    assert run.p99(30.0) < 2 * BASE
    assert run.throughput(30.0) > 0.97 * capacity / BASE


def test_a_high_initial_limit_comes_down_at_once() -> None:
    run = simulate(initial=64)
    settled = run.settled_at(6, 16)
    assert settled is not None
    assert settled < 3.0
    assert run.p99(3.0) < 2 * BASE


# Bounds.


def test_the_floor_and_ceiling_hold() -> None:
    run = simulate(floor=10, ceiling=12, initial=10)
    assert run.limit_range(0.0) == (10, 12)
    roomy = simulate(capacity=64, floor=1, ceiling=5)
    assert roomy.limit_range(0.0) == (1, 5)
    assert roomy.limits[-1][1] == 5


def test_overloads_never_go_below_the_floor() -> None:
    clock = FakeClock()
    limiter = AdaptiveLimit(floor=3, ceiling=10, initial=10, clock=clock)
    for _ in range(10):
        clock.advance(1.0)
        limiter.on_sample(0.5, in_flight=10, overloaded=True)
    assert limiter.limit == 3


def test_it_starts_at_the_floor_unless_told() -> None:
    clock = FakeClock()
    limiter = AdaptiveLimit(floor=2, ceiling=9, clock=clock)
    assert limiter.limit == 2
    assert limiter.probing
    assert limiter.baseline is None
    assert AdaptiveLimit(floor=2, ceiling=9, initial=5, clock=clock).limit == 5


def test_bad_arguments_are_refused() -> None:
    clock = FakeClock()
    with pytest.raises(ValueError, match="floor"):
        AdaptiveLimit(floor=0, ceiling=4, clock=clock)
    with pytest.raises(ValueError, match="ceiling"):
        AdaptiveLimit(floor=4, ceiling=3, clock=clock)
    with pytest.raises(ValueError, match="initial"):
        AdaptiveLimit(floor=2, ceiling=4, initial=5, clock=clock)
    limiter = AdaptiveLimit(floor=1, ceiling=4, clock=clock)
    with pytest.raises(ValueError, match="latency"):
        limiter.on_sample(-1.0, in_flight=1)
    with pytest.raises(ValueError, match="latency"):
        limiter.on_sample(math.nan, in_flight=1)


# Overloads.


def test_a_burst_of_429s_halves_the_limit_once() -> None:
    clock, limiter = measured(limit=20)
    clock.advance(0.05)
    # Every request in flight comes back 429: they were all sent under the old limit.
    changes = [limiter.on_sample(0.05, in_flight=20, overloaded=True) for _ in range(20)]
    assert changes == [10] + [None] * 19
    # A request sent after the cut, answered 429 too, cuts again.
    clock.advance(0.05)
    assert limiter.on_sample(0.04, in_flight=10, overloaded=True) == 5


def test_overloads_are_no_latency_samples() -> None:
    clock, limiter = measured(limit=20)
    for _ in range(100):
        clock.advance(0.01)
        limiter.on_sample(0.001, in_flight=20, overloaded=True)
    assert limiter.baseline == BASE
    assert not limiter.probing


def test_an_overload_during_a_probe_cuts_the_limit_it_goes_back_to() -> None:
    clock = FakeClock()
    limiter = AdaptiveLimit(floor=1, ceiling=100, initial=40, clock=clock)
    feed(clock, limiter, BASE)
    assert limiter.probing
    assert limiter.limit == 28
    clock.advance(0.01)
    assert limiter.on_sample(0.005, in_flight=28, overloaded=True) == 20
    while limiter.probing:
        feed(clock, limiter, BASE)
    assert limiter.limit == 20
    assert limiter.baseline == BASE


# Outliers and light load.


def test_one_slow_outlier_does_not_move_the_limit() -> None:
    clock, limiter = measured(limit=20)
    clock.advance(5.001)
    changes = [limiter.on_sample(latency, in_flight=20) for latency in [BASE] * 19 + [5.0]]
    # A window without a queue: the limit grows by its headroom, as it would without.
    assert changes == [None] * 19 + [22]
    assert limiter.baseline == BASE


def test_a_window_of_slow_requests_at_most_halves_the_limit() -> None:
    clock, limiter = measured(limit=40)
    assert feed(clock, limiter, 20 * BASE)[-1] == 20


def test_uneven_latencies_make_longer_windows() -> None:
    clock, limiter = measured(limit=20)
    clock.advance(0.2)
    # Half quick, half four times slower: a median that takes some 170 answers to pin down.
    changes = [limiter.on_sample(lat, in_flight=20) for lat in [0.025, 0.1] * 100]
    ended = [answer for answer, change in enumerate(changes, 1) if change is not None]
    assert 160 < ended[0] < 180


def test_windows_end_at_the_cap_however_uneven() -> None:
    clock, limiter = measured(limit=20)
    clock.advance(10.0)
    # Quartiles 5,000 times apart, the median at the baseline.
    cycle = [0.001, 5.0, BASE, 0.001, 5.0, BASE, 0.001, 5.0]
    changes = [limiter.on_sample(lat, in_flight=20) for lat in cycle * 40]
    assert changes.index(22) == MAX_WINDOW_SAMPLES - 1


def test_a_provider_that_answers_at_once_is_not_noise() -> None:
    clock, limiter = measured(limit=20, baseline=0.001)
    # Microseconds apart: all within the resolution, no queue.
    assert feed(clock, limiter, 0.00001)[-1] == 22
    assert feed(clock, limiter, 0.0008)[-1] == 24


def test_light_load_does_not_grow_the_limit() -> None:
    run = simulate(clients=2)
    assert run.limit_range(0.0)[1] <= 5
    assert run.p99() == pytest.approx(BASE)


def test_answers_to_requests_sent_before_a_window_opened_are_not_counted() -> None:
    clock, limiter = measured(limit=20)
    # Started before the window opened: sent under another limit.
    for _ in range(100):
        assert limiter.on_sample(1.0, in_flight=20) is None
    assert feed(clock, limiter, BASE)[-1] == 22


def test_started_says_when_a_sample_started() -> None:
    clock, limiter = measured(limit=20)
    clock.advance(3.0)
    # Time to first token, of streams that started after the window opened.
    changes = [
        limiter.on_sample(BASE, in_flight=20, started=clock.monotonic() - 2.0) for _ in range(20)
    ]
    assert changes[-1] == 22


# The baseline.


def test_a_permanently_slower_provider_is_rebaselined() -> None:
    run = simulate(slower=(15.0, 2.0), seconds=40.0)
    # The limit drops while the latency looks like a queue of ours, until a probe shows that
    # it is the provider's own; then the cuts are undone: capacity is still 8.
    assert run.limit_range(15.0, 17.0)[0] < 6
    recovered = run.settled_at(7, 11)
    assert recovered is not None
    assert recovered < 18.0
    assert run.p99(20.0) < 2 * 2 * BASE
    assert run.throughput(20.0) > 0.97 * 80


def test_a_faster_provider_is_rebaselined() -> None:
    run = simulate(slower=(15.0, 0.5), seconds=40.0)
    assert 6 <= run.limit_range(16.0)[0] <= run.limit_range(16.0)[1] <= 11
    assert run.p99(16.0) < 2 * BASE / 2
    assert run.throughput(16.0) > 0.97 * 320


def test_queued_windows_remeasure_the_baseline_and_undo_their_cuts() -> None:
    clock, limiter = measured(limit=20)
    # The provider is three times slower now, whatever we send.
    for _ in range(QUEUED_WINDOWS):
        feed(clock, limiter, 3 * BASE)
    assert limiter.probing
    assert limiter.limit < 10
    while limiter.probing:
        feed(clock, limiter, 3 * BASE)
    assert limiter.baseline == 3 * BASE
    assert limiter.limit == 20


def test_a_queue_of_our_own_keeps_its_cuts() -> None:
    clock, limiter = measured(limit=20)
    # A queue that goes when the limit comes down.
    feed(clock, limiter, 1.5 * BASE)
    assert limiter.limit == 16
    feed(clock, limiter, BASE)
    assert limiter.limit == 18
    assert not limiter.probing


def test_the_baseline_is_remeasured_every_10_seconds_while_the_limit_binds() -> None:
    run = simulate(seconds=60.0)
    dips = [(at, limit) for at, limit in run.limits if at > 5.0 and limit < 8]
    assert [round(at) for at, _ in dips] == [10, 20, 30, 40, 50]
    assert all(limit >= 6 for _, limit in dips)
    assert run.throughput(5.0) > 0.99 * 160


if __name__ == "__main__":
    for upstream in ("shared", "fifo"):
        for jitter in (0.0, 0.1):
            print(f"{upstream} upstream, jitter {jitter}:")
            print(simulate(upstream=upstream, jitter=jitter).report(), end="\n\n")
