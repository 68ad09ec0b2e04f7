"""Usage: the in-process buffer every request is counted in, and its store in one host.

    UsageBuffer        record() per request (synchronous, a dict update); flush() to a store
    SqliteUsageStore   the UsageStore of one host: table ``usage`` in the tenant database
    totals()           one row summing a report (the admin API and the CLI)

Costs are kept as whole nano-dollars (``pricing.COST_DIGITS``), so sums are exact.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable, Sequence
from typing import Any

from ._sqlite import SqliteFile
from .base import UsageRow, UsageStore
from .pricing import COST_DIGITS

__all__ = [
    "DAY_SECONDS",
    "FLUSH_BATCH",
    "GROUP_FIELDS",
    "MAX_KEYS",
    "SqliteUsageStore",
    "UsageBuffer",
    "day_number",
    "from_nanos",
    "group_fields",
    "nanos",
    "totals",
]

# The names a report may group by, in the order of UsageRow's fields.
GROUP_FIELDS = ("day", "tenant", "model", "provider")
# Keys (day, tenant, model, provider) a buffer holds; past this the oldest day goes.
MAX_KEYS = 100_000
# Rows a flush hands the store at once: each batch is one transaction or script.
FLUSH_BATCH = 500
DAY_SECONDS = 86_400

_DAY = re.compile(r"\d{4}-\d{2}-\d{2}")
_EPOCH = dt.date(1970, 1, 1).toordinal()
_NANOS: int = 10**COST_DIGITS

_Key = tuple[str, str, str, str]


def nanos(usd: float) -> int:
    """``usd`` in whole nano-dollars, as the stores keep it."""
    return round(usd * _NANOS)


def from_nanos(count: int) -> float:
    """A count of nano-dollars in USD."""
    return round(count / _NANOS, COST_DIGITS)


def day_number(day: str) -> int:
    """Days from 1970-01-01 to ``day`` ("YYYY-MM-DD"); ValueError for anything else."""
    if not isinstance(day, str) or not _DAY.fullmatch(day):
        raise ValueError(f"a day is 'YYYY-MM-DD', not {day!r}")
    return dt.date.fromisoformat(day).toordinal() - _EPOCH


def group_fields(group_by: Sequence[str]) -> tuple[str, ...]:
    """``group_by`` checked against GROUP_FIELDS, without repeats; ValueError for others."""
    unknown = [name for name in group_by if name not in GROUP_FIELDS]
    if unknown or isinstance(group_by, str):
        raise ValueError(f"group_by takes names from {', '.join(GROUP_FIELDS)}")
    return tuple(dict.fromkeys(group_by))


def totals(rows: Iterable[UsageRow]) -> UsageRow:
    """One row summing ``rows`` (its names are empty)."""
    requests = errors = prompt = completion = cached = estimated = cost = 0
    for row in rows:
        requests += row.requests
        errors += row.errors
        prompt += row.prompt_tokens
        completion += row.completion_tokens
        cached += row.cached_tokens
        estimated += row.estimated
        cost += nanos(row.cost_usd)
    return UsageRow(
        "", "", "", "", requests, errors, prompt, completion, cached, from_nanos(cost), estimated
    )


class _Counts:
    __slots__ = ("cached", "completion", "cost", "errors", "estimated", "prompt", "requests")

    def __init__(self) -> None:
        self.requests = self.errors = self.prompt = self.completion = 0
        self.cached = self.estimated = 0
        self.cost = 0.0

    def add_row(self, row: UsageRow) -> None:
        self.requests += row.requests
        self.errors += row.errors
        self.prompt += row.prompt_tokens
        self.completion += row.completion_tokens
        self.cached += row.cached_tokens
        self.estimated += row.estimated
        self.cost += row.cost_usd

    def row(self, key: _Key) -> UsageRow:
        return UsageRow(
            *key,
            self.requests,
            self.errors,
            self.prompt,
            self.completion,
            self.cached,
            round(self.cost, COST_DIGITS),
            self.estimated,
        )


class UsageBuffer:
    """Usage summed in this process per (UTC day, tenant, model, provider) until it is
    flushed to a store.

    ``record`` is synchronous and cheap: one dict lookup and a few additions. A flush the
    store refuses puts its rows back, so nothing is lost while the store is away; the buffer
    holds at most ``max_keys`` keys, and past that drops the oldest day's (``dropped``
    counts the requests whose usage went)."""

    def __init__(self, *, max_keys: int = MAX_KEYS) -> None:
        if max_keys < 1:
            raise ValueError("max_keys is at least 1")
        self.max_keys = max_keys
        self.dropped = 0
        self._counts: dict[_Key, _Counts] = {}
        self._days: dict[str, int] = {}  # day -> its keys held
        self._day = ""
        self._day_start = self._day_end = 0.0

    @property
    def pending(self) -> int:
        """Keys held, not yet flushed."""
        return len(self._counts)

    def record(
        self,
        *,
        wall: float,
        tenant: str,
        model: str,
        provider: str,
        error: bool,
        prompt_tokens: int,
        completion_tokens: int,
        cached_tokens: int,
        cost_usd: float,
        estimated: bool,
    ) -> None:
        """Count one request, made at wall time ``wall`` (``time.time()``)."""
        if not self._day_start <= wall < self._day_end:
            self._turn_day(wall)
        key = (self._day, tenant, model, provider)
        counts = self._counts.get(key)
        if counts is None:
            counts = self._new(key)
            if counts is None:
                self.dropped += 1
                return
        counts.requests += 1
        if error:
            counts.errors += 1
        counts.prompt += prompt_tokens
        counts.completion += completion_tokens
        counts.cached += cached_tokens
        counts.cost += cost_usd
        if estimated:
            counts.estimated += 1

    def take(self) -> list[UsageRow]:
        """Everything held, as rows; the buffer is empty afterwards."""
        counts, self._counts = self._counts, {}
        self._days = {}
        return [entry.row(key) for key, entry in counts.items()]

    async def flush(self, store: UsageStore) -> int:
        """Write what is held to ``store`` (in batches of FLUSH_BATCH); the number of rows
        written. When the store fails, the rows not written are put back and its error is
        raised (``StoreUnavailableError``, or whatever it raised)."""
        rows = self.take()
        for start in range(0, len(rows), FLUSH_BATCH):
            try:
                await store.add(rows[start : start + FLUSH_BATCH])
            # Not on cancellation: the batch has most likely been written (a worker thread
            # runs on, a script once sent runs), and writing it again would count it twice.
            except Exception:
                self.put_back(rows[start:])
                raise
        return len(rows)

    def put_back(self, rows: Iterable[UsageRow]) -> None:
        """Add ``rows`` to what is held (rows a store did not take)."""
        for row in rows:
            key = (row.day, row.tenant, row.model, row.provider)
            counts = self._counts.get(key)
            if counts is None:
                counts = self._new(key)
                if counts is None:
                    self.dropped += row.requests
                    continue
            counts.add_row(row)

    def _turn_day(self, wall: float) -> None:
        start = wall // DAY_SECONDS * DAY_SECONDS
        self._day = UsageRow.day_of(start)
        self._day_start, self._day_end = start, start + DAY_SECONDS

    def _new(self, key: _Key) -> _Counts | None:
        day = key[0]
        if len(self._counts) >= self.max_keys:
            oldest = min(self._days)
            if oldest >= day:
                return None  # all held is of this day or later: this one goes instead
            self._drop(oldest)
        counts = self._counts[key] = _Counts()
        self._days[day] = self._days.get(day, 0) + 1
        return counts

    def _drop(self, day: str) -> None:
        del self._days[day]
        gone = [key for key in self._counts if key[0] == day]
        for key in gone:
            self.dropped += self._counts.pop(key).requests


_SCHEMA = """
CREATE TABLE IF NOT EXISTS usage (
    day TEXT NOT NULL,
    tenant TEXT NOT NULL,
    model TEXT NOT NULL,
    provider TEXT NOT NULL,
    requests INTEGER NOT NULL DEFAULT 0,
    errors INTEGER NOT NULL DEFAULT 0,
    prompt_tokens INTEGER NOT NULL DEFAULT 0,
    completion_tokens INTEGER NOT NULL DEFAULT 0,
    cached_tokens INTEGER NOT NULL DEFAULT 0,
    cost_nanos INTEGER NOT NULL DEFAULT 0,
    estimated INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (day, tenant, model, provider)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS usage_tenant_day ON usage (tenant, day);
"""

_UPSERT = """
INSERT INTO usage (day, tenant, model, provider, requests, errors, prompt_tokens,
                   completion_tokens, cached_tokens, cost_nanos, estimated)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (day, tenant, model, provider) DO UPDATE SET
    requests = requests + excluded.requests,
    errors = errors + excluded.errors,
    prompt_tokens = prompt_tokens + excluded.prompt_tokens,
    completion_tokens = completion_tokens + excluded.completion_tokens,
    cached_tokens = cached_tokens + excluded.cached_tokens,
    cost_nanos = cost_nanos + excluded.cost_nanos,
    estimated = estimated + excluded.estimated
"""

_SUMS = (
    "COUNT(*), SUM(requests), SUM(errors), SUM(prompt_tokens), SUM(completion_tokens), "
    "SUM(cached_tokens), SUM(cost_nanos), SUM(estimated)"
)


def _text(name: str) -> str:
    # A name from a request may hold a lone surrogate (valid JSON, not UTF-8), which SQLite
    # cannot take: one such row would fail every flush after it.
    try:
        name.encode()
    except UnicodeEncodeError:
        return name.encode(errors="replace").decode()
    return name


class SqliteUsageStore:
    """Usage in the tenant database's ``usage`` table: one row per (day, tenant, model,
    provider), added to in place."""

    def __init__(self, database: SqliteFile) -> None:
        self._db = database
        database.ensure(_SCHEMA)

    def __repr__(self) -> str:
        return f"SqliteUsageStore({self._db!r})"

    async def add(self, rows: list[UsageRow]) -> None:
        params = [
            (
                row.day,
                _text(row.tenant),
                _text(row.model),
                _text(row.provider),
                row.requests,
                row.errors,
                row.prompt_tokens,
                row.completion_tokens,
                row.cached_tokens,
                nanos(row.cost_usd),
                row.estimated,
            )
            for row in rows
        ]
        if params:
            await self._db.run(lambda c: c.executemany(_UPSERT, params))

    async def report(
        self,
        *,
        since: str,
        until: str,
        tenant: str | None = None,
        group_by: tuple[str, ...] = ("day", "tenant", "model"),
    ) -> list[UsageRow]:
        fields = group_fields(group_by)
        params: list[Any] = [since, until]
        day_number(since)
        day_number(until)
        # Column names come from GROUP_FIELDS only; every value is a parameter.
        columns = ", ".join(name if name in fields else "''" for name in GROUP_FIELDS)
        sql = f"SELECT {columns}, {_SUMS} FROM usage WHERE day >= ? AND day <= ?"
        if tenant is not None:
            sql += " AND tenant = ?"
            params.append(_text(tenant))
        if fields:
            order = ", ".join(fields)
            sql += f" GROUP BY {order} ORDER BY {order}"
        found = await self._db.query(sql, params)
        return [_row(values) for values in found if values[4]]

    async def prune(self, before: str) -> int:
        day_number(before)
        return await self._db.run(
            lambda c: c.execute("DELETE FROM usage WHERE day < ?", (before,)).rowcount
        )

    async def aclose(self) -> None:
        """Nothing to close: the database belongs to the stores together."""


def _row(values: Sequence[Any]) -> UsageRow:
    day, tenant, model, provider, _, requests, errors, prompt, completion, cached, cost, est = (
        values
    )
    return UsageRow(
        day,
        tenant,
        model,
        provider,
        requests,
        errors,
        prompt,
        completion,
        cached,
        from_nanos(cost),
        est,
    )
