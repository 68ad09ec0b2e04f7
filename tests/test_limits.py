"""Per-provider concurrency limits: the slots themselves, and how the manager uses them."""

from __future__ import annotations

import asyncio
import math
import random
import statistics
from collections import deque
from collections.abc import Coroutine
from typing import Any, cast

import pytest
from pydantic import ValidationError

from leapasgi.attempts import BUSY_RETRY_AFTER
from leapasgi.clock import FakeClock
from leapasgi.config import HealthConfig, ProviderConfig, RoutingConfig
from leapasgi.deadline import Deadline
from leapasgi.exceptions import ProviderBusyError
from leapasgi.health import BreakerState
from leapasgi.limits import (
    WAIT_BUCKETS,
    Acquired,
    ConcurrencyLimit,
    WaitHistogram,
    expected_wait,
)
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


SERVICE_TIME = 0.1


def at_once(acquiring: Coroutine[Any, Any, Acquired]) -> Acquired:
    """What ``acquiring`` decides without awaiting anything (it fails the test if it waits)."""
    try:
        acquiring.send(None)
    except StopIteration as done:
        return cast(Acquired, done.value)
    acquiring.close()
    raise AssertionError("the request waited")


def take_all(limit: ConcurrencyLimit) -> int:
    """Take every free slot; how many."""
    taken = 0
    while limit.try_acquire():
        taken += 1
    return taken


async def in_line(
    limit: ConcurrencyLimit,
    max_wait: float = 60.0,
    *,
    priority: int = 0,
    deadline: float | None = None,
    service_time: float = 0.0,
) -> asyncio.Task[Acquired]:
    """A request that has joined the line."""
    before = limit.waiting
    task = asyncio.create_task(
        limit.acquire(max_wait, priority=priority, deadline=deadline, service_time=service_time)
    )
    await until(lambda: limit.waiting == before + 1)
    return task


async def test_slots_run_out_at_the_limit_and_come_back_on_release() -> None:
    limit = ConcurrencyLimit(2)

    taken = [limit.try_acquire() for _ in range(3)]
    limit.release()

    assert taken == [True, True, False]
    assert limit.try_acquire()
    assert limit.in_flight == 2
    limit.release()
    limit.release()
    assert limit.in_flight == 0


async def test_waiters_get_freed_slots_first_come_first_served() -> None:
    limit = ConcurrencyLimit(1, max_waiting=2)
    assert limit.try_acquire()
    order: list[str] = []

    async def wait(name: str) -> None:
        assert await limit.acquire(10.0) is Acquired.TAKEN
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
    limit.release()
    assert limit.in_flight == 0


async def test_waiters_are_served_by_priority_then_deadline_then_arrival() -> None:
    limit = ConcurrencyLimit(1, max_waiting=6)
    assert limit.try_acquire()
    order: list[str] = []

    async def wait(name: str, priority: int, deadline: float | None) -> None:
        got = await limit.acquire(60.0, priority=priority, deadline=deadline)
        assert got is Acquired.TAKEN
        order.append(name)

    arrivals = [
        ("a", 0, None),
        ("b", 0, 1_005.0),
        ("c", 5, None),
        ("d", 0, 1_003.0),
        ("e", 5, 1_009.0),
        ("f", 0, None),
    ]
    tasks = []
    for name, priority, deadline in arrivals:
        tasks.append(asyncio.create_task(wait(name, priority, deadline)))
        await until(lambda: limit.waiting == len(tasks))
    assert not limit.try_acquire()  # not even ahead of the lowest priority

    for _ in arrivals:
        limit.release()
        await until(lambda: len(order) + limit.waiting == len(arrivals))
    await asyncio.gather(*tasks)

    assert order == ["e", "c", "d", "b", "a", "f"]
    limit.release()
    assert (limit.in_flight, limit.waiting) == (0, 0)


async def test_under_load_higher_priorities_wait_less() -> None:
    clock = FakeClock()
    limit = ConcurrencyLimit(4, max_waiting=200, clock=clock)
    rng = random.Random(5)
    arrivals = deque(rng.choice((0, 5, 9)) for _ in range(200))
    waits: dict[int, list[float]] = {0: [], 5: [], 9: []}
    serving: deque[asyncio.Event] = deque()
    finished = 0

    async def request(priority: int) -> None:
        nonlocal finished
        started = clock.monotonic()
        got = await limit.acquire(3_600.0, priority=priority, service_time=SERVICE_TIME)
        assert got is Acquired.TAKEN
        waits[priority].append(clock.monotonic() - started)
        done = asyncio.Event()
        serving.append(done)
        await done.wait()
        limit.release()
        finished += 1

    tasks: list[asyncio.Task[None]] = []

    def settled() -> bool:
        return limit.in_flight == len(serving) and (
            limit.waiting + len(serving) + finished == len(tasks)
        )

    # Two arrivals a step and one request done (each is served for about four steps): the
    # line grows while requests arrive, then drains.
    while arrivals or serving:
        for _ in range(2):
            if arrivals:
                tasks.append(asyncio.create_task(request(arrivals.popleft())))
        await until(settled)
        clock.advance(SERVICE_TIME / limit.max_in_flight)
        serving.popleft().set()
        await until(settled)
    await asyncio.gather(*tasks)

    means = [statistics.fmean(waits[priority]) for priority in (9, 5, 0)]
    assert means[0] < means[1] < means[2]
    everyone = [w for priority_waits in waits.values() for w in priority_waits]
    assert limit.wait_seconds.count == sum(1 for w in everyone if w > 0)
    assert limit.wait_seconds.sum == pytest.approx(sum(everyone))
    assert (limit.overflows, limit.shed, limit.timed_out) == (0, 0, 0)
    assert (limit.in_flight, limit.waiting) == (0, 0)


