"""The ledger in Redis: budgets and requests in flight, exact across replicas.

Per subject, one hash holds the reserved sum (``r``), the requests holding budget (``h``) and
slots (``f``), and spend per period (``s:2026-12-06``, ``s:2026-12``, ``s:total``); a sorted set
holds each ticket's lease (its expiry on the server's clock), a second hash what each holds.
One script reserves (lapsing expired tickets first, then ``ledger.py``'s rule), one settles.
While Redis is away the ledger runs in memory from the spend last seen, each replica on its
share of what was left (``replicas``), and its spend is sent once Redis is back.
"""

from __future__ import annotations

import asyncio
import os
from collections import deque
from collections.abc import Callable, Coroutine
from typing import Any

from ..clock import Clock
from ..state._redis_link import DOWN, Link
from ..state._resp import Script
from .ledger import HELD, Held, MemoryLedger, Refused, Ticket, period_end, spend_keys
from .policy import Budget, period_key

__all__ = ["LEASE_MARGIN", "RedisLedger"]

# Seconds a ticket outlives its request's deadline before it lapses (its replica died). Lease
# times are the server's, so no clock skew between replicas needs a margin; the answer still
# being accounted after the deadline does.
LEASE_MARGIN = 5.0
# Days a subject's spend is kept after its last request.
SPEND_TTL = 400 * 86_400
# Spend made while Redis was away, kept to be sent once it is back.
MAX_PENDING = 10_000

_NOW_AND_LAPSE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local function release(id)
  local held = redis.call('HGET', KEYS[3], id)
  if held then
    local usd, slot, budget = string.match(held, '^(%S+) (%d) (%d)$')
    if budget == '1' then
      redis.call('HINCRBYFLOAT', KEYS[1], 'r', -tonumber(usd))
      redis.call('HINCRBY', KEYS[1], 'h', -1)
    end
    if slot == '1' then redis.call('HINCRBY', KEYS[1], 'f', -1) end
    redis.call('HDEL', KEYS[3], id)
  end
  redis.call('ZREM', KEYS[2], id)
end
local lapsed = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now)
for _, id in ipairs(lapsed) do release(id) end
local function tidy()
  if tonumber(redis.call('HGET', KEYS[1], 'h') or '0') <= 0 then
    redis.call('HSET', KEYS[1], 'r', '0', 'h', '0')
  end
end
"""

# ARGV: ticket id, usd, budget (-1: none), period key, max in flight (-1: none), lease ms.
# Returns {'ok', granted, spent} | {'budget' | 'in_flight' | 'held', spent}.
_RESERVE = Script(
    _NOW_AND_LAPSE
    + """
tidy()
local state = redis.call('HMGET', KEYS[1], 'r', 'h', 'f', 's:' .. ARGV[4])
local reserved = tonumber(state[1] or '0')
local holders = tonumber(state[2] or '0')
local inflight = tonumber(state[3] or '0')
local spent = tonumber(state[4] or '0')
local maxf = tonumber(ARGV[5])
if maxf >= 0 and inflight >= maxf then return {'in_flight', tostring(spent)} end
local budget = tonumber(ARGV[3])
local usd = tonumber(ARGV[2])
local granted = 0
local inbudget = 0
if budget >= 0 then
  if spent >= budget then return {'budget', tostring(spent)} end
  local room = budget - spent - reserved
  if usd <= room then granted = usd
  elseif holders <= 0 then granted = room
  else return {'held', tostring(spent)} end
  inbudget = 1
  redis.call('HINCRBYFLOAT', KEYS[1], 'r', granted)
  redis.call('HINCRBY', KEYS[1], 'h', 1)
end
local slot = 0
if maxf >= 0 then
  slot = 1
  redis.call('HINCRBY', KEYS[1], 'f', 1)
end
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[6]), ARGV[1])
redis.call('HSET', KEYS[3], ARGV[1], string.format('%.17g %d %d', granted, slot, inbudget))
redis.call('PEXPIRE', KEYS[2], tonumber(ARGV[6]) + 1000)
redis.call('PEXPIRE', KEYS[3], tonumber(ARGV[6]) + 1000)
return {'ok', string.format('%.17g', granted), tostring(spent)}
"""
)

# ARGV: ticket id ('' for spend only), usd spent, day key, month key, spend ttl s,
# alert threshold (-1: none), the budget's period key. Returns 1 when the alert fires now.
_SETTLE = Script(
    _NOW_AND_LAPSE
    + """
if ARGV[1] ~= '' then release(ARGV[1]) end
tidy()
local usd = tonumber(ARGV[2])
if usd > 0 then
  redis.call('HINCRBYFLOAT', KEYS[1], 's:' .. ARGV[3], usd)
  redis.call('HINCRBYFLOAT', KEYS[1], 's:' .. ARGV[4], usd)
  redis.call('HINCRBYFLOAT', KEYS[1], 's:total', usd)
end
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[5]))
local threshold = tonumber(ARGV[6])
if threshold >= 0 then
  local spent = tonumber(redis.call('HGET', KEYS[1], 's:' .. ARGV[7]) or '0')
  if spent >= threshold then
    return redis.call('HSETNX', KEYS[1], 'alert:' .. ARGV[7], '1')
  end
