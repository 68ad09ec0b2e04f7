from __future__ import annotations

import pytest

from leapasgi.clock import FakeClock
from leapasgi.health import (
    DEFAULT_BASE_EJECTION,
    DEFAULT_FAILURE_THRESHOLD,
    DEFAULT_MAX_EJECTION,
    BreakerPolicy,
    BreakerState,
    CircuitBreaker,
    Health,
    least_recently_ejected,
)

BASE = DEFAULT_BASE_EJECTION


def make(policy: BreakerPolicy | None = None) -> tuple[CircuitBreaker, FakeClock]:
    clock = FakeClock()
    return CircuitBreaker(policy, clock=clock), clock


def eject(breaker: CircuitBreaker) -> None:
    while not breaker.record_failure():
        pass


def probe(breaker: CircuitBreaker, clock: FakeClock) -> None:
    """Wait out the ejection and take the probe slot."""
    assert breaker.open_until is not None
    clock.advance(max(breaker.open_until - clock.monotonic(), 0.0))
    assert breaker.allow()
    assert breaker.state is BreakerState.HALF_OPEN


def test_defaults_follow_envoy() -> None:
    policy = BreakerPolicy()

    assert policy.failure_threshold == DEFAULT_FAILURE_THRESHOLD == 5
    assert policy.base_ejection == DEFAULT_BASE_EJECTION == 30.0
    assert policy.max_ejection == DEFAULT_MAX_EJECTION == 300.0


@pytest.mark.parametrize(
    ("base", "maximum", "times", "expected"),
    [
        (30.0, 300.0, 0, 0.0),
        (30.0, 300.0, 1, 30.0),
        (30.0, 300.0, 2, 60.0),
        (30.0, 300.0, 3, 90.0),
        (30.0, 300.0, 9, 270.0),
        (30.0, 300.0, 10, 300.0),
        (30.0, 300.0, 11, 300.0),
        (30.0, 300.0, 1_000, 300.0),
        (30.0, 100.0, 4, 100.0),
        # The cap is never below the base time.
        (60.0, 10.0, 1, 60.0),
        (60.0, 10.0, 5, 60.0),
        (60.0, 0.0, 2, 60.0),
        (0.5, 300.0, 3, 1.5),
    ],
)
def test_ejection_time(base: float, maximum: float, times: int, expected: float) -> None:
    policy = BreakerPolicy(base_ejection=base, max_ejection=maximum)

    assert policy.ejection_time(times) == expected


@pytest.mark.parametrize(
    "kwargs",
    [
        {"failure_threshold": 0},
        {"base_ejection": 0.0},
        {"base_ejection": -1.0},
        {"max_ejection": -1.0},
    ],
)
def test_policy_rejects_nonsense(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="must"):
        BreakerPolicy(**kwargs)  # type: ignore[arg-type]


def test_new_breaker_is_closed_and_unknown() -> None:
    breaker, _ = make()

    assert breaker.state is BreakerState.CLOSED
    assert breaker.health is Health.UNKNOWN
    assert breaker.consecutive_failures == 0
    assert breaker.times_ejected == 0
    assert breaker.ejected_at is None
    assert breaker.open_until is None
    assert breaker.last_check_at is None
    assert breaker.last_check_ok is None
    assert breaker.allow()


def test_opens_after_exactly_threshold_consecutive_failures() -> None:
    breaker, clock = make()

    results = [breaker.record_failure() for _ in range(DEFAULT_FAILURE_THRESHOLD)]

    assert results == [False] * (DEFAULT_FAILURE_THRESHOLD - 1) + [True]
    assert breaker.state is BreakerState.OPEN
    assert breaker.consecutive_failures == DEFAULT_FAILURE_THRESHOLD
    assert breaker.times_ejected == 1
    assert breaker.ejected_at == clock.monotonic()
    assert breaker.open_until == clock.monotonic() + BASE
    assert not breaker.allow()