def test_the_expected_wait_is_a_turn_of_the_slots_per_request_ahead_and_its_own() -> None:
    assert expected_wait(0, 4, 1.0) == 0.25
    assert expected_wait(7, 4, 1.0) == 2.0
    assert expected_wait(3, 1, 0.0) == 0.0


async def test_a_request_that_cannot_be_served_in_time_is_shed_at_once() -> None:
    limit = ConcurrencyLimit(2, max_waiting=5)
    held = take_all(limit)
    first = await in_line(limit, service_time=10.0)

    # Behind the first: (1 + 1) / 2 slots * 10 s expected, then 10 s to be served.
    assert at_once(limit.acquire(19.99, service_time=10.0)) is Acquired.SHED
    # Ahead of it, by priority or by an earlier deadline: 5 s, then 10 s.
    assert at_once(limit.acquire(14.99, priority=9, service_time=10.0)) is Acquired.SHED
    assert at_once(limit.acquire(14.99, deadline=0.0, service_time=10.0)) is Acquired.SHED
    assert (limit.shed, limit.overflows, limit.waiting) == (3, 0, 1)

    behind = await in_line(limit, 20.0, service_time=10.0)
    ahead = await in_line(limit, 15.0, priority=9, service_time=10.0)
    for _ in range(held):
        limit.release()
    assert await ahead is Acquired.TAKEN
    assert await first is Acquired.TAKEN
    limit.release()
    assert await behind is Acquired.TAKEN

    limit.release()
    limit.release()
    assert (limit.in_flight, limit.waiting, limit.timed_out) == (0, 0, 0)


async def test_no_time_to_wait_means_no_wait() -> None:
    limit = ConcurrencyLimit(1, max_waiting=5)
    limit.try_acquire()

    assert at_once(limit.acquire(0.0)) is Acquired.SHED
    # No time left after being served: no point waiting either.
    assert at_once(limit.acquire(5.0, service_time=5.0)) is Acquired.SHED
    assert (limit.waiting, limit.shed, limit.overflows, limit.wait_seconds.count) == (0, 2, 0, 0)
    limit.release()
    assert limit.in_flight == 0


async def test_a_full_line_is_refused_at_once_and_counted() -> None:
    limit = ConcurrencyLimit(1, max_waiting=1)
    limit.try_acquire()
    waiter = await in_line(limit, 10.0)

    assert at_once(limit.acquire(10.0, priority=9)) is Acquired.FULL
    assert (limit.overflows, limit.shed) == (1, 0)

    limit.release()
    assert await waiter is Acquired.TAKEN
    limit.release()
    assert limit.in_flight == 0


async def test_a_wait_that_runs_out_leaves_the_line() -> None:
    limit = ConcurrencyLimit(1, max_waiting=5)
    limit.try_acquire()

    assert await limit.acquire(0.001) is Acquired.TIMED_OUT
    assert (limit.waiting, limit.timed_out, limit.wait_seconds.count) == (0, 1, 0)
    limit.release()
    assert limit.in_flight == 0


async def test_a_waiter_gives_up_when_it_could_no_longer_be_served_in_time() -> None:
    limit = ConcurrencyLimit(1_000, max_waiting=1)
    held = take_all(limit)
    # Expected wait: 1 / 1000 slots * 10 s = 0.01 s, so it joins the line; it gives up when
    # 10 s of its 10.02 s are left, long before this slot is freed.
    late = asyncio.get_running_loop().call_later(1.0, limit.release)

    got = await limit.acquire(10.02, service_time=10.0)
    late.cancel()

    assert got is Acquired.TIMED_OUT
    assert (limit.timed_out, limit.shed, limit.waiting) == (1, 0, 0)
    for _ in range(held):
        limit.release()
    assert limit.in_flight == 0


async def test_a_cancelled_waiter_leaves_the_line_and_takes_no_slot() -> None:
    limit = ConcurrencyLimit(1, max_waiting=1)
    limit.try_acquire()
    waiter = await in_line(limit, 10.0)

    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    limit.release()

    assert (limit.in_flight, limit.waiting) == (0, 0)


