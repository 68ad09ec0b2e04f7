from __future__ import annotations

import dataclasses
import functools
import random

import anyio
import anyio.lowlevel
import pytest

from leapasgi.clock import FakeClock
from leapasgi.exceptions import (
    InvalidRequestError,
    LeapError,
    NotFoundError,
    RateLimitError,
    UpstreamUnavailableError,
)
from leapasgi.features import Feature
from leapasgi.health import (
    DEFAULT_BASE_EJECTION,
    DEFAULT_FAILURE_THRESHOLD,
    BreakerPolicy,
    BreakerState,
    Health,
)
from leapasgi.providers import MockProvider, OpenAICompatibleProvider, ProviderSettings
from leapasgi.registry import (
    MAX_TRANSITIONS,
    ProviderEntry,
    ProviderStatus,
    Registry,
    RouteSettings,
    Transition,
)
from leapasgi.stats import Quantiles

# A lease's deadline for tests that never reclaim it.
NEVER = float("inf")


def make(policy: BreakerPolicy | None = None) -> tuple[Registry, FakeClock]:
    clock = FakeClock()
    return Registry(clock=clock, policy=policy), clock


def mock(
    name: str = "p",
    *,
    models: list[str] | None = None,
    features: list[Feature] | None = None,
) -> MockProvider:
    return MockProvider(name=name, models=models, features=features)


def outage(name: str = "p") -> UpstreamUnavailableError:
    return UpstreamUnavailableError("upstream is down", provider=name, upstream_status=503)


def eject(entry: ProviderEntry) -> None:
    for _ in range(DEFAULT_FAILURE_THRESHOLD):
        entry.failed(outage(entry.name), 0.5)


def status_of(entry: ProviderEntry) -> ProviderStatus:
    # A call, not the property, so mypy does not narrow the status between two asserts.
    return entry.status


def wait_out_ejection(entry: ProviderEntry, clock: FakeClock) -> None:
    assert entry.breaker.open_until is not None
    clock.advance(entry.breaker.open_until - clock.monotonic() + 0.001)


# Registration and lookup


def test_register_and_get_keep_registration_order() -> None:
    registry, _ = make()
    providers = [mock(name) for name in ("b", "a", "c")]

    entries = [registry.register(p) for p in providers]

    assert registry.names() == ["b", "a", "c"]
    assert [e.name for e in registry] == ["b", "a", "c"]
    assert list(registry) == entries
    assert registry.get("a").provider is providers[1]
    assert registry.get("a") is entries[1]


def test_contains_and_len() -> None:
    registry, _ = make()
    assert len(registry) == 0
    assert "p" not in registry

    registry.register(mock("p"))
    registry.register(mock("q"))

    assert len(registry) == 2
    assert "p" in registry
    assert "q" in registry
    assert "r" not in registry
    assert 42 not in registry


def test_removing_while_iterating_is_safe() -> None:
    registry, _ = make()
    for name in ("a", "b", "c"):
        registry.register(mock(name))

    seen = []
    for entry in registry:
        seen.append(entry.name)
        registry.remove(entry.name)

    assert seen == ["a", "b", "c"]
    assert len(registry) == 0


def test_duplicate_name_is_an_error_and_keeps_the_first() -> None:
    registry, _ = make()
    first = mock("p")
    registry.register(first)

    with pytest.raises(LeapError, match="'p' is already registered") as info:
        registry.register(mock("p"))

    assert info.value.code == "duplicate_provider"
    assert registry.get("p").provider is first
    assert len(registry) == 1


def test_replace_swaps_the_provider_and_resets_stats() -> None:
    registry, _ = make()
    registry.register(mock("a"))
    old = registry.register(mock("p"), RouteSettings(priority=1))
    registry.register(mock("z"))
    old.lease(expires_at=NEVER).succeeded(0.2, prompt_tokens=5)
    eject(old)
    new_provider = mock("p")

    new = registry.replace(new_provider, RouteSettings(priority=7))

    assert new is not old
    assert registry.get("p") is new
    assert new.provider is new_provider
    assert registry.names() == ["a", "p", "z"]
    snap = registry.snapshot("p")
    assert snap.priority == 7
    assert (snap.requests, snap.successes, snap.errors, snap.prompt_tokens) == (0, 0, {}, 0)
    assert snap.status is ProviderStatus.ACTIVE
    assert snap.breaker is BreakerState.CLOSED
    assert snap.latency is None


