"""Budgets and requests in flight per subject (a virtual key, or a tenant): reserve before a
request, settle with its real cost after it.

The rule, the same in memory and in Redis (``_redis_ledger.py``), for a budget of B with S spent
and R reserved by requests in flight in the current period:

- S >= B: refused, until the period ends;
- a request's estimate fits in B - S - R: reserved whole;
- it does not fit and nothing else is in flight: it goes alone, reserving B - S - R;
- it does not fit and others are in flight: it waits for one of them to settle (their real cost
  is usually below their estimate), within its deadline, never refused for spend not yet made.

So spend exceeds B by at most the one request that went alone, and a request is refused only
when real spend has reached B. A settlement gives the reservation back and adds the real cost;
a reservation never settled (its replica died) lapses with its lease.
"""

from __future__ import annotations

import asyncio
import calendar
import datetime as dt
import itertools
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol

from ..clock import Clock
from .policy import Budget, Period, period_key

__all__ = [
    "Held",
    "Ledger",
    "MemoryLedger",
    "Refused",
    "Ticket",
    "period_end",
    "spend_keys",
]


def spend_keys(wall: float) -> tuple[str, str, str]:
    """The period keys spend at ``wall`` is added to: its day, its month, and all time."""
    return (
        period_key(Period.DAY, wall),
        period_key(Period.MONTH, wall),
        period_key(Period.TOTAL, wall),
    )


def period_end(period: Period, wall: float) -> float | None:
    """Wall time the period ``wall`` is in ends (None: a total budget never renews)."""
    if period is Period.TOTAL:
        return None
    now = dt.datetime.fromtimestamp(wall, dt.UTC)
    if period is Period.DAY:
        start = now.replace(hour=0, minute=0, second=0, microsecond=0)
        return (start + dt.timedelta(days=1)).timestamp()
    days = calendar.monthrange(now.year, now.month)[1]
    start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    return (start + dt.timedelta(days=days)).timestamp()


@dataclass(slots=True)
class Ticket:
    """What one request holds until it settles: ``usd`` of its subject's budget (0 without
    one) and, with a limit, one of its requests in flight."""

    subject: str
    usd: float
    budget: Budget | None
    slot: bool
    id: str = ""
    settled: bool = False


@dataclass(frozen=True, slots=True)
class Refused:
    """No: the budget is spent (``reason`` "budget", until ``retry_after`` seconds from now,
    None for a total budget) or the requests in flight are at the limit ("in_flight")."""

    reason: str
    retry_after: float | None
    spent: float = 0.0


@dataclass(frozen=True, slots=True)
class Held:
    """Not now: the rest of the budget is reserved by requests in flight; wait for one."""


HELD = Held()


class Ledger(Protocol):
    async def reserve(
        self,
        subject: str,
        *,
        usd: float,
        budget: Budget | None,
        max_in_flight: int | None,
        lease: float = 0.0,
    ) -> Ticket | Refused | Held:
        """Reserve ``usd`` of ``budget`` and a request in flight (with ``max_in_flight``), for
        at most ``lease`` seconds (the request's time; a shared ledger adds a margin) if it
        is never settled."""
        ...

    def settle(self, ticket: Ticket, usd: float) -> None:
        """End ``ticket``: ``usd`` was really spent. Never waits; a second call does nothing."""
        ...

    async def wait(self, subject: str, within: float) -> None:
        """Return when a request of ``subject`` settles, or after ``within`` seconds."""
        ...

    async def spent(self, subject: str, budget: Budget) -> float:
        """What ``subject`` spent in ``budget``'s current period."""
        ...


@dataclass(slots=True)
class _Account:
    spent: dict[str, float] = field(default_factory=dict)
    reserved: float = 0.0
    holders: int = 0  # requests holding part of the budget
    in_flight: int = 0  # requests holding a slot
    settled: asyncio.Event | None = None
    alerted: set[str] = field(default_factory=set)


