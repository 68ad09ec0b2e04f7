"""Replicas sharing breakers: an ejection or a Retry-After hold on one replica is published,
and another applies it; recovery travels the same way; one replica runs the health checks.
Two managers linked in process here; tests/cluster does it over Redis between processes."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import pytest

from leapasgi.clock import FakeClock
from leapasgi.config import HealthConfig, RoutingConfig
from leapasgi.exceptions import RateLimitError, UpstreamUnavailableError
from leapasgi.health import BreakerState
from leapasgi.manager import ProviderManager
from leapasgi.providers.mock import Fault, MockProvider
from leapasgi.registry import ProviderStatus, RouteSettings
from leapasgi.state.base import BreakerEvent
from leapasgi.state.memory import MemoryState
from leapasgi.types import ChatCompletionRequest

pytestmark = pytest.mark.anyio


class Board:
    """Delivers what one replica publishes to the others, at once."""

    def __init__(self) -> None:
        self.listeners: list[tuple[LinkedState, Callable[[BreakerEvent], None]]] = []
        self.events: list[BreakerEvent] = []

    def send(self, origin: LinkedState, event: BreakerEvent) -> None:
        self.events.append(event)
        for state, listener in self.listeners:
            if state is not origin:
                listener(event)


class _Publisher:
    def __init__(self, state: LinkedState) -> None:
        self.state = state

    def publish(self, event: BreakerEvent) -> None:
        self.state.shared.send(self.state, event)


class _Lock:
    holder: object = None

    def __init__(self, state: LinkedState) -> None:
        self.state = state

    async def acquire(self, name: str, ttl: float) -> bool:
        if _Lock.holder is None:
            _Lock.holder = self.state
        return _Lock.holder is self.state


class LinkedState(MemoryState):
    """A MemoryState whose breaker board and lock are shared with its peers."""

    kind = "linked"

    def __init__(self, shared: Board, clock: FakeClock) -> None:
        super().__init__(clock=clock)
        self.shared = shared
        self.board = _Publisher(self)  # type: ignore[assignment]
        self.lock = _Lock(self)  # type: ignore[assignment]

    async def start(self, on_event: Callable[[BreakerEvent], None]) -> None:
        self.shared.listeners.append((self, on_event))


def replica(board: Board, clock: FakeClock, **health: Any) -> tuple[ProviderManager, MockProvider]:
    m = ProviderManager(
        routing=RoutingConfig(),
        health=HealthConfig(**{"interval": 0, "failure_threshold": 2, **health}),
        clock=clock,
        rng=random.Random(1),
    )
    provider = MockProvider(name="u1", models=["m"], clock=clock)
    m.register_provider(provider, RouteSettings(models=("m",), max_retries=0))
    m.use_state(LinkedState(board, clock))
    return m, provider


def req() -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate(
        {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    )


async def test_an_ejection_on_one_replica_ejects_the_provider_on_the_other() -> None:
    board, clock = Board(), FakeClock()
    a, provider = replica(board, clock)
    b, _ = replica(board, clock)
    await a.start()
    await b.start()
    provider.fail_always(Fault.status(500))

    for _ in range(2):
        with pytest.raises(UpstreamUnavailableError):
            await a.chat(req())

    seen = b.registry.snapshot("u1")
    assert seen.status is ProviderStatus.UNHEALTHY
    assert seen.breaker is BreakerState.OPEN
    assert seen.transitions[-1].cause == "seen by another replica"
    ejected = a.registry.get("u1").breaker.open_until
    assert b.registry.get("u1").breaker.open_until == pytest.approx(ejected)
    await a.aclose()
    await b.aclose()


async def test_recovery_travels_too() -> None:
    board, clock = Board(), FakeClock()
    a, provider = replica(board, clock)
    b, _ = replica(board, clock)
    await a.start()
    await b.start()
    provider.fail_always(Fault.status(500))
    for _ in range(2):
        with pytest.raises(UpstreamUnavailableError):
            await a.chat(req())
    provider.fail_always(None)
    clock.advance(31)  # the ejection ends; the next request is a's probe

    await a.chat(req())

    assert a.registry.get("u1").breaker.state is BreakerState.CLOSED
    assert b.registry.get("u1").breaker.state is BreakerState.CLOSED
    assert b.registry.snapshot("u1").status is ProviderStatus.ACTIVE
    await a.aclose()
    await b.aclose()


async def test_a_retry_after_hold_is_shared() -> None:
    board, clock = Board(), FakeClock()
    a, provider = replica(board, clock)
    b, _ = replica(board, clock)
    await a.start()
    await b.start()
    provider.inject(Fault.status(429, retry_after=20))

    with pytest.raises(RateLimitError):
        await a.chat(req())

    held = b.registry.snapshot("u1")
    assert held.held_until == pytest.approx(clock.time() + 20)
    assert b.registry.get("u1").held_for_rate_limit
    await a.aclose()
    await b.aclose()


async def test_an_older_recovery_does_not_undo_a_newer_ejection() -> None:
    clock = FakeClock()
    m, _ = replica(Board(), clock)
    entry = m.registry.get("u1")
    for _ in range(2):
        entry.failed(UpstreamUnavailableError("down", provider="u1"), 0.1)
    assert entry.breaker.state is BreakerState.OPEN

    entry.adopt(
        open_until=None,
        hold_until=None,
        rate_limited=False,
        times_ejected=0,
        at=clock.monotonic() - 10,
    )

    assert entry.breaker.state is BreakerState.OPEN


async def test_the_memory_backend_publishes_nothing() -> None:
    m = ProviderManager(health=HealthConfig(interval=0))

    assert m.registry.observer is None


async def test_only_the_lock_holder_runs_health_checks() -> None:
    board, clock = Board(), FakeClock()
    _Lock.holder = None
    a, pa = replica(board, clock, interval=5)
    b, pb = replica(board, clock, interval=5)
    checks = {"a": 0, "b": 0}

    async def counted(name: str) -> None:
        checks[name] += 1

    pa.check_health = lambda: counted("a")  # type: ignore[method-assign]
    pb.check_health = lambda: counted("b")  # type: ignore[method-assign]
    await a.start()
    await b.start()
    for _ in range(3):
        clock.advance(5)
        for _ in range(20):
            await clock.sleep(0)

    assert checks["a"] >= 2
    assert checks["b"] == 0
    await a.aclose()
    await b.aclose()