def test_register_with_replace_flag_replaces() -> None:
    registry, _ = make()
    registry.register(mock("p"))
    second = mock("p")

    entry = registry.register(second, replace=True)

    assert registry.get("p") is entry
    assert entry.provider is second
    assert len(registry) == 1


def test_remove_returns_the_entry_and_get_then_is_404() -> None:
    registry, _ = make()
    entry = registry.register(mock("p"))
    registry.register(mock("q"))

    removed = registry.remove("p")

    assert removed is entry
    assert "p" not in registry
    assert registry.names() == ["q"]
    with pytest.raises(NotFoundError) as info:
        registry.get("p")
    assert info.value.http_status == 404
    assert info.value.param == "name"
    assert "'p'" in info.value.message


@pytest.mark.parametrize("action", ["get", "remove", "snapshot", "drained", "set_status"])
def test_unknown_names_are_404(action: str) -> None:
    registry, _ = make()
    registry.register(mock("p"))

    if action == "set_status":
        call = functools.partial(registry.set_status, "nope", "inactive", cause="test")
    else:
        call = functools.partial(getattr(registry, action), "nope")

    with pytest.raises(NotFoundError) as info:
        call()

    assert info.value.http_status == 404
    assert info.value.param == "name"
    assert registry.names() == ["p"]


# Admin status


def test_new_provider_is_active_with_a_registered_transition() -> None:
    registry, clock = make()

    entry = registry.register(mock("p"))

    assert status_of(entry) is ProviderStatus.ACTIVE
    assert list(entry.transitions) == [
        Transition(clock.time(), ProviderStatus.ACTIVE, "registered")
    ]
    assert registry.snapshot("p").transitions == tuple(entry.transitions)


@pytest.mark.parametrize("status", [ProviderStatus.INACTIVE, ProviderStatus.MAINTENANCE])
def test_set_status_records_wall_time_and_cause(status: ProviderStatus) -> None:
    registry, clock = make()
    entry = registry.register(mock("p"))
    clock.advance(12.5)

    registry.set_status("p", status, cause="operator: upgrade")

    assert status_of(entry) is status
    assert registry.snapshot("p").status is status
    assert entry.transitions[-1] == Transition(clock.time(), status, "operator: upgrade")
    assert entry.transitions[-1].at == 1_700_000_012.5


def test_set_status_back_to_active_records_a_transition() -> None:
    registry, clock = make()
    entry = registry.register(mock("p"))
    registry.set_status("p", "inactive", cause="off")
    clock.advance(3)

    registry.set_status("p", "active", cause="on again")

    assert status_of(entry) is ProviderStatus.ACTIVE
    assert [(t.status, t.cause) for t in entry.transitions] == [
        (ProviderStatus.ACTIVE, "registered"),
        (ProviderStatus.INACTIVE, "off"),
        (ProviderStatus.ACTIVE, "on again"),
    ]
    assert entry.transitions[-1].at == clock.time()


def test_setting_the_same_status_again_records_nothing() -> None:
    registry, _ = make()
    entry = registry.register(mock("p"))
    registry.set_status("p", ProviderStatus.MAINTENANCE, cause="drain")

    registry.set_status("p", "maintenance", cause="drain again")
    registry.set_status("p", ProviderStatus.MAINTENANCE, cause="and again")

    assert [t.cause for t in entry.transitions] == ["registered", "drain"]


@pytest.mark.parametrize("text", ["active", "inactive", "maintenance"])
def test_set_status_accepts_strings(text: str) -> None:
    registry, _ = make()
    registry.register(mock("p"))
    registry.set_status("p", "inactive" if text == "active" else "active", cause="setup")

    registry.set_status("p", text, cause="by name")

    assert registry.get("p").status == text
    assert registry.get("p").status is ProviderStatus(text)


@pytest.mark.parametrize("status", [ProviderStatus.UNHEALTHY, "unhealthy"])
def test_unhealthy_cannot_be_set_by_an_admin(status: ProviderStatus | str) -> None:
    registry, _ = make()
    entry = registry.register(mock("p"))

    with pytest.raises(LeapError, match="active, inactive or maintenance") as info:
        registry.set_status("p", status, cause="nope")

    assert info.value.param == "status"
    assert info.value.code == "invalid_status"
    assert status_of(entry) is ProviderStatus.ACTIVE
    assert len(entry.transitions) == 1