def test_a_success_in_between_resets_the_count() -> None:
    breaker, _ = make()
    for _ in range(DEFAULT_FAILURE_THRESHOLD - 1):
        assert not breaker.record_failure()
    breaker.record_success()

    assert breaker.consecutive_failures == 0
    for _ in range(DEFAULT_FAILURE_THRESHOLD - 1):
        assert not breaker.record_failure()
    assert breaker.allow()
    assert breaker.health is Health.HEALTHY
    assert breaker.record_failure()
    assert breaker.state is BreakerState.OPEN


def test_threshold_of_one_ejects_on_the_first_failure() -> None:
    breaker, _ = make(BreakerPolicy(failure_threshold=1))

    assert breaker.record_failure()
    assert breaker.state is BreakerState.OPEN


def test_open_blocks_until_open_until() -> None:
    breaker, clock = make()
    eject(breaker)

    clock.advance(BASE - 0.25)
    assert not breaker.allow()

    clock.advance(0.25)
    assert breaker.allow()
    assert breaker.state is BreakerState.HALF_OPEN


def test_failures_while_open_do_not_extend_the_ejection() -> None:
    breaker, _ = make()
    eject(breaker)
    open_until = breaker.open_until

    assert not breaker.record_failure()
    assert breaker.open_until == open_until
    assert breaker.times_ejected == 1
    assert breaker.state is BreakerState.OPEN


def test_late_success_while_open_does_not_close() -> None:
    breaker, _ = make()
    eject(breaker)
    breaker.record_success()

    assert breaker.state is BreakerState.OPEN
    assert breaker.consecutive_failures == 0
    assert not breaker.allow()


def test_exactly_one_probe_in_half_open() -> None:
    breaker, clock = make()
    eject(breaker)
    clock.advance(BASE * 10)

    allowed = [breaker.allow() for _ in range(100)]

    assert allowed.count(True) == 1
    assert allowed[0]
    assert breaker.state is BreakerState.HALF_OPEN


def test_probe_success_closes() -> None:
    breaker, clock = make()
    eject(breaker)
    probe(breaker, clock)

    breaker.record_success()

    assert breaker.state is BreakerState.CLOSED
    assert breaker.health is Health.HEALTHY
    assert breaker.consecutive_failures == 0
    assert all(breaker.allow() for _ in range(10))


def test_probe_failure_reopens_for_twice_the_base() -> None:
    breaker, clock = make()
    eject(breaker)
    probe(breaker, clock)

    assert breaker.record_failure()

    assert breaker.state is BreakerState.OPEN
    assert breaker.times_ejected == 2
    assert breaker.ejected_at == clock.monotonic()
    assert breaker.open_until == clock.monotonic() + 2 * BASE
    clock.advance(2 * BASE - 0.25)
    assert not breaker.allow()
    clock.advance(0.25)
    assert breaker.allow()


def test_ejection_time_grows_and_is_capped() -> None:
    breaker, clock = make()
    eject(breaker)
    durations = []
    for _ in range(13):
        assert breaker.open_until is not None
        durations.append(breaker.open_until - clock.monotonic())
        probe(breaker, clock)
        assert breaker.record_failure()

    assert durations == [30, 60, 90, 120, 150, 180, 210, 240, 270, 300, 300, 300, 300]


def test_growth_survives_a_quick_close() -> None:
    breaker, clock = make()
    eject(breaker)
    probe(breaker, clock)
    breaker.record_success()

    clock.advance(BASE - 1)
    eject(breaker)

    assert breaker.times_ejected == 2
    assert breaker.open_until == clock.monotonic() + 2 * BASE