async def test_a_cancelled_waiter_gives_up_its_place_and_the_rest_keep_their_order() -> None:
    limit = ConcurrencyLimit(1, max_waiting=4)
    limit.try_acquire()
    waiters = {priority: await in_line(limit, priority=priority) for priority in (1, 7, 3, 5)}

    waiters[5].cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiters[5]
    assert limit.waiting == 3

    for priority in (7, 3, 1):
        limit.release()
        await until(waiters[priority].done)
        assert waiters[priority].result() is Acquired.TAKEN
        assert sum(not w.done() for w in waiters.values()) == limit.waiting
    limit.release()
    assert (limit.in_flight, limit.waiting) == (0, 0)


async def test_a_slot_handed_to_a_waiter_that_gives_up_passes_to_the_next() -> None:
    limit = ConcurrencyLimit(1, max_waiting=2)
    limit.try_acquire()
    quitter = await in_line(limit, 10.0, priority=1)
    patient = await in_line(limit, 10.0)

    limit.release()  # the slot goes to the quitter, who is cancelled before it runs
    quitter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await quitter

    assert await patient is Acquired.TAKEN
    assert (limit.in_flight, limit.waiting) == (1, 0)
    limit.release()
    assert limit.in_flight == 0


async def test_raising_the_limit_hands_the_new_slots_to_the_line_at_once() -> None:
    limit = ConcurrencyLimit(1, max_waiting=3)
    limit.try_acquire()
    low, high, middle = [await in_line(limit, priority=p) for p in (0, 9, 5)]

    limit.set_limit(3)

    assert (limit.in_flight, limit.waiting) == (3, 1)
    assert await high is Acquired.TAKEN
    assert await middle is Acquired.TAKEN
    assert not low.done()
    assert not limit.try_acquire()
    limit.release()
    assert await low is Acquired.TAKEN
    for _ in range(3):
        limit.release()
    assert (limit.in_flight, limit.waiting) == (0, 0)


async def test_lowering_the_limit_lets_the_requests_in_flight_finish() -> None:
    limit = ConcurrencyLimit(3, max_waiting=2)
    take_all(limit)

    limit.set_limit(1)

    assert limit.in_flight == 3  # nobody is cut off
    # Two of them must end before a slot frees up: (2 + 1) / 1 slot * 1 s, then 1 s.
    assert at_once(limit.acquire(3.99, service_time=1.0)) is Acquired.SHED
    waiter = await in_line(limit)
    limit.release()
    limit.release()
    assert (limit.in_flight, limit.waiting) == (1, 1)  # their slots went away
    assert not limit.try_acquire()
    limit.release()
    assert await waiter is Acquired.TAKEN
    assert limit.in_flight == 1
    limit.release()
    assert limit.try_acquire()
    assert not limit.try_acquire()
    limit.release()
    assert (limit.in_flight, limit.waiting) == (0, 0)


async def test_only_waits_in_line_are_counted_in_the_histogram() -> None:
    clock = FakeClock()
    limit = ConcurrencyLimit(1, max_waiting=2, clock=clock)
    assert at_once(limit.acquire(1.0)) is Acquired.TAKEN  # a free slot: no wait
    first = await in_line(limit)
    second = await in_line(limit)

    clock.advance(0.03)
    limit.release()
    assert await first is Acquired.TAKEN
    clock.advance(2.0)
    limit.release()
    assert await second is Acquired.TAKEN
    limit.release()

    waits = limit.wait_seconds
    assert (waits.count, waits.sum) == (2, pytest.approx(2.06))
    by_bound = dict(zip((*waits.buckets, math.inf), waits.counts, strict=True))
    assert (by_bound[0.025], by_bound[0.05], by_bound[2.5], by_bound[math.inf]) == (0, 1, 2, 2)
    assert limit.in_flight == 0


def test_the_histogram_buckets_hold_waits_up_to_their_bound() -> None:
    waits = WaitHistogram((1.0, 2.0))
    for seconds in (1.0, 1.5, 2.0, 3.0):
        waits.observe(seconds)

    assert waits.counts == (1, 3, 4)
    assert (waits.count, waits.sum) == (4, 7.5)
    assert WaitHistogram().buckets == WAIT_BUCKETS
    with pytest.raises(ValueError, match="increasing"):
        WaitHistogram((2.0, 1.0))
    with pytest.raises(ValueError, match="increasing"):
        WaitHistogram((1.0, math.inf))


def test_limits_must_make_sense() -> None:
    with pytest.raises(ValueError, match="max_in_flight"):
        ConcurrencyLimit(0)
    with pytest.raises(ValueError, match="max_waiting"):
        ConcurrencyLimit(1, -1)
    with pytest.raises(ValueError, match="max_in_flight"):
        ConcurrencyLimit(1).set_limit(0)


async def test_a_negative_service_time_is_a_mistake() -> None:
    with pytest.raises(ValueError, match="service_time"):
        await ConcurrencyLimit(1).acquire(1.0, service_time=-1.0)


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


async def test_an_outcome_has_no_truth_value() -> None:
    limit = ConcurrencyLimit(1)

    with pytest.raises(TypeError, match="is"):
        assert await limit.acquire(1.0)
    limit.release()
    assert limit.in_flight == 0