def test_a_bogus_status_is_refused_with_a_leap_error() -> None:
    registry, _ = make()
    entry = registry.register(mock("p"))

    with pytest.raises(LeapError, match="active, inactive or maintenance") as info:
        registry.set_status("p", "paused", cause="nope")

    assert info.value.param == "status"
    assert info.value.code == "invalid_status"
    assert status_of(entry) is ProviderStatus.ACTIVE


# Status driven by the breaker and health checks


def test_consecutive_failures_eject_the_provider() -> None:
    registry, clock = make()
    entry = registry.register(mock("p"))

    for _ in range(DEFAULT_FAILURE_THRESHOLD - 1):
        entry.failed(outage(), 0.5)
    assert status_of(entry) is ProviderStatus.ACTIVE
    assert len(entry.transitions) == 1

    clock.advance(1)
    entry.failed(outage(), 0.5)

    assert status_of(entry) is ProviderStatus.UNHEALTHY
    last = entry.transitions[-1]
    assert last.status is ProviderStatus.UNHEALTHY
    assert last.at == clock.time()
    assert "ejected after 5 consecutive failures" in last.cause
    assert "UpstreamUnavailableError" in last.cause
    snap = registry.snapshot("p")
    assert snap.status is ProviderStatus.UNHEALTHY
    assert snap.health is Health.UNHEALTHY
    assert snap.breaker is BreakerState.OPEN
    assert snap.times_ejected == 1
    assert snap.ejected_until is not None
    assert registry.stats().active == 0
    assert registry.stats().healthy == 0


def test_registry_policy_sets_the_threshold() -> None:
    registry, _ = make(BreakerPolicy(failure_threshold=2))
    entry = registry.register(mock("p"))

    entry.failed(outage(), 0.1)
    assert status_of(entry) is ProviderStatus.ACTIVE
    entry.failed(outage(), 0.1)

    assert status_of(entry) is ProviderStatus.UNHEALTHY
    assert "after 2 consecutive failures" in entry.transitions[-1].cause


def test_a_success_resets_the_failure_streak() -> None:
    registry, _ = make()
    entry = registry.register(mock("p"))

    for _ in range(3):
        for _ in range(DEFAULT_FAILURE_THRESHOLD - 1):
            entry.failed(outage(), 0.5)
        entry.succeeded(0.1)

    assert status_of(entry) is ProviderStatus.ACTIVE
    assert registry.snapshot("p").consecutive_errors == 0
    assert [t.cause for t in entry.transitions] == ["registered"]


def test_admin_status_wins_over_unhealthy() -> None:
    registry, _ = make()
    entry = registry.register(mock("p"))
    eject(entry)

    registry.set_status("p", "inactive", cause="off")
    assert status_of(entry) is ProviderStatus.INACTIVE
    registry.set_status("p", "maintenance", cause="drain")
    assert status_of(entry) is ProviderStatus.MAINTENANCE
    registry.set_status("p", "active", cause="back")

    # Still ejected: handing it back to traffic shows the breaker's verdict.
    assert status_of(entry) is ProviderStatus.UNHEALTHY
    assert [(t.status, t.cause) for t in entry.transitions][-3:] == [
        (ProviderStatus.INACTIVE, "off"),
        (ProviderStatus.MAINTENANCE, "drain"),
        (ProviderStatus.UNHEALTHY, "back"),
    ]


def test_an_ejection_while_inactive_records_no_transition() -> None:
    registry, _ = make()
    entry = registry.register(mock("p"))
    registry.set_status("p", "inactive", cause="off")

    eject(entry)

    assert status_of(entry) is ProviderStatus.INACTIVE
    assert registry.snapshot("p").health is Health.UNHEALTHY
    assert [t.status for t in entry.transitions] == [
        ProviderStatus.ACTIVE,
        ProviderStatus.INACTIVE,
    ]


def test_a_successful_probe_after_the_ejection_restores_active() -> None:
    registry, clock = make()
    entry = registry.register(mock("p"))
    eject(entry)

    clock.advance(DEFAULT_BASE_EJECTION - 0.5)
    assert not entry.breaker.allow()
    assert status_of(entry) is ProviderStatus.UNHEALTHY

    clock.advance(1)
    assert entry.breaker.allow()
    assert status_of(entry) is ProviderStatus.UNHEALTHY
    entry.succeeded(0.1)

    assert status_of(entry) is ProviderStatus.ACTIVE
    assert entry.transitions[-1] == Transition(
        clock.time(), ProviderStatus.ACTIVE, "a request succeeded"
    )
    snap = registry.snapshot("p")
    assert snap.health is Health.HEALTHY
    assert snap.breaker is BreakerState.CLOSED
    assert snap.ejected_until is None


