"""Usage in Redis, shared by every replica.

    <prefix>:usage:log         a stream of every row added (day, names, counters): the raw
                               records, for any host to read; about LOG_MAX_ENTRIES kept
    <prefix>:usage:day:<day>   a hash per UTC day: per (tenant, model, provider) its counters,
                               kept ``retention_days`` after the day ends
    <prefix>:usage:days        the days that have a hash (a sorted set, by day number)

A hash field is the names, each length-prefixed ("5:alice6:gpt-4o6:openai"), then one letter
for the counter, so no name can collide with another whatever it holds. Counters are
integers (cost in nano-dollars): HINCRBY sums are exact on every replica. One script adds a
batch of rows to the stream and the hashes in one round trip; a report reads the range's
hashes a script call at a time (each bounded, as every call is held to the link's op
timeout) and sums them here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..exceptions import StoreUnavailableError
from ..state._redis_link import DOWN, Link
from ..state._resp import Arg, Script
from .base import UsageRow
from .usage import DAY_SECONDS, FLUSH_BATCH, day_number, from_nanos, group_fields
from .usage import nanos as to_nanos

__all__ = ["LOG_MAX_ENTRIES", "RedisUsageStore"]

# Raw records the stream keeps (approximately: MAXLEN ~).
LOG_MAX_ENTRIES = 200_000
# A report call stops adding days once it holds this many hash fields (at least one day).
REPORT_FIELDS_PER_CALL = 20_000

# The counter each letter ending a hash field stands for (cost: in nano-dollars).
_NAMES = {
    ord("r"): "requests",
    ord("e"): "errors",
    ord("p"): "prompt_tokens",
    ord("t"): "completion_tokens",
    ord("k"): "cached_tokens",
    ord("u"): "cost",
    ord("s"): "estimated",
}

# KEYS: the log, the days set, then the hash of each day in the batch. ARGV: the log's
# length, the retention in days, the number of days; per day its name, number and expiry
# (unix seconds); then per row: its day's index, its field prefix, tenant, model, provider,
# requests, errors, prompt, completion, cached, cost nanos, estimated, cost in USD (text).
_ADD = Script(
    """
local log, days = KEYS[1], KEYS[2]
local maxlen = ARGV[1]
local n = tonumber(ARGV[3])
local a = 4
local day_of = {}
for i = 1, n do
  day_of[i] = ARGV[a]
  redis.call('ZADD', days, ARGV[a + 1], ARGV[a])
  a = a + 3
end
local letters = {'r', 'e', 'p', 't', 'k', 'u', 's'}
while a <= #ARGV do
  local i = tonumber(ARGV[a])
  local hash, prefix = KEYS[2 + i], ARGV[a + 1]
  redis.call('XADD', log, 'MAXLEN', '~', maxlen, '*',
    'day', day_of[i], 'tenant', ARGV[a + 2], 'model', ARGV[a + 3], 'provider', ARGV[a + 4],
    'requests', ARGV[a + 5], 'errors', ARGV[a + 6], 'prompt_tokens', ARGV[a + 7],
    'completion_tokens', ARGV[a + 8], 'cached_tokens', ARGV[a + 9],
    'cost_usd', ARGV[a + 12], 'estimated', ARGV[a + 11])
  for j = 1, 7 do
    local v = ARGV[a + 4 + j]
    -- every row keeps its requests field (prune counts rows by it); zeros add nothing
    if j == 1 or v ~= '0' then redis.call('HINCRBY', hash, prefix .. letters[j], v) end
  end
  a = a + 13
end
a = 4
for i = 1, n do
  redis.call('EXPIREAT', KEYS[2 + i], ARGV[a + 2])
  a = a + 3
end
local t = redis.call('TIME')
local today = math.floor(tonumber(t[1]) / 86400)
redis.call('ZREMRANGEBYSCORE', days, '-inf', '(' .. (today - tonumber(ARGV[2])))
return 0
"""
)

# KEYS: the days set. ARGV: from and until day numbers, the hash keys' prefix, a field
# prefix (the tenant's; "" for all), the fields after which to stop. Returns the day number
# to go on from (-1: done), then per day its name and its fields and values.
_REPORT = Script(
    """