def test_multiplier_decays_with_healthy_time() -> None:
    breaker, clock = make()
    eject(breaker)
    for _ in range(3):
        probe(breaker, clock)
        breaker.record_failure()
    assert breaker.times_ejected == 4
    probe(breaker, clock)
    breaker.record_success()

    assert breaker.times_ejected == 4
    clock.advance(BASE / 2)
    assert breaker.times_ejected == 4
    clock.advance(BASE / 2)
    assert breaker.times_ejected == 3
    clock.advance(BASE - 0.25)
    assert breaker.times_ejected == 3
    clock.advance(0.25)
    assert breaker.times_ejected == 2

    eject(breaker)

    assert breaker.times_ejected == 3
    assert breaker.open_until == clock.monotonic() + 3 * BASE


def test_multiplier_never_decays_below_zero() -> None:
    breaker, clock = make()
    eject(breaker)
    probe(breaker, clock)
    breaker.record_success()

    clock.advance(BASE * 100)
    assert breaker.times_ejected == 0
    eject(breaker)

    assert breaker.times_ejected == 1
    assert breaker.open_until == clock.monotonic() + BASE


def test_multiplier_does_not_decay_while_open() -> None:
    breaker, clock = make()
    eject(breaker)

    clock.advance(BASE * 100)

    assert breaker.times_ejected == 1
    assert breaker.allow()
    assert breaker.record_failure()
    assert breaker.times_ejected == 2


def test_release_probe_before_open_until_passed_waits_again() -> None:
    breaker, clock = make()
    eject(breaker)
    open_until = breaker.open_until
    breaker.force_probe()

    breaker.release_probe()

    assert breaker.state is BreakerState.OPEN
    assert breaker.open_until == open_until
    assert not breaker.allow()
    clock.advance(BASE)
    assert breaker.allow()


def test_release_probe_after_open_until_lets_the_next_caller_probe() -> None:
    breaker, clock = make()
    eject(breaker)
    probe(breaker, clock)
    assert not breaker.allow()

    breaker.release_probe()

    assert breaker.state is BreakerState.OPEN
    assert breaker.times_ejected == 1
    assert [breaker.allow() for _ in range(5)] == [True, False, False, False, False]


def test_release_probe_is_a_no_op_unless_half_open() -> None:
    breaker, _ = make()
    breaker.release_probe()
    assert breaker.allow()

    eject(breaker)
    breaker.release_probe()
    assert breaker.state is BreakerState.OPEN


def test_force_probe_skips_the_wait() -> None:
    breaker, clock = make()
    eject(breaker)

    breaker.force_probe()

    assert breaker.state is BreakerState.HALF_OPEN
    assert not breaker.allow()
    breaker.record_success()
    assert breaker.health is Health.HEALTHY
    assert clock.monotonic() < (breaker.open_until or 0.0)


def test_forced_probe_failure_ejects_again() -> None:
    breaker, clock = make()
    eject(breaker)
    breaker.force_probe()

    assert breaker.record_failure()

    assert breaker.times_ejected == 2
    assert breaker.open_until == clock.monotonic() + 2 * BASE


def test_force_probe_is_a_no_op_when_closed_or_half_open() -> None:
    breaker, clock = make()
    breaker.force_probe()
    assert breaker.allow()

    eject(breaker)
    probe(breaker, clock)
    breaker.force_probe()
    assert breaker.state is BreakerState.HALF_OPEN
    assert not breaker.allow()


def test_failed_check_ejects_at_once() -> None:
    breaker, clock = make()

    breaker.record_check(False)

    assert breaker.state is BreakerState.OPEN
    assert breaker.health is Health.UNHEALTHY
    assert breaker.last_check_ok is False
    assert breaker.last_check_at == clock.monotonic()
    assert breaker.times_ejected == 1
    assert breaker.open_until == clock.monotonic() + BASE
    assert not breaker.allow()


def test_failed_check_while_ejected_does_not_eject_again() -> None:
    breaker, clock = make()
    eject(breaker)
    open_until = breaker.open_until
    clock.advance(1.0)

    breaker.record_check(False)

    assert breaker.state is BreakerState.OPEN
    assert breaker.open_until == open_until
    assert breaker.times_ejected == 1
    assert breaker.last_check_at == clock.monotonic()