def test_a_failed_probe_ejects_again_for_longer() -> None:
    registry, clock = make()
    entry = registry.register(mock("p"))
    eject(entry)
    wait_out_ejection(entry, clock)
    assert entry.breaker.allow()

    entry.failed(outage(), 0.5)

    assert status_of(entry) is ProviderStatus.UNHEALTHY
    assert entry.breaker.open_until == clock.monotonic() + 2 * DEFAULT_BASE_EJECTION
    assert registry.snapshot("p").times_ejected == 2
    # Every ejection is recorded, the repeated one after the failed probe included.
    assert [t.status for t in entry.transitions] == [
        ProviderStatus.ACTIVE,
        ProviderStatus.UNHEALTHY,
        ProviderStatus.UNHEALTHY,
    ]
    assert "ejected" in entry.transitions[-1].cause


def test_client_errors_never_eject() -> None:
    registry, _ = make()
    entry = registry.register(mock("p"))

    for _ in range(4 * DEFAULT_FAILURE_THRESHOLD):
        entry.refused(InvalidRequestError("bad request", provider="p", upstream_status=400))

    assert status_of(entry) is ProviderStatus.ACTIVE
    snap = registry.snapshot("p")
    assert snap.errors == {"InvalidRequestError": 4 * DEFAULT_FAILURE_THRESHOLD}
    assert snap.consecutive_errors == 0
    assert snap.success_rate is None
    assert snap.last_error is None
    assert len(entry.transitions) == 1


def test_a_refused_probe_leaves_the_provider_ejected_and_frees_the_probe() -> None:
    registry, clock = make()
    entry = registry.register(mock("p"))
    eject(entry)
    wait_out_ejection(entry, clock)
    assert entry.breaker.allow()
    assert not entry.breaker.allow()

    entry.refused(InvalidRequestError("bad request", provider="p"))

    assert status_of(entry) is ProviderStatus.UNHEALTHY
    assert entry.breaker.allow()


def test_health_checks_eject_and_restore() -> None:
    registry, clock = make()
    entry = registry.register(mock("p"))
    clock.advance(5)

    entry.checked(False, "health check: down")

    assert status_of(entry) is ProviderStatus.UNHEALTHY
    assert entry.transitions[-1] == Transition(
        clock.time(), ProviderStatus.UNHEALTHY, "health check: down"
    )
    snap = registry.snapshot("p")
    assert snap.last_check_ok is False
    assert snap.last_check_at is not None
    assert snap.health is Health.UNHEALTHY

    clock.advance(5)
    entry.checked(True, "health check: up")

    assert status_of(entry) is ProviderStatus.ACTIVE
    assert entry.transitions[-1] == Transition(
        clock.time(), ProviderStatus.ACTIVE, "health check: up"
    )
    assert registry.snapshot("p").last_check_ok is True
    assert registry.snapshot("p").health is Health.HEALTHY


def test_a_passing_check_on_a_healthy_provider_records_nothing() -> None:
    registry, _ = make()
    entry = registry.register(mock("p"))

    entry.checked(True, "health check: up")

    assert [t.cause for t in entry.transitions] == ["registered"]
    assert registry.snapshot("p").health is Health.HEALTHY


# Draining


def test_maintenance_is_drained_once_in_flight_requests_end() -> None:
    registry, _ = make()
    entry = registry.register(mock("p"))
    first, second = entry.lease(expires_at=NEVER), entry.lease(expires_at=NEVER)

    registry.set_status("p", "maintenance", cause="drain")
    assert not registry.drained("p")
    first.abandoned()
    assert not registry.drained("p")
    second.abandoned()

    assert registry.drained("p")


@pytest.mark.parametrize("status", ["active", "inactive"])
def test_only_maintenance_is_ever_drained(status: str) -> None:
    registry, _ = make()
    registry.register(mock("p"))

    registry.set_status("p", status, cause="test")

    assert registry.snapshot("p").in_flight == 0
    assert not registry.drained("p")


