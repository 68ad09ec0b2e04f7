"""The ledger's rule, in memory and in Redis: a budget is refused only once real spend reached
it, exceeded by at most the one request that went alone, and every reservation comes back."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from pydantic import SecretStr

from leapasgi.clock import FakeClock
from leapasgi.state.redis import RedisState
from leapasgi.tenants._redis_ledger import RedisLedger
from leapasgi.tenants.ledger import Held, Ledger, MemoryLedger, Refused, Ticket, period_end
from leapasgi.tenants.policy import Budget, Period
from tests.redis_server import RedisServer, redis_server

__all__ = ["redis_server"]

pytestmark = pytest.mark.anyio

# 2026-12-06 12:00 UTC
NOON = 1_796_558_400.0
BUDGET = Budget(1.0, Period.DAY)


def clock() -> FakeClock:
    return FakeClock(wall=NOON)


class Ledgers:
    """A memory ledger, or Redis ledgers (replicas) on one server."""

    def __init__(self, server: RedisServer | None) -> None:
        self.server = server
        self.states: list[RedisState] = []
        self.alerts: list[tuple[str, str]] = []

    async def make(self, *, margin: float = 5.0) -> Ledger:
        if self.server is None:
            return MemoryLedger(clock=clock())
        state = RedisState(SecretStr(self.server.url), op_timeout=1.0)
        self.states.append(state)
        await state.start(lambda event: None)
        ledger = RedisLedger(
            state.link,
            state.prefix,
            clock=clock(),
            replicas=1,
            spawn=state.spawn,
            on_alert=lambda subject, budget, period: self.alerts.append((subject, period)),
        )
        ledger.margin = margin
        return ledger

    async def aclose(self) -> None:
        for state in self.states:
            await state.aclose()


@pytest.fixture(params=["memory", "redis"])
async def ledgers(request: pytest.FixtureRequest) -> AsyncIterator[Ledgers]:
    server = request.getfixturevalue("redis_server") if request.param == "redis" else None
    group = Ledgers(server)
    try:
        yield group
    finally:
        await group.aclose()


async def settled(ledger: Ledger, ticket: Ticket, usd: float) -> None:
    """Settle, and wait until a shared ledger has it (its settlement runs in the background)."""
    ledger.settle(ticket, usd)
    for _ in range(500):
        await asyncio.sleep(0.005)
        if isinstance(ledger, MemoryLedger):
            return
        probe = await ledger.reserve("probe", usd=0, budget=None, max_in_flight=None)
        assert isinstance(probe, Ticket)
        ledger.settle(probe, 0)
        if await _spent_at_least(ledger, ticket.subject, usd):
            return


async def _spent_at_least(ledger: Ledger, subject: str, usd: float) -> bool:
    return usd <= 0 or await ledger.spent(subject, BUDGET) >= usd - 1e-9


async def test_an_estimate_that_fits_is_reserved_whole(ledgers: Ledgers) -> None:
    ledger = await ledgers.make()
    ticket = await ledger.reserve("k:a", usd=0.25, budget=BUDGET, max_in_flight=None)
    assert isinstance(ticket, Ticket)
    assert ticket.usd == pytest.approx(0.25)
    await settled(ledger, ticket, 0.1)
    assert await ledger.spent("k:a", BUDGET) == pytest.approx(0.1)


async def test_spend_at_the_budget_is_refused_until_the_period_ends(ledgers: Ledgers) -> None:
    ledger = await ledgers.make()
    ticket = await ledger.reserve("k:a", usd=0.5, budget=BUDGET, max_in_flight=None)
    assert isinstance(ticket, Ticket)
    await settled(ledger, ticket, 1.0)
    refused = await ledger.reserve("k:a", usd=0.01, budget=BUDGET, max_in_flight=None)
    assert isinstance(refused, Refused)
    assert refused.reason == "budget"
    assert refused.retry_after == pytest.approx(12 * 3600, abs=1)  # midnight UTC
    assert refused.spent == pytest.approx(1.0)
    # Another subject, another budget.
    other = await ledger.reserve("k:b", usd=0.01, budget=BUDGET, max_in_flight=None)
    assert isinstance(other, Ticket)


async def test_what_does_not_fit_waits_for_requests_in_flight(ledgers: Ledgers) -> None:
    ledger = await ledgers.make()
    first = await ledger.reserve("k:a", usd=0.75, budget=BUDGET, max_in_flight=None)
    assert isinstance(first, Ticket)
    # 0.25 is left, and a request is in flight: the next waits rather than being refused.
    assert isinstance(await ledger.reserve("k:a", usd=0.5, budget=BUDGET, max_in_flight=None), Held)
    await settled(ledger, first, 0.2)  # it cost less than its estimate
    second = await ledger.reserve("k:a", usd=0.5, budget=BUDGET, max_in_flight=None)
    assert isinstance(second, Ticket)
    assert second.usd == pytest.approx(0.5)


async def test_a_request_alone_goes_with_what_is_left(ledgers: Ledgers) -> None:
    ledger = await ledgers.make()
    first = await ledger.reserve("k:a", usd=0.9, budget=BUDGET, max_in_flight=None)
    assert isinstance(first, Ticket)
    await settled(ledger, first, 0.9)
    # Nothing in flight, 0.1 left, a 0.5 estimate: it goes, holding the 0.1.
    last = await ledger.reserve("k:a", usd=0.5, budget=BUDGET, max_in_flight=None)
    assert isinstance(last, Ticket)
    assert last.usd == pytest.approx(0.1)
    assert isinstance(
        await ledger.reserve("k:a", usd=0.01, budget=BUDGET, max_in_flight=None), Held
    )
    await settled(ledger, last, 0.3)  # over by this one request only
    refused = await ledger.reserve("k:a", usd=0.01, budget=BUDGET, max_in_flight=None)
    assert isinstance(refused, Refused)
    assert refused.spent == pytest.approx(1.2)


async def test_a_released_reservation_leaves_nothing_behind(ledgers: Ledgers) -> None:
    ledger = await ledgers.make()
    for _ in range(50):  # cancelled requests: each gives its reservation back
        ticket = await ledger.reserve("k:a", usd=0.6, budget=BUDGET, max_in_flight=None)
        assert isinstance(ticket, Ticket)
        assert ticket.usd == pytest.approx(0.6)
        await settled(ledger, ticket, 0.0)
    assert await ledger.spent("k:a", BUDGET) == 0.0


async def test_requests_in_flight_are_limited(ledgers: Ledgers) -> None:
    ledger = await ledgers.make()
    held = [await ledger.reserve("k:a", usd=0, budget=None, max_in_flight=2) for _ in range(2)]
    assert all(isinstance(t, Ticket) for t in held)
    refused = await ledger.reserve("k:a", usd=0, budget=None, max_in_flight=2)
    assert isinstance(refused, Refused)
    assert refused.reason == "in_flight"
    first = held[0]
    assert isinstance(first, Ticket)
    await settled(ledger, first, 0)
    for _ in range(100):
        again = await ledger.reserve("k:a", usd=0, budget=None, max_in_flight=2)
        if isinstance(again, Ticket):
            break
        await asyncio.sleep(0.01)
    assert isinstance(again, Ticket)


async def test_a_settlement_twice_counts_once(ledgers: Ledgers) -> None:
    ledger = await ledgers.make()
    ticket = await ledger.reserve("k:a", usd=0.1, budget=BUDGET, max_in_flight=None)
    assert isinstance(ticket, Ticket)
    await settled(ledger, ticket, 0.1)
    ledger.settle(ticket, 0.1)
    await asyncio.sleep(0.05)
    assert await ledger.spent("k:a", BUDGET) == pytest.approx(0.1)


async def test_a_waiting_request_wakes_when_one_settles() -> None:
    ledger = MemoryLedger(clock=clock())
    first = await ledger.reserve("k:a", usd=0.9, budget=BUDGET, max_in_flight=None)
    assert isinstance(first, Ticket)
    waiter = asyncio.ensure_future(ledger.wait("k:a", 60.0))
    await asyncio.sleep(0)
    assert not waiter.done()
    ledger.settle(first, 0.1)
    await asyncio.wait_for(waiter, 5)


def test_periods_end_at_utc_midnight_and_month_end() -> None:
    assert period_end(Period.DAY, NOON) == NOON + 12 * 3600
    assert period_end(Period.MONTH, NOON) == NOON + (25 * 24 + 12) * 3600  # 2027-01-01
    assert period_end(Period.TOTAL, NOON) is None


async def test_a_reservation_of_a_dead_replica_lapses(redis_server: RedisServer) -> None:
    group = Ledgers(redis_server)
    try:
        dead = await group.make(margin=0.2)
        alive = await group.make()
        ticket = await dead.reserve("k:a", usd=0.9, budget=BUDGET, max_in_flight=1)
        assert isinstance(ticket, Ticket)  # and never settled: its replica is gone
        assert isinstance(
            await alive.reserve("k:a", usd=0.5, budget=BUDGET, max_in_flight=1), Refused
        )
        for _ in range(300):
            got = await alive.reserve("k:a", usd=0.5, budget=BUDGET, max_in_flight=1)
            if isinstance(got, Ticket):
                break
            await asyncio.sleep(0.01)
        assert isinstance(got, Ticket)
        assert got.usd == pytest.approx(0.5)
    finally:
        await group.aclose()


async def test_replicas_share_one_budget(redis_server: RedisServer) -> None:
    group = Ledgers(redis_server)
    try:
        a, b = await group.make(), await group.make()
        ticket = await a.reserve("k:a", usd=0.6, budget=BUDGET, max_in_flight=None)
        assert isinstance(ticket, Ticket)
        assert isinstance(await b.reserve("k:a", usd=0.6, budget=BUDGET, max_in_flight=None), Held)
        await settled(a, ticket, 1.0)
        refused = await b.reserve("k:a", usd=0.01, budget=BUDGET, max_in_flight=None)
        assert isinstance(refused, Refused)
        assert await b.spent("k:a", BUDGET) == pytest.approx(1.0)
    finally:
        await group.aclose()


async def test_the_alert_fires_once_per_period(redis_server: RedisServer) -> None:
    group = Ledgers(redis_server)
    alerting = Budget(1.0, Period.DAY, alert_at=0.5)
    try:
        ledger = await group.make()
        for _ in range(4):
            ticket = await ledger.reserve("k:a", usd=0.2, budget=alerting, max_in_flight=None)
            assert isinstance(ticket, Ticket)
            await settled(ledger, ticket, 0.2)
        for _ in range(100):
            if group.alerts:
                break
            await asyncio.sleep(0.01)
        assert group.alerts == [("k:a", "2026-12-06")]
    finally:
        await group.aclose()


def test_the_memory_alert_fires_once_per_period() -> None:
    ledger = MemoryLedger(clock=clock())
    alerting = Budget(1.0, Period.DAY, alert_at=0.5)
    for _ in range(4):
        ticket = ledger.reserve_now("k:a", usd=0.2, budget=alerting, max_in_flight=None)
        assert isinstance(ticket, Ticket)
        ledger.settle(ticket, 0.2)
    assert ledger.alerts == 1