class MemoryLedger:
    """The ledger in this process. ``load`` seeds spend (from the SQLite file at start);
    ``take_spend`` hands out what was spent since it was last called, to be kept there.
    ``divisor`` gives each of that many replicas its share of a budget (a degraded shared
    backend's fallback)."""

    def __init__(
        self,
        *,
        clock: Clock,
        divisor: int = 1,
        on_alert: Callable[[str, Budget, str], None] | None = None,
    ) -> None:
        self._clock = clock
        self._divisor = max(1, divisor)
        self._on_alert = on_alert
        self._accounts: dict[str, _Account] = {}
        self._unsaved: dict[tuple[str, str], float] = {}
        self._ids = itertools.count(1)
        self.alerts = 0

    def load(self, rows: Iterable[tuple[str, str, float]]) -> None:
        """Spend as kept: (subject, period key, usd) rows."""
        for subject, key, usd in rows:
            account = self._account(subject)
            account.spent[key] = account.spent.get(key, 0.0) + usd

    def take_spend(self) -> list[tuple[str, str, float]]:
        """(subject, period key, usd) spent since the last call."""
        unsaved, self._unsaved = self._unsaved, {}
        return [(subject, key, usd) for (subject, key), usd in unsaved.items()]

    def unsaved(self, rows: Iterable[tuple[str, str, float]]) -> None:
        """Spend ``take_spend`` gave out that could not be kept: given out again next time."""
        unsaved = self._unsaved
        for subject, key, usd in rows:
            unsaved[subject, key] = unsaved.get((subject, key), 0.0) + usd

    def _account(self, subject: str) -> _Account:
        account = self._accounts.get(subject)
        if account is None:
            account = self._accounts[subject] = _Account()
        return account

    async def reserve(
        self,
        subject: str,
        *,
        usd: float,
        budget: Budget | None,
        max_in_flight: int | None,
        lease: float = 0.0,
    ) -> Ticket | Refused | Held:
        # In one process a ticket is always settled: the outcome that holds it is recorded
        # whatever ends the request.
        return self.reserve_now(subject, usd=usd, budget=budget, max_in_flight=max_in_flight)

    def reserve_now(
        self, subject: str, *, usd: float, budget: Budget | None, max_in_flight: int | None
    ) -> Ticket | Refused | Held:
        """``reserve``, synchronously."""
        account = self._account(subject)
        if max_in_flight is not None and account.in_flight >= max_in_flight:
            return Refused("in_flight", 1.0)
        granted = 0.0
        if budget is not None:
            wall = self._clock.time()
            limit = budget.usd / self._divisor
            spent = account.spent.get(period_key(budget.period, wall), 0.0)
            if spent >= limit:
                end = period_end(budget.period, wall)
                return Refused("budget", None if end is None else end - wall, spent)
            room = limit - spent - account.reserved
            if usd <= room:
                granted = usd
            elif account.holders == 0:
                granted = room  # alone: at most this one request goes over
            else:
                return HELD
            account.reserved += granted
            account.holders += 1
        slot = max_in_flight is not None
        if slot:
            account.in_flight += 1
        return Ticket(subject, granted, budget, slot, id=str(next(self._ids)))

    def settle(self, ticket: Ticket, usd: float) -> None:
        if ticket.settled:
            return
        ticket.settled = True
        account = self._account(ticket.subject)
        if ticket.slot:
            account.in_flight -= 1
        budget = ticket.budget
        if budget is not None:
            account.holders -= 1
            account.reserved = max(0.0, account.reserved - ticket.usd) if account.holders else 0.0
        if usd > 0:
            unsaved = self._unsaved
            for key in spend_keys(self._clock.time()):
                account.spent[key] = account.spent.get(key, 0.0) + usd
                unsaved[ticket.subject, key] = unsaved.get((ticket.subject, key), 0.0) + usd
            if budget is not None and budget.alert_at is not None:
                self._alert(ticket.subject, account, budget)
        self._wake(account)

    def notify(self, subject: str) -> None:
        """Wake the requests of ``subject`` waiting for a settlement (made elsewhere)."""
        account = self._accounts.get(subject)
        if account is not None:
            self._wake(account)

    @staticmethod
    def _wake(account: _Account) -> None:
        event = account.settled
        if event is not None:
            account.settled = None
            event.set()

    def _alert(self, subject: str, account: _Account, budget: Budget) -> None:
        key = period_key(budget.period, self._clock.time())
        threshold = (budget.alert_at or 1.0) * budget.usd / self._divisor
        if key not in account.alerted and account.spent.get(key, 0.0) >= threshold:
            account.alerted.add(key)
            self.alerts += 1
            if self._on_alert is not None:
                self._on_alert(subject, budget, key)

    async def wait(self, subject: str, within: float) -> None:
        account = self._account(subject)
        event = account.settled
        if event is None:
            event = account.settled = asyncio.Event()
        try:
            async with asyncio.timeout(within):
                await event.wait()
        except TimeoutError:
            pass

    async def spent(self, subject: str, budget: Budget) -> float:
        account = self._accounts.get(subject)
        if account is None:
            return 0.0
        return account.spent.get(period_key(budget.period, self._clock.time()), 0.0)
