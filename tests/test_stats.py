from __future__ import annotations

import math
import random

import pytest

from leapasgi.stats import (
    DEFAULT_EWMA_DECAY,
    DEFAULT_WINDOW,
    ERROR_LATENCY_PENALTY,
    LatencyWindow,
    PeakEWMA,
    ProviderStats,
    Quantiles,
)

NOW = 1_000.0


def nearest_rank(values: list[float], percent: int) -> float:
    ordered = sorted(values)
    return ordered[max(math.ceil(percent / 100 * len(ordered)), 1) - 1]


def test_empty_window_has_no_quantiles() -> None:
    window = LatencyWindow()

    assert len(window) == 0
    assert window.quantiles() is None


def test_single_sample_is_every_quantile() -> None:
    window = LatencyWindow()
    window.add(0.25)

    assert window.quantiles() == Quantiles(p50=0.25, p95=0.25, p99=0.25)


def test_quantiles_of_1_to_100_are_the_ranks() -> None:
    window = LatencyWindow(size=100)
    for value in random.Random(7).sample(range(1, 101), 100):
        window.add(float(value))

    assert window.quantiles() == Quantiles(p50=50.0, p95=95.0, p99=99.0)


@pytest.mark.parametrize("count", [1, 2, 3, 10, 99, 100, 101, 511, 512, 513, 2_000])
def test_quantiles_match_nearest_rank_over_the_last_samples(count: int) -> None:
    rng = random.Random(count)
    values = [rng.lognormvariate(-1.0, 0.8) for _ in range(count)]
    window = LatencyWindow()
    for value in values:
        window.add(value)

    recent = values[-DEFAULT_WINDOW:]
    assert len(window) == len(recent)
    assert window.quantiles() == Quantiles(
        p50=nearest_rank(recent, 50), p95=nearest_rank(recent, 95), p99=nearest_rank(recent, 99)
    )


def test_window_is_a_ring_that_forgets_the_oldest() -> None:
    window = LatencyWindow(size=3)
    for value in (100.0, 200.0, 300.0, 1.0, 2.0):
        window.add(value)

    assert len(window) == 3
    # Only 300, 1, 2 remain: the two oldest (100, 200) were overwritten.
    assert window.quantiles() == Quantiles(p50=2.0, p95=300.0, p99=300.0)


def test_window_size_bounds_its_length() -> None:
    window = LatencyWindow(size=8)
    for i in range(1_000):
        window.add(float(i))
        assert len(window) == min(i + 1, 8)

    assert window.quantiles() == Quantiles(p50=995.0, p95=999.0, p99=999.0)


@pytest.mark.parametrize("size", [0, -1])
def test_window_size_must_be_positive(size: int) -> None:
    with pytest.raises(ValueError, match="window size"):
        LatencyWindow(size=size)


def test_ewma_is_none_before_any_sample() -> None:
    ewma = PeakEWMA()

    assert ewma.value is None
    assert ewma.samples == 0


def test_ewma_jumps_up_at_once() -> None:
    ewma = PeakEWMA()
    ewma.observe(0.1, now=NOW)
    ewma.observe(5.0, now=NOW + 0.001)

    assert ewma.value == 5.0
    assert ewma.samples == 2


def test_ewma_decays_down_by_elapsed_time() -> None:
    ewma = PeakEWMA(decay=10.0)
    ewma.observe(1.0, now=NOW)
    ewma.observe(0.0, now=NOW + 10.0)

    # One decay time later, the old peak keeps weight e^-1.
    assert ewma.value == pytest.approx(math.exp(-1.0))


def test_ewma_lower_sample_moves_it_less_when_little_time_passed() -> None:
    quick, slow = PeakEWMA(), PeakEWMA()
    for ewma, gap in ((quick, 0.1), (slow, 30.0)):
        ewma.observe(2.0, now=NOW)
        ewma.observe(0.1, now=NOW + gap)

    quick_value, slow_value = quick.value, slow.value
    assert quick_value is not None
    assert slow_value is not None
    assert 0.1 < slow_value < quick_value < 2.0


def test_ewma_converges_to_a_steady_latency() -> None:
    ewma = PeakEWMA()
    ewma.observe(3.0, now=NOW)
    for i in range(1, 200):
        ewma.observe(0.1, now=NOW + i)

    assert ewma.value == pytest.approx(0.1, abs=1e-6)


def test_ewma_does_not_decay_without_samples() -> None:
    ewma = PeakEWMA()
    ewma.observe(2.0, now=NOW)

    assert ewma.value == 2.0


def test_ewma_ignores_time_going_backwards() -> None:
    ewma = PeakEWMA()
    ewma.observe(1.0, now=NOW)
    ewma.observe(0.5, now=NOW - 5.0)

    assert ewma.value == 1.0


@pytest.mark.parametrize("decay", [0.0, -1.0, math.nan])
def test_ewma_decay_must_be_positive(decay: float) -> None:
    with pytest.raises(ValueError, match="decay"):
        PeakEWMA(decay=decay)


