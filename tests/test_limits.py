"""Per-provider concurrency limits: the slots themselves, and how the manager uses them."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest
from pydantic import ValidationError

from leapasgi.attempts import BUSY_RETRY_AFTER
from leapasgi.clock import FakeClock
from leapasgi.config import HealthConfig, ProviderConfig, RoutingConfig
from leapasgi.deadline import Deadline
from leapasgi.exceptions import ProviderBusyError
from leapasgi.health import BreakerState
from leapasgi.limits import ConcurrencyLimit
from leapasgi.manager import ProviderManager
from leapasgi.providers.base import Capabilities
from leapasgi.providers.mock import Fault, MockProvider
from leapasgi.registry import ProviderStatus, RouteSettings
from leapasgi.types import ChatCompletion, ChatCompletionChunk, ChatCompletionRequest
from tests.turns import until

pytestmark = pytest.mark.anyio


def req(**fields: Any) -> ChatCompletionRequest:
    body: dict[str, Any] = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    body.update(fields)
    return ChatCompletionRequest.model_validate(body)


class Gated(MockProvider):
    """A mock whose answers wait for ``gate``; counts how many it serves at once."""

    def __init__(self, name: str, clock: FakeClock, *, honors_deadline: bool = False) -> None:
        super().__init__(name=name, models=["m"], reply=f"from {name}", clock=clock)
        self.gate = asyncio.Event()
        self.running = 0
        self.peak = 0
        self._honors = Capabilities(features=self.features, honors_deadline=honors_deadline)

    @property
    def capabilities(self) -> Capabilities:
        return self._honors

    async def chat(
        self, request: ChatCompletionRequest, *, deadline: Deadline | None = None
    ) -> ChatCompletion:
        self.running += 1
        self.peak = max(self.peak, self.running)
        try:
            await self.gate.wait()
            return await super().chat(request, deadline=deadline)
        finally:
            self.running -= 1


def manager(
    *providers: MockProvider,
    clock: FakeClock,
    limits: dict[str, tuple[int, int]] | None = None,
    health: HealthConfig | None = None,
    **routing: Any,
) -> ProviderManager:
    m = ProviderManager(
        routing=RoutingConfig(**routing),
        health=health or HealthConfig(interval=0),
        clock=clock,
        rng=random.Random(3),
    )
    for priority, provider in enumerate(providers):
        max_in_flight, max_waiting = (limits or {}).get(provider.name, (None, 0))
        m.register_provider(
            provider,
            RouteSettings(
                priority=priority,
                models=("m",),
                max_in_flight=max_in_flight,
                max_waiting=max_waiting,
            ),
        )
    return m


async def test_slots_run_out_at_the_limit_and_come_back_on_release() -> None:
    limit = ConcurrencyLimit(2)

    taken = [limit.try_acquire() for _ in range(3)]
    limit.release()

    assert taken == [True, True, False]
    assert limit.try_acquire()
    assert limit.in_flight == 2


async def test_waiters_get_freed_slots_first_come_first_served() -> None:
    limit = ConcurrencyLimit(1, max_waiting=2)
    assert limit.try_acquire()
    order: list[str] = []

    async def wait(name: str) -> None:
        assert await limit.acquire(10.0)
        order.append(name)

    first = asyncio.create_task(wait("first"))
    await until(lambda: limit.waiting == 1)
    second = asyncio.create_task(wait("second"))
    await until(lambda: limit.waiting == 2)
    assert not limit.try_acquire()  # nobody jumps the line

    limit.release()
    await first
    limit.release()
    await second

    assert order == ["first", "second"]
    assert (limit.in_flight, limit.waiting) == (1, 0)


async def test_a_full_line_is_refused_at_once_and_counted() -> None:
    limit = ConcurrencyLimit(1, max_waiting=1)
    limit.try_acquire()
    waiter = asyncio.create_task(limit.acquire(10.0))
    await until(lambda: limit.waiting == 1)

    assert not await limit.acquire(10.0)
    assert limit.overflows == 1

    limit.release()
    assert await waiter


async def test_no_time_left_means_no_wait() -> None:
    limit = ConcurrencyLimit(1, max_waiting=5)
    limit.try_acquire()

    assert not await limit.acquire(0.0)
    assert (limit.waiting, limit.overflows) == (0, 1)


async def test_a_wait_that_runs_out_leaves_the_line() -> None:
    limit = ConcurrencyLimit(1, max_waiting=5)
    limit.try_acquire()

    assert not await limit.acquire(0.001)
    assert limit.waiting == 0
    limit.release()
    assert limit.in_flight == 0


async def test_a_cancelled_waiter_leaves_the_line_and_takes_no_slot() -> None:
    limit = ConcurrencyLimit(1, max_waiting=1)
    limit.try_acquire()
    waiter = asyncio.create_task(limit.acquire(10.0))
    await until(lambda: limit.waiting == 1)

    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    limit.release()

    assert (limit.in_flight, limit.waiting) == (0, 0)


async def test_a_slot_handed_to_a_waiter_that_gives_up_passes_to_the_next() -> None:
    limit = ConcurrencyLimit(1, max_waiting=2)
    limit.try_acquire()
    quitter = asyncio.create_task(limit.acquire(10.0))
    await until(lambda: limit.waiting == 1)
    patient = asyncio.create_task(limit.acquire(10.0))
    await until(lambda: limit.waiting == 2)

    limit.release()  # the slot goes to the quitter, who is cancelled before it runs
    quitter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await quitter

    assert await patient
    assert (limit.in_flight, limit.waiting) == (1, 0)


def test_limits_must_make_sense() -> None:
    with pytest.raises(ValueError, match="max_in_flight"):
        ConcurrencyLimit(0)
    with pytest.raises(ValueError, match="max_waiting"):
        ConcurrencyLimit(1, -1)


async def test_overflow_fails_over_at_once_and_is_not_held_against_the_provider() -> None:
    clock = FakeClock()
    a, b = Gated("a", clock), MockProvider(name="b", models=["m"], reply="from b", clock=clock)
    health = HealthConfig(interval=0, failure_threshold=1)
    async with manager(a, b, clock=clock, limits={"a": (1, 0)}, health=health) as m:
        holder = asyncio.create_task(m.chat(req()))
        await until(lambda: a.running == 1)

        replies = [await m.chat_with_trail(req()) for _ in range(5)]

        a.gate.set()
        assert (await holder).choices[0].message.content == "from a"
        snapshot = m.registry.snapshot("a")

    assert all(c.choices[0].message.content == "from b" for c, _ in replies)
    trail = replies[0][1]
    assert [(t.provider, t.outcome, t.skipped) for t in trail.attempts] == [
        ("a", "ProviderBusyError", True),
        ("b", "ok", False),
    ]
    assert trail.tries == 1
    assert a.peak == 1
    assert snapshot.overflows == 5
    assert snapshot.errors == {}
    assert snapshot.consecutive_errors == 0
    assert (snapshot.status, snapshot.breaker, snapshot.times_ejected) == (
        ProviderStatus.ACTIVE,
        BreakerState.CLOSED,
        0,
    )
    assert clock.sleeps == []


async def test_with_every_provider_full_the_client_gets_a_503_with_retry_after_at_once() -> None:
    clock = FakeClock()
    a = Gated("a", clock)
    async with manager(a, clock=clock, limits={"a": (1, 0)}) as m:
        holder = asyncio.create_task(m.chat(req()))
        await until(lambda: a.running == 1)

        with pytest.raises(ProviderBusyError) as caught:
            await m.chat(req())

        a.gate.set()
        await holder
        assert m.registry.snapshot("a").in_flight == 0

    error = caught.value
    assert (error.http_status, error.retry_after) == (503, BUSY_RETRY_AFTER)
    assert error.to_body()["error"]["code"] == "provider_busy"
    assert error.retryable
    assert not error.retry_here
    assert error.attempts == 0
    assert len(a.requests) == 1
    assert clock.sleeps == []


async def test_a_request_waits_in_line_and_gets_the_freed_slot() -> None:
    clock = FakeClock()
    a = Gated("a", clock)
    async with manager(a, clock=clock, limits={"a": (1, 1)}) as m:
        first = asyncio.create_task(m.chat(req()))
        await until(lambda: a.running == 1)
        second = asyncio.create_task(m.chat(req()))
        await until(lambda: m.registry.snapshot("a").waiting == 1)

        with pytest.raises(ProviderBusyError):
            await m.chat(req())  # the line is full: turned away

        a.gate.set()
        replies = [await first, await second]
        snapshot = m.registry.snapshot("a")

    assert [r.choices[0].message.content for r in replies] == ["from a", "from a"]
    assert a.peak == 1
    assert (snapshot.in_flight, snapshot.waiting, snapshot.overflows) == (0, 0, 1)
    assert snapshot.successes == 2


async def test_waiting_for_a_slot_is_bounded_by_the_request_deadline() -> None:
    clock = FakeClock()
    # It says it stops at its deadline itself, so the holder has no timer around it: only
    # the waiter's deadline runs out.
    a = Gated("a", clock, honors_deadline=True)
    async with manager(clock=clock, request_timeout=0.02) as m:
        settings = RouteSettings(models=("m",), max_in_flight=1, max_waiting=4)
        m.register_provider(a, settings)
        holder = asyncio.create_task(m.chat(req()))
        await until(lambda: a.running == 1)

        with pytest.raises(ProviderBusyError) as caught:
            await m.chat(req())

        snapshot = m.registry.snapshot("a")
        a.gate.set()
        await holder

    assert caught.value.http_status == 503
    assert (snapshot.waiting, snapshot.errors, snapshot.breaker) == (0, {}, BreakerState.CLOSED)


async def test_a_request_cancelled_while_waiting_gives_its_place_back() -> None:
    clock = FakeClock()
    a = Gated("a", clock)
    async with manager(a, clock=clock, limits={"a": (1, 1)}) as m:
        holder = asyncio.create_task(m.chat(req()))
        await until(lambda: a.running == 1)
        waiter = asyncio.create_task(m.chat(req()))
        await until(lambda: m.registry.snapshot("a").waiting == 1)

        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        a.gate.set()
        await holder
        limit = m.registry.get("a").limit

    assert limit is not None
    assert (limit.in_flight, limit.waiting) == (0, 0)
    assert len(a.requests) == 1


async def test_a_stream_holds_its_slot_until_it_ends_or_is_closed() -> None:
    clock = FakeClock()
    a = MockProvider(name="a", models=["m"], reply="one two three", chunks=3, clock=clock)
    async with manager(a, clock=clock, limits={"a": (1, 0)}) as m:
        first = m.stream(req(stream=True))
        await anext(first)
        with pytest.raises(ProviderBusyError):
            await anext(m.stream(req(stream=True)))
        chunks: list[ChatCompletionChunk] = [chunk async for chunk in first]
        assert chunks

        second = m.stream(req(stream=True))
        await anext(second)
        await second.aclose()

        third = m.stream(req(stream=True))
        assert [chunk async for chunk in third]
        limit = m.registry.get("a").limit

    assert limit is not None
    assert (limit.in_flight, limit.overflows) == (0, 1)


async def test_a_failing_provider_gives_its_slot_back() -> None:
    clock = FakeClock()
    a = MockProvider(name="a", models=["m"], clock=clock)
    b = MockProvider(name="b", models=["m"], reply="from b", clock=clock)
    a.fail_always(Fault.status(500))
    async with manager(a, b, clock=clock, limits={"a": (1, 0), "b": (1, 0)}) as m:
        for _ in range(3):
            await m.chat(req())
            await m.stream(req(stream=True)).aclose()
        limits = [m.registry.get(name).limit for name in "ab"]

    assert all(limit is not None and limit.in_flight == 0 for limit in limits)


async def test_limits_come_from_the_provider_config() -> None:
    m = ProviderManager(health=HealthConfig(interval=0))
    limited = m.register(
        ProviderConfig(name="a", type="mock", models=["m"], max_in_flight=3, max_waiting=5)
    )
    free = m.register(ProviderConfig(name="b", type="mock", models=["m"]))

    assert limited.limit is not None
    assert (limited.limit.max_in_flight, limited.limit.max_waiting) == (3, 5)
    assert free.limit is None
    snapshots = {s.name: s for s in m.registry.snapshots()}
    assert (snapshots["a"].max_in_flight, snapshots["a"].max_waiting) == (3, 5)
    assert (snapshots["b"].max_in_flight, snapshots["b"].max_waiting) == (None, 0)
    await m.aclose()


def test_a_waiting_line_needs_a_limit() -> None:
    with pytest.raises(ValidationError, match="max_in_flight"):
        ProviderConfig(name="a", type="mock", max_waiting=2)
    with pytest.raises(ValidationError):
        ProviderConfig(name="a", type="mock", max_in_flight=0)