def test_an_ejected_provider_in_maintenance_is_drained() -> None:
    registry, _ = make()
    entry = registry.register(mock("p"))
    eject(entry)

    registry.set_status("p", "maintenance", cause="drain")

    assert registry.drained("p")


# Metrics


def test_fresh_snapshot_shows_settings_and_no_measurements() -> None:
    registry, _ = make()
    registry.register(
        mock("p", models=["m1"], features=[Feature.STREAMING, Feature.TOOLS]),
        RouteSettings(priority=3, weight=2.5, models=("m1", "m2"), kind="mock", preset="x"),
    )

    snap = registry.snapshot("p")

    assert (snap.name, snap.kind, snap.preset, snap.base_url) == ("p", "mock", "x", None)
    assert (snap.priority, snap.weight) == (3, 2.5)
    assert snap.models == ("m1", "m2")
    assert set(snap.features) == {"streaming", "tools"}
    assert snap.status is ProviderStatus.ACTIVE
    assert snap.health is Health.UNKNOWN
    assert snap.breaker is BreakerState.CLOSED
    assert (snap.times_ejected, snap.ejected_until) == (0, None)
    assert (snap.last_check_at, snap.last_check_ok) == (None, None)
    assert (snap.requests, snap.successes, snap.errors, snap.in_flight) == (0, 0, {}, 0)
    assert (snap.latency, snap.ttft, snap.latency_ewma, snap.success_rate) == (None,) * 4
    assert (snap.prompt_tokens, snap.completion_tokens, snap.last_error) == (0, 0, None)


def test_models_come_from_settings_else_discovery() -> None:
    registry, _ = make()
    entry = registry.register(mock("p"))
    assert entry.models == ()

    entry.discovered_models = ("found-1", "found-2")
    assert registry.snapshot("p").models == ("found-1", "found-2")

    registry.replace(mock("p"), RouteSettings(models=("pinned",)))
    registry.get("p").discovered_models = ("found-1",)
    assert registry.snapshot("p").models == ("pinned",)


def test_outcomes_show_up_in_the_snapshot() -> None:
    registry, clock = make()
    entry = registry.register(mock("p"))
    leases = [entry.lease(expires_at=NEVER) for _ in range(5)]
    for lease, (latency, ttft) in zip(
        leases[:3], ((0.1, 0.01), (0.2, 0.02), (0.3, 0.03)), strict=True
    ):
        clock.advance(1)
        lease.succeeded(latency, ttft=ttft, prompt_tokens=10, completion_tokens=4)
    leases[3].failed(RateLimitError("slow down", provider="p"), 0.05)

    snap = registry.snapshot("p")

    assert snap.requests == 5
    assert snap.successes == 3
    assert snap.errors == {"RateLimitError": 1}
    assert snap.consecutive_errors == 1
    assert snap.in_flight == 1
    assert snap.latency == Quantiles(p50=0.2, p95=0.3, p99=0.3)
    assert snap.ttft == Quantiles(p50=0.02, p95=0.03, p99=0.03)
    assert snap.latency_ewma is not None
    assert snap.latency_ewma > 0.1
    assert (snap.prompt_tokens, snap.completion_tokens) == (30, 12)
    assert snap.success_rate == pytest.approx(3 / 4)
    assert snap.last_error == "slow down"
    assert snap.health is Health.HEALTHY


def test_failures_are_counted_by_kind() -> None:
    registry, _ = make()
    entry = registry.register(mock("p"))

    entry.failed(outage(), 0.1)
    entry.failed(RateLimitError("slow down", provider="p"), 0.1)
    entry.failed(outage(), 0.1)
    entry.refused(InvalidRequestError("bad", provider="p"))

    snap = registry.snapshot("p")
    assert snap.errors == {
        "UpstreamUnavailableError": 2,
        "RateLimitError": 1,
        "InvalidRequestError": 1,
    }
    assert snap.consecutive_errors == 3
    assert snap.success_rate == 0.0
    assert snap.last_error == "upstream is down"


def test_a_snapshot_does_not_change_afterwards() -> None:
    registry, _ = make()
    entry = registry.register(mock("p"))
    entry.failed(outage(), 0.1)
    before = registry.snapshot("p")

    entry.failed(outage(), 0.1)
    registry.set_status("p", "inactive", cause="off")

    assert before.errors == {"UpstreamUnavailableError": 1}
    assert before.status is ProviderStatus.ACTIVE
    assert len(before.transitions) == 1
    with pytest.raises(dataclasses.FrozenInstanceError):
        before.status = ProviderStatus.INACTIVE  # type: ignore[misc]


