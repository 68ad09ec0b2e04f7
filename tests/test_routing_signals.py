"""What routing does with what it learns: Retry-After holds, the hint a client gets when nothing
can serve, and least-latency probes of providers it has stopped sending to."""

from __future__ import annotations

import random
from typing import Any

import pytest

from leapasgi.attempts import UNAVAILABLE_RETRY_AFTER
from leapasgi.balancing import Candidate, Strategy, order
from leapasgi.clock import FakeClock
from leapasgi.config import HealthConfig, RoutingConfig
from leapasgi.exceptions import NoProviderAvailableError, RateLimitError, UpstreamUnavailableError
from leapasgi.health import BreakerPolicy, CircuitBreaker
from leapasgi.manager import ProviderManager
from leapasgi.providers.mock import Fault, MockProvider
from leapasgi.registry import RouteSettings
from leapasgi.types import ChatCompletionRequest

pytestmark = pytest.mark.anyio


def req() -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate(
        {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    )


def mock(name: str, clock: FakeClock, **options: Any) -> MockProvider:
    return MockProvider(name=name, models=["m"], reply=f"from {name}", clock=clock, **options)


def manager(
    *providers: MockProvider, clock: FakeClock, health: HealthConfig | None = None, **routing: Any
) -> ProviderManager:
    m = ProviderManager(
        routing=RoutingConfig(**routing),
        health=health or HealthConfig(interval=0),
        clock=clock,
        rng=random.Random(11),
    )
    for priority, provider in enumerate(providers):
        m.register_provider(provider, RouteSettings(priority=priority, models=("m",)))
    return m


def test_a_hold_blocks_the_breaker_until_it_ends_and_is_capped() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(BreakerPolicy(base_ejection=1.0, max_ejection=10.0), clock=clock)

    breaker.hold(2.0)
    blocked = breaker.allow()
    clock.advance(2.0)
    after = breaker.allow()
    breaker.hold(9999)
    capped = breaker.held_until

    assert (blocked, after) == (False, True)
    assert capped == clock.monotonic() + 10.0
    breaker.hold(0.0)  # a zero hint is no hold and does not shorten one
    assert breaker.held_until == capped


async def test_no_request_goes_to_a_provider_before_its_retry_after_ends() -> None:
    clock = FakeClock()
    a, b = mock("a", clock), mock("b", clock)
    a.inject(Fault.status(429, retry_after=5))
    async with manager(a, b, clock=clock) as m:
        served = [(await m.chat(req())).choices[0].message.content]
        for _ in range(4):
            clock.advance(1.0)
            served.append((await m.chat(req())).choices[0].message.content)
        clock.advance(1.0)
        served.append((await m.chat(req())).choices[0].message.content)
        trail = (await m.chat_with_trail(req()))[1]

    assert served == ["from b"] * 5 + ["from a"]
    assert len(a.requests) == 3
    assert [t.outcome for t in trail.attempts] == ["ok"]
    assert clock.sleeps == []


async def test_a_held_provider_is_waited_for_when_the_hint_ends_within_the_deadline() -> None:
    clock = FakeClock()
    a = mock("a", clock)
    a.inject(Fault.status(429, retry_after=2))
    async with manager(a, clock=clock, max_attempts=1) as m:
        with pytest.raises(RateLimitError):
            await m.chat(req())
        completion, trail = await m.chat_with_trail(req())

    assert completion.choices[0].message.content == "from a"
    assert clock.sleeps == [2]
    assert [(t.outcome, t.skipped) for t in trail.attempts] == [("held", True), ("ok", False)]


async def test_when_every_provider_holds_off_the_client_gets_the_smallest_hint_at_once() -> None:
    clock = FakeClock()
    a, b = mock("a", clock), mock("b", clock)
    a.fail_always(Fault.status(429, retry_after=120))
    b.fail_always(Fault.status(429, retry_after=90))
    async with manager(a, b, clock=clock) as m:
        with pytest.raises(RateLimitError) as first:
            await m.chat(req())
        clock.advance(10)
        with pytest.raises(RateLimitError) as second:
            await m.chat(req())

    assert first.value.retry_after == 90
    assert second.value.retry_after == pytest.approx(80)
    assert second.value.attempts == 0
    assert (len(a.requests), len(b.requests)) == (1, 1)


async def test_a_503_hold_ends_in_a_503() -> None:
    clock = FakeClock()
    a = mock("a", clock)
    a.fail_always(Fault.status(503, retry_after=100))
    async with manager(a, clock=clock) as m:
        with pytest.raises(UpstreamUnavailableError):
            await m.chat(req())
        with pytest.raises(NoProviderAvailableError) as caught:
            await m.chat(req())

    assert caught.value.retry_after == pytest.approx(100)
    assert len(a.requests) == 1


@pytest.mark.parametrize("status", [429, 503])
async def test_a_429_or_503_without_a_hint_still_tells_the_client_when_to_come_back(
    status: int,
) -> None:
    clock = FakeClock()
    a, b = mock("a", clock), mock("b", clock)
    a.fail_always(Fault.status(status))
    b.fail_always(Fault.status(status))
    async with manager(a, b, clock=clock) as m:
        with pytest.raises((RateLimitError, UpstreamUnavailableError)) as caught:
            await m.chat(req())

    assert caught.value.http_status == status
    assert caught.value.retry_after == UNAVAILABLE_RETRY_AFTER


async def test_a_500_gets_no_invented_hint() -> None:
    clock = FakeClock()
    a = mock("a", clock)
    a.fail_always(Fault.status(500))
    async with manager(a, clock=clock) as m:
        with pytest.raises(UpstreamUnavailableError) as caught:
            await m.chat(req())

    assert caught.value.retry_after is None


def test_least_latency_sends_a_probe_first_whatever_its_latency() -> None:
    candidates = [
        Candidate("fast", latency=0.1),
        Candidate("slow", latency=5.0, probe=True),
        Candidate("middle", latency=0.5),
    ]
    rng = random.Random(1)

    orders = {
        tuple(c.name for c in order(Strategy.LEAST_LATENCY, candidates, rng=rng)) for _ in range(50)
    }

    assert orders == {("slow", "fast", "middle")}  # the probe, then the rest by P2C


async def test_least_latency_probes_a_slow_provider_once_per_ejection_time() -> None:
    clock = FakeClock()
    slow, fast = mock("slow", clock), mock("fast", clock)
    slow.fail_always(Fault.delay(1.0))
    fast.fail_always(Fault.delay(0.1))
    health = HealthConfig(interval=0, base_ejection=5.0)
    async with manager(slow, fast, clock=clock, health=health, strategy="least_latency") as m:
        for _ in range(10):  # warm-up: both sampled
            await m.chat(req())
        warm = len(slow.requests)
        for _ in range(200):  # 20 s of 0.1 s answers
            await m.chat(req())

    probes = len(slow.requests) - warm
    # One probe when its sample is 5 s old: 20 s / (5 s + its own 1 s) -> 3 or 4.
    assert 2 <= probes <= 4