local found = redis.call('ZRANGEBYSCORE', KEYS[1], ARGV[1], ARGV[2], 'WITHSCORES')
local prefix, only, most = ARGV[3], ARGV[4], tonumber(ARGV[5])
local out = {-1}
local held = 0
for i = 1, #found, 2 do
  if held >= most then
    out[1] = found[i + 1]
    return out
  end
  local fields = redis.call('HGETALL', prefix .. found[i])
  if only ~= '' then
    local kept = {}
    for j = 1, #fields, 2 do
      if string.sub(fields[j], 1, #only) == only then
        kept[#kept + 1] = fields[j]
        kept[#kept + 1] = fields[j + 1]
      end
    end
    fields = kept
  end
  out[#out + 1] = found[i]
  out[#out + 1] = fields
  held = held + #fields / 2
end
return out
"""
)

# KEYS: the days set, the log. ARGV: the first day number kept, the hash keys' prefix, the
# log's first id kept. Returns the rows (requests fields) that went.
_PRUNE = Script(
    """
local old = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[1])
local rows = 0
for _, day in ipairs(old) do
  local key = ARGV[2] .. day
  for _, field in ipairs(redis.call('HKEYS', key)) do
    if string.sub(field, -1) == 'r' then rows = rows + 1 end
  end
  redis.call('DEL', key)
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[1])
redis.call('XTRIM', KEYS[2], 'MINID', ARGV[3])
return rows
"""
)


def _name(value: str) -> bytes:
    # surrogatepass: a name from a request may hold a lone surrogate; it round-trips.
    data = value.encode("utf-8", "surrogatepass")
    return b"%d:%s" % (len(data), data)


def _group(row: UsageRow) -> bytes:
    return _name(row.tenant) + _name(row.model) + _name(row.provider)


def _parse(field: bytes) -> tuple[str, str, str, int] | None:
    """(tenant, model, provider, counter letter) of a hash field; None if it is not one."""
    names = []
    at = 0
    try:
        for _ in range(3):
            colon = field.index(b":", at)
            start = colon + 1
            end = start + int(field[at:colon])
            names.append(field[start:end].decode("utf-8", "surrogatepass"))
            at = end
    except (ValueError, UnicodeDecodeError):
        return None
    if len(field) != at + 1:
        return None
    return names[0], names[1], names[2], field[at]


class RedisUsageStore:
    """Usage in Redis: a stream of the raw records and a hash of counters per day."""

    def __init__(
        self,
        link: Link,
        prefix: str,
        *,
        retention_days: int,
        log_max_entries: int = LOG_MAX_ENTRIES,
    ) -> None:
        if retention_days < 1:
            raise ValueError("retention_days is at least 1")
        self.retention_days = retention_days
        self.log_max_entries = log_max_entries
        self._link = link
        self._prefix = prefix
        self._log = f"{prefix}:usage:log"
        self._days = f"{prefix}:usage:days"
        self._day_prefix = f"{prefix}:usage:day:"

    def __repr__(self) -> str:
        return f"RedisUsageStore(prefix={self._prefix!r})"

    async def add(self, rows: list[UsageRow]) -> None:
        for start in range(0, len(rows), FLUSH_BATCH):
            keys, args = self._add_call(rows[start : start + FLUSH_BATCH])
            self._check(await self._link.run(_ADD, keys, args))

    def _add_call(self, rows: Sequence[UsageRow]) -> tuple[list[Arg], list[Arg]]:
        index: dict[str, int] = {}
        day_args: list[Arg] = []
        row_args: list[Arg] = []
        for row in rows:
            i = index.get(row.day)
            if i is None:
                number = day_number(row.day)
                i = index[row.day] = len(index) + 1
                expires = (number + 1 + self.retention_days) * DAY_SECONDS
                day_args += (row.day, number, expires)
            cost = to_nanos(row.cost_usd)
            row_args += (
                i,
                _group(row),
                row.tenant.encode("utf-8", "surrogatepass"),
                row.model.encode("utf-8", "surrogatepass"),
                row.provider.encode("utf-8", "surrogatepass"),
                row.requests,
                row.errors,
                row.prompt_tokens,
                row.completion_tokens,
                row.cached_tokens,
                cost,
                row.estimated,
                f"{from_nanos(cost):.9f}",
            )
        keys: list[Arg] = [self._log, self._days, *(self._day_prefix + day for day in index)]
        args: list[Arg] = [self.log_max_entries, self.retention_days, len(index)]
        return keys, args + day_args + row_args

    async def report(
        self,
        *,
        since: str,
        until: str,
        tenant: str | None = None,
        group_by: tuple[str, ...] = ("day", "tenant", "model"),
    ) -> list[UsageRow]:
        fields = group_fields(group_by)
        first, last = day_number(since), day_number(until)
        only = _name(tenant) if tenant is not None else b""
        sums: dict[tuple[str, ...], dict[str, int]] = {}
        while first <= last:
            args: list[Arg] = [first, last, self._day_prefix, only, REPORT_FIELDS_PER_CALL]
            reply = self._check(await self._link.run(_REPORT, (self._days,), args))
            for i in range(1, len(reply), 2):
                _sum_day(reply[i].decode(), reply[i + 1], fields, sums)
            if not isinstance(reply[0], bytes):
                break
            first = int(reply[0])
        return [_report_row(fields, names, entry) for names, entry in sorted(sums.items())]

    async def prune(self, before: str) -> int:
        number = day_number(before)
        first_id = f"{number * DAY_SECONDS * 1000}-0"
        args: list[Arg] = [number, self._day_prefix, first_id]
        return int(self._check(await self._link.run(_PRUNE, (self._days, self._log), args)))

    async def aclose(self) -> None:
        """Nothing to close: the link belongs to the state backend."""

    @staticmethod
    def _check(reply: Any) -> Any:
        if reply is DOWN:
            raise StoreUnavailableError("The usage store (Redis) cannot be reached")
        return reply


def _sum_day(
    day: str,
    flat: list[bytes],
    fields: tuple[str, ...],
    sums: dict[tuple[str, ...], dict[str, int]],
) -> None:
    for j in range(0, len(flat), 2):
        parsed = _parse(flat[j])
        if parsed is None or parsed[3] not in _NAMES:
            continue
        tenant, model, provider, letter = parsed
        names = {"day": day, "tenant": tenant, "model": model, "provider": provider}
        key = tuple(names[name] for name in fields)
        entry = sums.get(key)
        if entry is None:
            entry = sums[key] = dict.fromkeys(_NAMES.values(), 0)
        entry[_NAMES[letter]] += int(flat[j + 1])


def _report_row(
    fields: tuple[str, ...], names: tuple[str, ...], values: dict[str, int]
) -> UsageRow:
    named = dict(zip(fields, names, strict=True))
    return UsageRow(
        day=named.get("day", ""),
        tenant=named.get("tenant", ""),
        model=named.get("model", ""),
        provider=named.get("provider", ""),
        requests=values["requests"],
        errors=values["errors"],
        prompt_tokens=values["prompt_tokens"],
        completion_tokens=values["completion_tokens"],
        cached_tokens=values["cached_tokens"],
        cost_usd=from_nanos(values["cost"]),
        estimated=values["estimated"],
    )