def test_a_long_error_message_is_cut() -> None:
    registry, _ = make()
    entry = registry.register(mock("p"))

    entry.failed(UpstreamUnavailableError("x" * 5_000, provider="p"), 0.1)

    last_error = registry.snapshot("p").last_error
    assert last_error is not None
    assert len(last_error) == 200


def test_snapshots_never_contain_secrets() -> None:
    registry, _ = make()
    settings = ProviderSettings(
        name="p", base_url="https://h.test/v1?key=CANARY", api_key="sk-CANARY-123456"
    )
    provider = OpenAICompatibleProvider(settings)
    entry = registry.register(provider, RouteSettings(base_url=settings.base_url))
    entry.lease(expires_at=NEVER).failed(outage(), 0.2)
    entry.checked(False, "health check: down")

    for snap in [registry.snapshot("p"), *registry.snapshots()]:
        assert snap.base_url == "https://h.test/v1"
        texts = [repr(snap), str(snap)]
        texts += [repr(getattr(snap, f.name)) for f in dataclasses.fields(snap)]
        for text in texts:
            assert "CANARY" not in text
            assert "sk-" not in text
    assert "CANARY" not in repr(registry.stats())


def test_a_base_url_without_secrets_is_shown_whole() -> None:
    registry, _ = make()
    registry.register(mock("p"), RouteSettings(base_url="http://127.0.0.1:8080/v1"))

    assert registry.snapshot("p").base_url == "http://127.0.0.1:8080/v1"


def test_snapshots_list_every_provider_in_order() -> None:
    registry, _ = make()
    for name in ("c", "a", "b"):
        registry.register(mock(name))
    registry.remove("a")

    assert [s.name for s in registry.snapshots()] == ["c", "b"]


# Aggregates


def test_stats_total_every_provider() -> None:
    registry, _ = make()
    ok = registry.register(mock("ok"))
    down = registry.register(mock("down"))
    off = registry.register(mock("off"))
    registry.register(mock("idle"))
    leases = [ok.lease(expires_at=NEVER) for _ in range(3)]
    leases[0].succeeded(0.1)
    leases[1].succeeded(0.1)
    eject(down)
    off.lease(expires_at=NEVER)  # still in flight
    off.succeeded(0.1)
    registry.set_status("off", "inactive", cause="off")

    stats = registry.stats()

    assert stats.total == 4
    assert stats.active == 2
    # Unknown health (idle) is not unhealthy; admin status does not touch health.
    assert stats.healthy == 3
    assert stats.in_flight == 2
    assert stats.requests == 4
    assert stats.successes == 3
    assert stats.errors == DEFAULT_FAILURE_THRESHOLD
    assert stats.success_rate == pytest.approx(3 / (3 + DEFAULT_FAILURE_THRESHOLD))


def test_stats_of_an_empty_registry() -> None:
    registry, _ = make()

    stats = registry.stats()

    assert (stats.total, stats.active, stats.healthy, stats.in_flight) == (0, 0, 0, 0)
    assert (stats.requests, stats.successes, stats.errors) == (0, 0, 0)
    assert stats.success_rate is None


def test_aggregate_success_rate_leaves_client_errors_out_like_each_provider() -> None:
    registry, _ = make()
    entry = registry.register(mock("p"))
    entry.succeeded(0.1)
    entry.refused(InvalidRequestError("bad", provider="p"))

    assert registry.snapshot("p").success_rate == 1.0
    assert registry.stats().success_rate == 1.0


# Transitions


def test_transitions_are_bounded() -> None:
    registry, clock = make()
    entry = registry.register(mock("p"))

    for i in range(MAX_TRANSITIONS + 20):
        clock.advance(1)
        registry.set_status("p", "inactive" if i % 2 == 0 else "active", cause=f"flip {i}")

    assert len(entry.transitions) == MAX_TRANSITIONS
    assert len(registry.snapshot("p").transitions) == MAX_TRANSITIONS
    assert entry.transitions[-1].cause == f"flip {MAX_TRANSITIONS + 19}"
    assert entry.transitions[-1].at == clock.time()
    assert entry.transitions[0].cause == "flip 20"
    assert "registered" not in {t.cause for t in entry.transitions}


