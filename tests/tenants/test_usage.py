"""Usage: the in-process buffer, the SQLite store (in memory and in a file) and the Redis
store on a real server."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from pydantic import SecretStr

from leapasgi.clock import SystemClock
from leapasgi.exceptions import StoreUnavailableError
from leapasgi.state._redis_link import Link
from leapasgi.state._resp import RedisClient
from leapasgi.tenants import _redis_usage
from leapasgi.tenants._redis_usage import RedisUsageStore
from leapasgi.tenants._sqlite import SqliteFile
from leapasgi.tenants.base import UsageRow, UsageStore
from leapasgi.tenants.usage import (
    FLUSH_BATCH,
    SqliteUsageStore,
    UsageBuffer,
    day_number,
    group_fields,
    totals,
)
from tests.redis_server import RedisServer, redis_server
from tests.state.conftest import raw

__all__ = ["redis_server"]

pytestmark = pytest.mark.anyio

DAY = 86_400
NOW = time.time()
TODAY = UsageRow.day_of(NOW)
YESTERDAY = UsageRow.day_of(NOW - DAY)
EARLIER = UsageRow.day_of(NOW - 3 * DAY)


def row(
    day: str, tenant: str, model: str = "gpt-4o", provider: str = "openai", **counts: float
) -> UsageRow:
    values = {"requests": 1, "prompt_tokens": 10, "completion_tokens": 5, "cost_usd": 0.001}
    return UsageRow(day, tenant, model, provider, **{**values, **counts})  # type: ignore[arg-type]


ROWS = [
    row(EARLIER, "alice", requests=2, errors=1, prompt_tokens=100, cached_tokens=40,
        cost_usd=0.25, estimated=1),
    row(YESTERDAY, "alice"),
    row(YESTERDAY, "alice", "claude-sonnet-4-5", "anthropic", cost_usd=0.5),
    row(YESTERDAY, "bob", "gpt-4o", "azure"),
    row(TODAY, "bob", requests=3, completion_tokens=7, cost_usd=0.000000123),
]  # fmt: skip


async def check_upsert_sums(store: UsageStore) -> None:
    await store.add(ROWS)
    await store.add([ROWS[0], ROWS[4]])
    found = await store.report(
        since=EARLIER, until=TODAY, group_by=("day", "tenant", "model", "provider")
    )
    assert len(found) == 5
    by_key = {(r.day, r.tenant, r.model, r.provider): r for r in found}
    first = by_key[(EARLIER, "alice", "gpt-4o", "openai")]
    assert (first.requests, first.errors, first.prompt_tokens, first.cached_tokens) == (
        4,
        2,
        200,
        80,
    )
    assert (first.completion_tokens, first.estimated, first.cost_usd) == (10, 2, 0.5)
    last = by_key[(TODAY, "bob", "gpt-4o", "openai")]
    assert (last.requests, last.completion_tokens, last.cost_usd) == (6, 14, 0.000000246)


async def check_grouping_and_filters(store: UsageStore) -> None:
    await store.add(ROWS)
    by_tenant = await store.report(since=EARLIER, until=TODAY, group_by=("tenant",))
    assert [(r.tenant, r.requests) for r in by_tenant] == [("alice", 4), ("bob", 4)]
    assert all(r.day == r.model == r.provider == "" for r in by_tenant)
    assert by_tenant[0].cost_usd == pytest.approx(0.751)

    default = await store.report(since=EARLIER, until=TODAY)
    assert [(r.day, r.tenant, r.model) for r in default] == sorted(
        {(r.day, r.tenant, r.model) for r in ROWS}
    )
    assert all(r.provider == "" for r in default)

    # By provider then model: sorted in that order.
    models = await store.report(since=EARLIER, until=TODAY, group_by=("provider", "model"))
    assert [(r.provider, r.model, r.requests) for r in models] == [
        ("anthropic", "claude-sonnet-4-5", 1),
        ("azure", "gpt-4o", 1),
        ("openai", "gpt-4o", 6),
    ]

    bob = await store.report(since=YESTERDAY, until=TODAY, tenant="bob", group_by=("day",))
    assert [(r.day, r.tenant, r.requests) for r in bob] == [(YESTERDAY, "", 1), (TODAY, "", 3)]

    one_day = await store.report(since=YESTERDAY, until=YESTERDAY, group_by=())
    assert len(one_day) == 1
    assert (one_day[0].requests, one_day[0].cost_usd) == (3, 0.502)

    assert await store.report(since=TODAY, until=TODAY, tenant="carol") == []
    assert await store.report(since=TODAY, until=YESTERDAY) == []
    with pytest.raises(ValueError, match="group_by"):
        await store.report(since=TODAY, until=TODAY, group_by=("day; DROP TABLE usage",))
    with pytest.raises(ValueError, match="YYYY-MM-DD"):
        await store.report(since="yesterday", until=TODAY)


async def check_prune(store: UsageStore) -> None:
    await store.add(ROWS)
    assert await store.prune(YESTERDAY) == 1
    left = await store.report(since=EARLIER, until=TODAY, group_by=("day",))
    assert [r.day for r in left] == [YESTERDAY, TODAY]
    assert await store.prune(YESTERDAY) == 0
    assert await store.prune(UsageRow.day_of(NOW + DAY)) == 4
    assert await store.report(since=EARLIER, until=TODAY) == []


async def check_odd_names(store: UsageStore) -> None:
    # Names holding separators, digits and colons stay apart; a lone surrogate is stored.
    odd = [
        row(TODAY, "a:1", "b"),
        row(TODAY, "a", ":1b"),
        row(TODAY, "1:a", "1:b", "1:"),
        row(TODAY, "ünï|cödé", "m\ud800"),
        row(TODAY, "", ""),
    ]
    await store.add(odd)
    found = await store.report(since=TODAY, until=TODAY, group_by=("tenant", "model", "provider"))
    assert len(found) == 5
    assert all(r.requests == 1 for r in found)
    assert {r.tenant for r in found} == {"a:1", "a", "1:a", "ünï|cödé", ""}
    only = await store.report(since=TODAY, until=TODAY, tenant="a", group_by=("model",))
    assert [(r.model, r.requests) for r in only] == [(":1b", 1)]


STORE_CHECKS = [check_upsert_sums, check_grouping_and_filters, check_prune, check_odd_names]


@pytest.mark.parametrize("check", STORE_CHECKS)
async def test_sqlite_in_memory(check: object) -> None:
    database = SqliteFile(None)
    try:
        await check(SqliteUsageStore(database))  # type: ignore[operator]
    finally:
        database.close()


@pytest.mark.parametrize("check", STORE_CHECKS)
async def test_sqlite_in_a_file(check: object, tmp_path: Path) -> None:
    database = SqliteFile(tmp_path / "tenants.db")
    try:
        await check(SqliteUsageStore(database))  # type: ignore[operator]
    finally:
        database.close()


async def test_two_processes_share_one_file(tmp_path: Path) -> None:
    path = tmp_path / "tenants.db"
    first, second = SqliteFile(path), SqliteFile(path)
    try:
        await SqliteUsageStore(first).add([ROWS[1]])
        await SqliteUsageStore(second).add([ROWS[1], ROWS[3]])
        for database in (first, second):
            found = await SqliteUsageStore(database).report(
                since=YESTERDAY, until=YESTERDAY, group_by=("tenant",)
            )
            assert [(r.tenant, r.requests) for r in found] == [("alice", 2), ("bob", 1)]
    finally:
        first.close()
        second.close()
    reopened = SqliteFile(path)
    try:
        found = await SqliteUsageStore(reopened).report(since=EARLIER, until=TODAY, group_by=())
        assert found[0].requests == 3
    finally:
        reopened.close()


async def test_sqlite_adds_nothing_for_no_rows() -> None:
    database = SqliteFile(None)
    try:
        store = SqliteUsageStore(database)
        await store.add([])
        assert await store.report(since=TODAY, until=TODAY, group_by=()) == []
    finally:
        database.close()


def test_group_fields_and_days() -> None:
    assert group_fields(("model", "day", "model")) == ("model", "day")
    assert group_fields(()) == ()
    with pytest.raises(ValueError, match="group_by"):
        group_fields("day")
    assert day_number("1970-01-02") == 1
    for bad in ("2026-1-01", "20260101", "2026-13-01", " 2026-01-01"):
        with pytest.raises(ValueError, match=r"YYYY-MM-DD|month"):
            day_number(bad)


def test_totals() -> None:
    total = totals(ROWS)
    assert (total.day, total.tenant, total.model, total.provider) == ("", "", "", "")
    assert (total.requests, total.errors, total.prompt_tokens) == (8, 1, 140)
    assert (total.completion_tokens, total.cached_tokens, total.estimated) == (27, 40, 1)
    assert total.cost_usd == 0.752000123
    assert totals([]) == UsageRow("", "", "", "")


def record(buffer: UsageBuffer, wall: float, tenant: str = "alice", **options: object) -> None:
    values: dict[str, object] = {
        "model": "gpt-4o",
        "provider": "openai",
        "error": False,
        "prompt_tokens": 10,
        "completion_tokens": 5,
        "cached_tokens": 2,
        "cost_usd": 0.001,
        "estimated": False,
    }
    buffer.record(wall=wall, tenant=tenant, **{**values, **options})  # type: ignore[arg-type]


class FlakyStore:
    """Keeps rows in a list; refuses batches while ``failing`` (from its ``fail_from``-th)."""

    def __init__(self, *, fail_from: int = 0, error: Exception | None = None) -> None:
        self.rows: list[UsageRow] = []
        self.calls = 0
        self.fail_from = fail_from
        self.failing = False
        self.error = error or StoreUnavailableError("down")

    async def add(self, rows: list[UsageRow]) -> None:
        self.calls += 1
        if self.failing and self.calls > self.fail_from:
            raise self.error
        self.rows += rows

    async def report(
        self,
        *,
        since: str,
        until: str,
        tenant: str | None = None,
        group_by: tuple[str, ...] = ("day", "tenant", "model"),
    ) -> list[UsageRow]:
        return self.rows

    async def prune(self, before: str) -> int:
        return 0

    async def aclose(self) -> None:
        pass


def test_the_buffer_sums_per_day_tenant_model_and_provider() -> None:
    buffer = UsageBuffer()
    midnight = (NOW // DAY) * DAY
    record(buffer, midnight - 1)  # yesterday
    record(buffer, midnight, error=True, estimated=True)
    record(buffer, midnight + 10, cost_usd=0.002)
    record(buffer, midnight + 20, tenant="bob", provider="azure")
    record(buffer, midnight + 30, model="o3")
    assert buffer.pending == 4
    rows = {(r.day, r.tenant, r.model, r.provider): r for r in buffer.take()}
    assert buffer.pending == 0
    assert buffer.take() == []
    today = rows[(TODAY, "alice", "gpt-4o", "openai")]
    assert (today.requests, today.errors, today.estimated) == (2, 1, 1)
    assert (today.prompt_tokens, today.completion_tokens, today.cached_tokens) == (20, 10, 4)
    assert today.cost_usd == 0.003
    assert rows[(YESTERDAY, "alice", "gpt-4o", "openai")].requests == 1
    assert rows[(TODAY, "bob", "gpt-4o", "azure")].requests == 1
    assert rows[(TODAY, "alice", "o3", "openai")].requests == 1


async def test_a_flush_writes_and_empties_the_buffer() -> None:
    buffer, store = UsageBuffer(), FlakyStore()
    for i in range(3):
        record(buffer, NOW + i, tenant=f"t{i}")
    assert await buffer.flush(store) == 3
    assert buffer.pending == 0
    assert sorted(r.tenant for r in store.rows) == ["t0", "t1", "t2"]
    assert await buffer.flush(store) == 0
    assert store.calls == 1


@pytest.mark.parametrize("error", [StoreUnavailableError("down"), RuntimeError("bug")])
async def test_a_failed_flush_puts_the_rows_back(error: Exception) -> None:
    buffer, store = UsageBuffer(), FlakyStore(error=error)
    record(buffer, NOW)
    record(buffer, NOW, tenant="bob")
    store.failing = True
    with pytest.raises(type(error)):
        await buffer.flush(store)
    # Recorded meanwhile: merged with what came back.
    record(buffer, NOW)
    assert buffer.pending == 2
    store.failing = False
    assert await buffer.flush(store) == 2
    alice = next(r for r in store.rows if r.tenant == "alice")
    assert (alice.requests, alice.prompt_tokens, alice.cost_usd) == (2, 20, 0.002)
    assert buffer.dropped == 0


async def test_a_flush_failing_midway_keeps_what_was_written() -> None:
    buffer, store = UsageBuffer(), FlakyStore(fail_from=1)
    count = FLUSH_BATCH * 2 + 10
    for i in range(count):
        record(buffer, NOW, tenant=f"t{i}")
    store.failing = True
    with pytest.raises(StoreUnavailableError):
        await buffer.flush(store)
    assert len(store.rows) == FLUSH_BATCH
    assert buffer.pending == count - FLUSH_BATCH
    store.failing = False
    assert await buffer.flush(store) == count - FLUSH_BATCH
    assert len({r.tenant for r in store.rows}) == count
    assert store.calls == 1 + 1 + 2  # the first batch, the refused one, then two more


def test_the_buffer_is_bounded_by_dropping_the_oldest_day() -> None:
    buffer = UsageBuffer(max_keys=3)
    record(buffer, NOW - DAY, tenant="old")
    record(buffer, NOW - DAY, tenant="old")
    record(buffer, NOW - DAY, tenant="older")
    record(buffer, NOW, tenant="a")
    assert buffer.pending == 3
    record(buffer, NOW, tenant="b")  # full: yesterday goes (3 requests)
    assert buffer.dropped == 3
    assert sorted(r.tenant for r in buffer.take()) == ["a", "b"]


def test_a_full_buffer_of_one_day_drops_the_newcomer() -> None:
    buffer = UsageBuffer(max_keys=2)
    record(buffer, NOW, tenant="a")
    record(buffer, NOW, tenant="b")
    record(buffer, NOW, tenant="c")
    record(buffer, NOW, tenant="a")  # known keys still count
    assert buffer.dropped == 1
    rows = {r.tenant: r.requests for r in buffer.take()}
    assert rows == {"a": 2, "b": 1}


async def test_rows_put_back_respect_the_bound() -> None:
    buffer, store = UsageBuffer(max_keys=2), FlakyStore()
    record(buffer, NOW - DAY, tenant="a")
    record(buffer, NOW - DAY, tenant="b")
    store.failing = True
    with pytest.raises(StoreUnavailableError):
        await buffer.flush(store)
    record(buffer, NOW, tenant="c")  # today's record pushes yesterday's out
    assert buffer.dropped == 2
    assert [r.tenant for r in buffer.take()] == ["c"]


@pytest.fixture
async def link(redis_server: RedisServer) -> AsyncIterator[Link]:
    client = RedisClient(SecretStr(redis_server.url), connect_timeout=5)
    try:
        yield Link(client, op_timeout=5.0, clock=SystemClock())
    finally:
        await client.aclose()


def redis_store(link: Link, **options: int) -> RedisUsageStore:
    return RedisUsageStore(link, "leap", **{"retention_days": 30, **options})


@pytest.mark.parametrize("check", STORE_CHECKS)
async def test_redis(check: object, link: Link) -> None:
    await check(redis_store(link))  # type: ignore[operator]


async def test_two_stores_on_one_server_see_the_same_report(
    link: Link, redis_server: RedisServer
) -> None:
    other_client = RedisClient(SecretStr(redis_server.url), connect_timeout=5)
    other = Link(other_client, op_timeout=5.0, clock=SystemClock())
    try:
        a, b = redis_store(link), redis_store(other)
        await a.add(ROWS[:3])
        await b.add(ROWS[2:])
        reports = [
            await store.report(since=EARLIER, until=TODAY, group_by=("tenant", "model"))
            for store in (a, b)
        ]
        assert reports[0] == reports[1]
        assert [(r.tenant, r.model, r.requests) for r in reports[0]] == [
            ("alice", "claude-sonnet-4-5", 2),
            ("alice", "gpt-4o", 3),
            ("bob", "gpt-4o", 4),
        ]
    finally:
        await other_client.aclose()


async def test_the_stream_keeps_the_raw_records(link: Link, redis_server: RedisServer) -> None:
    store = redis_store(link)
    await store.add(ROWS[:2])
    await store.add(ROWS[:1])
    entries = await raw(redis_server.url, "XRANGE", "leap:usage:log", "-", "+")
    records = [
        {k.decode(): v.decode() for k, v in zip(fields[::2], fields[1::2], strict=True)}
        for _, fields in entries
    ]
    assert len(records) == 3
    assert records[0] == {
        "day": EARLIER,
        "tenant": "alice",
        "model": "gpt-4o",
        "provider": "openai",
        "requests": "2",
        "errors": "1",
        "prompt_tokens": "100",
        "completion_tokens": "5",
        "cached_tokens": "40",
        "cost_usd": "0.250000000",
        "estimated": "1",
    }
    assert records[2] == records[0]
    assert records[1]["day"] == YESTERDAY


async def test_day_hashes_expire_after_the_retention(link: Link, redis_server: RedisServer) -> None:
    store = redis_store(link, retention_days=2)
    await store.add([ROWS[1], ROWS[4]])
    ttl = await raw(redis_server.url, "TTL", f"leap:usage:day:{TODAY}")
    end_of_today = (NOW // DAY + 1) * DAY
    assert abs(ttl - (end_of_today + 2 * DAY - time.time())) < 5
    # A day already past the retention is not kept at all.
    old = UsageRow.day_of(NOW - 5 * DAY)
    await store.add([row(old, "alice")])
    assert await raw(redis_server.url, "EXISTS", f"leap:usage:day:{old}") == 0
    days = await raw(redis_server.url, "ZRANGE", "leap:usage:days", 0, -1)
    assert [day.decode() for day in days] == [YESTERDAY, TODAY]


async def test_a_report_over_many_fields_takes_several_calls(
    link: Link, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_redis_usage, "REPORT_FIELDS_PER_CALL", 5)
    store = redis_store(link)
    await store.add(ROWS)
    found = await store.report(since=EARLIER, until=TODAY, group_by=("day", "tenant"))
    assert [(r.day, r.tenant, r.requests) for r in found] == [
        (EARLIER, "alice", 2),
        (YESTERDAY, "alice", 2),
        (YESTERDAY, "bob", 1),
        (TODAY, "bob", 3),
    ]


async def test_large_batches_go_in_several_scripts(link: Link) -> None:
    store = redis_store(link)
    rows = [row(TODAY, f"t{i}") for i in range(FLUSH_BATCH + 3)]
    await store.add(rows)
    found = await store.report(since=TODAY, until=TODAY, group_by=())
    assert found[0].requests == FLUSH_BATCH + 3


async def test_redis_down_is_store_unavailable(link: Link, redis_server: RedisServer) -> None:
    store = redis_store(link)
    await store.add(ROWS[:1])
    redis_server.stop()
    with pytest.raises(StoreUnavailableError):
        await store.add(ROWS[:1])
    with pytest.raises(StoreUnavailableError):
        await store.report(since=EARLIER, until=TODAY)
    with pytest.raises(StoreUnavailableError):
        await store.prune(TODAY)
    # A buffer flushing to it keeps its rows.
    buffer = UsageBuffer()
    record(buffer, NOW)
    with pytest.raises(StoreUnavailableError):
        await buffer.flush(store)
    assert buffer.pending == 1