def test_default_constants() -> None:
    assert DEFAULT_WINDOW == 512
    assert DEFAULT_EWMA_DECAY == 10.0
    assert ERROR_LATENCY_PENALTY == 2.0


def test_fast_failing_provider_looks_slower_than_a_healthy_one() -> None:
    healthy, failing = ProviderStats(), ProviderStats()
    now = NOW
    for _ in range(5):
        now += 1.0
        healthy.record_success(0.1, now=now)
        failing.record_failure("UpstreamUnavailableError", 0.001, now=now)

    healthy_cost, failing_cost = healthy.ewma.value, failing.ewma.value
    assert healthy_cost == pytest.approx(0.1)
    assert failing_cost is not None
    assert healthy_cost is not None
    assert failing_cost > healthy_cost
    assert failing_cost >= ERROR_LATENCY_PENALTY
    # Failures never enter the latency users are shown.
    assert len(failing.latency) == 0


def test_one_recovery_does_not_erase_the_failure_penalty_at_once() -> None:
    stats = ProviderStats()
    stats.record_failure("timeout", 0.001, now=NOW)
    stats.record_success(0.1, now=NOW + 0.5)

    cost = stats.ewma.value
    assert cost is not None
    assert cost > 1.0


def test_success_updates_counters_windows_and_tokens() -> None:
    stats = ProviderStats(window=4)
    stats.begin()
    stats.record_success(0.2, now=NOW, ttft=0.05, prompt_tokens=10, completion_tokens=3)
    stats.end()
    stats.begin()
    stats.record_success(0.4, now=NOW + 1, prompt_tokens=5, completion_tokens=7)
    stats.end()

    assert stats.requests == 2
    assert stats.successes == 2
    assert stats.in_flight == 0
    assert stats.prompt_tokens == 15
    assert stats.completion_tokens == 10
    assert len(stats.latency) == 2
    assert len(stats.ttft) == 1
    assert stats.ewma.samples == 2
    assert stats.error_count == 0
    assert stats.last_error is None
    assert stats.last_error_at is None


def test_failure_records_kind_message_and_time() -> None:
    stats = ProviderStats()
    stats.record_failure("RateLimitError", 0.3, now=NOW, message="429 from upstream")
    stats.record_failure("timeout", 30.0, now=NOW + 31)

    assert stats.errors == {"RateLimitError": 1, "timeout": 1}
    assert stats.consecutive_errors == 2
    assert stats.error_count == 2
    assert stats.last_error == "timeout"
    assert stats.last_error_at == NOW + 31
    assert stats.ewma.value == 30.0 + ERROR_LATENCY_PENALTY


def test_success_resets_consecutive_errors() -> None:
    stats = ProviderStats()
    stats.record_failure("timeout", 1.0, now=NOW)
    stats.record_failure("timeout", 1.0, now=NOW + 1)
    stats.record_success(0.1, now=NOW + 2)

    assert stats.consecutive_errors == 0
    assert stats.errors["timeout"] == 2


def test_success_rate() -> None:
    stats = ProviderStats()
    assert stats.success_rate is None

    for i in range(3):
        stats.record_success(0.1, now=NOW + i)
    stats.record_failure("timeout", 1.0, now=NOW + 3)

    assert stats.success_rate == 0.75


def test_client_errors_are_not_provider_failures() -> None:
    stats = ProviderStats()
    stats.record_success(0.1, now=NOW)
    stats.record_failure("timeout", 1.0, now=NOW + 1)
    for _ in range(10):
        stats.record_client_error("InvalidRequestError")

    assert stats.errors["InvalidRequestError"] == 10
    assert stats.error_count == 11
    assert stats.consecutive_errors == 1
    assert stats.success_rate == 0.5
    assert stats.last_error == "timeout"
    assert stats.ewma.samples == 2


def test_only_client_errors_leave_success_rate_undefined() -> None:
    stats = ProviderStats()
    stats.record_client_error("InvalidRequestError")

    assert stats.success_rate is None
    assert stats.ewma.value is None


def test_in_flight_never_goes_negative() -> None:
    stats = ProviderStats()
    stats.end()
    assert stats.in_flight == 0

    stats.begin()
    stats.begin()
    assert stats.in_flight == 2
    for _ in range(5):
        stats.end()

    assert stats.in_flight == 0
    assert stats.requests == 2


def test_stats_pass_options_through() -> None:
    stats = ProviderStats(window=2, decay=1.0, penalty=0.0)
    for value in (1.0, 2.0, 3.0):
        stats.record_success(value, now=NOW)
    stats.record_failure("timeout", 0.5, now=NOW + 1.0)

    assert len(stats.latency) == 2
    # penalty 0 and decay 1 s: the old peak 3.0 keeps weight e^-1 against the 0.5 failure.
    assert stats.ewma.value == pytest.approx(3.0 * math.exp(-1.0) + 0.5 * (1 - math.exp(-1.0)))


def test_stats_are_slotted() -> None:
    with pytest.raises(AttributeError):
        ProviderStats().unknown = 1  # type: ignore[attr-defined]