def test_successful_check_un_ejects() -> None:
    breaker, clock = make()
    eject(breaker)
    clock.advance(1.0)

    breaker.record_check(True)

    assert breaker.state is BreakerState.CLOSED
    assert breaker.health is Health.HEALTHY
    assert breaker.consecutive_failures == 0
    assert breaker.last_check_ok is True
    assert breaker.last_check_at == clock.monotonic()
    assert breaker.allow()
    # The multiplier is kept and decays with time, as after any other close.
    assert breaker.times_ejected == 1


def test_successful_check_closes_half_open() -> None:
    breaker, clock = make()
    eject(breaker)
    probe(breaker, clock)

    breaker.record_check(True)

    assert breaker.state is BreakerState.CLOSED


def test_successful_check_while_closed_keeps_the_failure_count() -> None:
    breaker, _ = make()
    breaker.record_failure()
    breaker.record_failure()

    breaker.record_check(True)

    assert breaker.consecutive_failures == 2
    assert breaker.state is BreakerState.CLOSED
    assert breaker.health is Health.HEALTHY


@pytest.mark.parametrize(
    ("event", "expected"),
    [
        ("success", Health.HEALTHY),
        ("failure", Health.HEALTHY),
        ("check_ok", Health.HEALTHY),
        ("check_failed", Health.UNHEALTHY),
    ],
)
def test_first_outcome_makes_health_known(event: str, expected: Health) -> None:
    breaker, _ = make()
    if event == "success":
        breaker.record_success()
    elif event == "failure":
        breaker.record_failure()
    else:
        breaker.record_check(event == "check_ok")

    assert breaker.health is expected


def test_health_is_unhealthy_while_open_or_half_open() -> None:
    breaker, clock = make()
    eject(breaker)
    assert breaker.health is Health.UNHEALTHY

    probe(breaker, clock)
    assert breaker.health is Health.UNHEALTHY


def test_health_values_are_strings() -> None:
    assert [h.value for h in Health] == ["healthy", "unhealthy", "unknown"]
    assert [s.value for s in BreakerState] == ["closed", "open", "half_open"]


def test_least_recently_ejected_picks_the_oldest_ejection() -> None:
    clock = FakeClock()
    breakers = {name: CircuitBreaker(clock=clock) for name in ("a", "b", "c")}
    for name in ("b", "c", "a"):
        breakers[name].record_check(False)
        clock.advance(1.0)

    assert least_recently_ejected(breakers) == "b"

    clock.advance(BASE)
    assert breakers["b"].allow()
    assert breakers["b"].record_failure()
    assert least_recently_ejected(breakers) == "c"


def test_least_recently_ejected_prefers_never_ejected() -> None:
    clock = FakeClock()
    ejected = CircuitBreaker(clock=clock)
    ejected.record_check(False)

    assert least_recently_ejected({"x": ejected, "y": CircuitBreaker(clock=clock)}) == "y"


def test_least_recently_ejected_of_nothing_is_none() -> None:
    assert least_recently_ejected({}) is None


def test_least_recently_ejected_breaks_ties_by_order() -> None:
    clock = FakeClock()
    breakers = {name: CircuitBreaker(clock=clock) for name in ("p", "q")}
    for breaker in breakers.values():
        breaker.record_check(False)

    assert least_recently_ejected(breakers) == "p"


def test_closed_allow_does_not_read_the_clock() -> None:
    class NoClock(FakeClock):
        def monotonic(self) -> float:
            raise AssertionError("the hot path must not read the clock")

    breaker = CircuitBreaker(clock=NoClock())
    for _ in range(DEFAULT_FAILURE_THRESHOLD - 1):
        breaker.record_failure()
    breaker.record_success()

    assert breaker.allow()