end
return 0
"""
)


class RedisLedger:
    """``Ledger`` in Redis; ``MemoryLedger`` while Redis is away."""

    def __init__(
        self,
        link: Link,
        prefix: str,
        *,
        clock: Clock,
        replicas: int,
        spawn: Callable[[Coroutine[Any, Any, None]], asyncio.Task[None]],
        on_alert: Callable[[str, Budget, str], None],
        poll: float = 0.02,
    ) -> None:
        self._link = link
        self._prefix = f"{prefix}:ledger:"
        self._clock = clock
        self._spawn = spawn
        self._on_alert = on_alert
        self._poll = poll
        self._replicas = max(1, replicas)
        self._fallback = MemoryLedger(clock=clock, divisor=self._replicas)
        self._seen: dict[tuple[str, str], float] = {}
        self._seeded: set[tuple[str, str]] = set()
        self._pending: deque[tuple[str, float]] = deque(maxlen=MAX_PENDING)
        self.margin = LEASE_MARGIN

    def _keys(self, subject: str) -> list[str]:
        base = self._prefix + subject
        return [base, base + ":t", base + ":a"]

    async def reserve(
        self,
        subject: str,
        *,
        usd: float,
        budget: Budget | None,
        max_in_flight: int | None,
        lease: float = 0.0,
    ) -> Ticket | Refused | Held:
        wall = self._clock.time()
        key = period_key(budget.period, wall) if budget is not None else "total"
        if self._link.up and self._pending:
            await self._replay()
        ticket_id = os.urandom(8).hex()
        reply = await self._link.run(
            _RESERVE,
            self._keys(subject),
            [
                ticket_id,
                repr(usd),
                repr(budget.usd) if budget is not None else "-1",
                key,
                str(max_in_flight) if max_in_flight is not None else "-1",
                str(int((lease + self.margin) * 1000)),
            ],
        )
        if reply is DOWN:
            return self._reserve_locally(subject, key, usd, budget, max_in_flight)
        verdict = reply[0].decode() if isinstance(reply[0], bytes) else str(reply[0])
        spent = float(reply[-1])
        self._seen[subject, key] = spent
        if verdict == "ok":
            slot = max_in_flight is not None
            return Ticket(subject, float(reply[1]), budget, slot, id=ticket_id)
        if verdict == "held":
            return HELD
        if verdict == "in_flight":
            return Refused("in_flight", 1.0, spent)
        assert budget is not None
        end = period_end(budget.period, wall)
        return Refused("budget", None if end is None else end - wall, spent)

    def _reserve_locally(
        self,
        subject: str,
        key: str,
        usd: float,
        budget: Budget | None,
        max_in_flight: int | None,
    ) -> Ticket | Refused | Held:
        if (subject, key) not in self._seeded:
            self._seeded.add((subject, key))
            seen = self._seen.get((subject, key))
            if seen:
                # What was spent when Redis was last seen, as this replica's share of it.
                self._fallback.load([(subject, key, seen / self._replicas)])
        ticket = self._fallback.reserve_now(
            subject, usd=usd, budget=budget, max_in_flight=max_in_flight
        )
        if isinstance(ticket, Ticket):
            ticket.id = ""  # a local ticket: settled locally, its spend sent later
        return ticket

    def settle(self, ticket: Ticket, usd: float) -> None:
        if ticket.settled:
            return
        if not ticket.id:
            self._fallback.settle(ticket, usd)
            if usd > 0:
                self._pending.append((ticket.subject, usd))
            return
        ticket.settled = True
        self._spawn(self._settle(ticket, usd))

    async def _settle(self, ticket: Ticket, usd: float) -> None:
        budget = ticket.budget
        wall = self._clock.time()
        day, month, _ = spend_keys(wall)
        threshold = "-1"
        budget_key = "total"
        if budget is not None:
            budget_key = period_key(budget.period, wall)
            if budget.alert_at is not None:
                threshold = repr(budget.alert_at * budget.usd)
        reply = await self._link.run(
            _SETTLE,
            self._keys(ticket.subject),
            [ticket.id, repr(usd), day, month, str(SPEND_TTL), threshold, budget_key],
        )
        self._fallback.notify(ticket.subject)  # wakes this replica's waiters at once
        if reply is DOWN:
            if usd > 0:
                self._pending.append((ticket.subject, usd))  # the ticket lapses by itself
            return
        if reply == 1 and budget is not None:
            self._on_alert(ticket.subject, budget, budget_key)

    async def _replay(self) -> None:
        """Send the spend made while Redis was away."""
        pending = self._pending
        while pending and self._link.up:
            subject, usd = pending.popleft()
            day, month, _ = spend_keys(self._clock.time())
            reply = await self._link.run(
                _SETTLE, self._keys(subject), ["", repr(usd), day, month, str(SPEND_TTL), "-1", ""]
            )
            if reply is DOWN:
                pending.appendleft((subject, usd))
                return
        self._seeded.clear()

    async def wait(self, subject: str, within: float) -> None:
        if not self._link.up:
            await self._fallback.wait(subject, within)
            return
        # Other replicas settle too: look again after a moment (a settlement here wakes now).
        await self._fallback.wait(subject, min(within, self._poll))

    async def spent(self, subject: str, budget: Budget) -> float:
        key = period_key(budget.period, self._clock.time())
        reply = await self._link.execute("HGET", self._prefix + subject, "s:" + key)
        if reply is DOWN:
            return self._seen.get((subject, key), 0.0)
        return float(reply) if reply is not None else 0.0