# Concurrency


@pytest.mark.anyio
async def test_200_concurrent_registrations() -> None:
    registry, _ = make()
    names = [f"p{i:03d}" for i in range(200)]

    async def add(name: str) -> None:
        await anyio.lowlevel.checkpoint()
        registry.register(mock(name))

    async with anyio.create_task_group() as tg:
        for name in names:
            tg.start_soon(add, name)

    assert len(registry) == 200
    assert sorted(registry.names()) == names
    assert {s.name for s in registry.snapshots()} == set(names)
    assert registry.stats().total == 200


@pytest.mark.anyio
async def test_concurrent_status_changes_and_metrics_stay_exact() -> None:
    registry, clock = make()
    names = [f"p{i}" for i in range(20)]
    for name in names:
        registry.register(mock(name))
    rng = random.Random(7)
    plan = [(names[i % len(names)], rng.random() < 0.7, rng.randint(0, 3)) for i in range(200)]
    done = anyio.Event()
    snapshots_taken = 0

    async def request(name: str, ok: bool, spins: int) -> None:
        lease = registry.get(name).lease(expires_at=NEVER)
        await anyio.lowlevel.checkpoint()
        registry.set_status(name, ("active", "maintenance", "inactive")[spins % 3], cause="ops")
        for _ in range(spins):
            await anyio.lowlevel.checkpoint()
        clock.advance(0.01)
        if ok:
            lease.succeeded(0.01 * (spins + 1), prompt_tokens=1, completion_tokens=2)
        else:
            lease.failed(outage(name), 0.5)
        await anyio.lowlevel.checkpoint()

    async def watch() -> None:
        nonlocal snapshots_taken
        while not done.is_set():
            assert len(registry.snapshots()) == len(names)
            registry.stats()
            snapshots_taken += 1
            await anyio.lowlevel.checkpoint()

    async with anyio.create_task_group() as outer:
        outer.start_soon(watch)
        async with anyio.create_task_group() as tg:
            for name, ok, spins in plan:
                tg.start_soon(request, name, ok, spins)
        done.set()

    successes = sum(ok for _, ok, _ in plan)
    stats = registry.stats()
    assert snapshots_taken > 1
    assert stats.requests == 200
    assert stats.in_flight == 0
    assert stats.successes == successes
    assert stats.errors == 200 - successes
    snaps = registry.snapshots()
    assert sum(s.requests for s in snaps) == 200
    assert sum(s.prompt_tokens for s in snaps) == successes
    assert sum(s.completion_tokens for s in snaps) == 2 * successes
    assert all(s.in_flight == 0 for s in snaps)
    for snap in snaps:
        mine = [ok for name, ok, _ in plan if name == snap.name]
        assert snap.requests == len(mine)
        assert snap.successes == sum(mine)
        assert sum(snap.errors.values()) == len(mine) - sum(mine)


@pytest.mark.anyio
async def test_concurrent_register_and_remove_end_consistent() -> None:
    registry, _ = make()
    names = [f"p{i}" for i in range(20)]
    net = dict.fromkeys(names, 0)
    refusals: list[str | None] = []
    rng = random.Random(11)

    def add(name: str) -> None:
        try:
            registry.register(mock(name))
        except LeapError as exc:
            refusals.append(exc.code)
        else:
            net[name] += 1

    def drop(name: str) -> None:
        try:
            registry.remove(name)
        except NotFoundError:
            pass
        else:
            net[name] -= 1

    async def churn(name: str, actions: str, spins: int) -> None:
        for action in actions:
            for _ in range(spins):
                await anyio.lowlevel.checkpoint()
            if action == "+":
                add(name)
            else:
                drop(name)
            registry.snapshots()

    async with anyio.create_task_group() as tg:
        for i in range(200):
            actions = rng.choice(["+", "-", "+-", "-+", "+-+"])
            tg.start_soon(churn, names[i % len(names)], actions, rng.randint(0, 3))

    assert refusals
    assert set(refusals) == {"duplicate_provider"}
    assert all(count in (0, 1) for count in net.values())
    present = {name for name in names if net[name] == 1}
    assert present
    assert set(registry.names()) == present
    assert len(registry) == len(present) == len(set(registry.names()))
    assert [s.name for s in registry.snapshots()] == registry.names()
    for name in names:
        assert (name in registry) is (name in present)
