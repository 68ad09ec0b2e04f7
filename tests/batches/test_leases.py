"""Runners sharing one store (two replicas, or two workers on one directory), on either store
and an injected clock: only a lease's holder runs a batch, a batch left by a runner that died
is taken over once its lease expired without sending a recorded line again, a cancel made on
one runner stops the other, a runner that lost its lease stops at once, and batches spread
over runners with room."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest

from leapasgi.batches import (
    BatchRecord,
    BatchRun,
    BatchRunner,
    BatchStatus,
    BatchStore,
    FileRecord,
    LineResult,
    TenantRecord,
)
from leapasgi.batches.objects import batch_id as new_batch_id
from leapasgi.batches.objects import file_id as new_file_id
from leapasgi.clock import FakeClock
from leapasgi.tenants.policy import ANONYMOUS, Tenant

from .conftest import MakeStore

pytestmark = pytest.mark.anyio

CHAT = "/v1/chat/completions"
DAY = 24 * 3600


class Counting:
    """An executor that answers each line at once (once ``gate`` is open), counting the
    lines it sent."""

    name = "gateway"

    def __init__(self, sent: Counter[str], gate: asyncio.Event, runs: list[BatchRun]) -> None:
        self.sent = sent
        self.gate = gate
        self.runs = runs

    def accepts(self, batch: BatchRecord) -> bool:
        return True

    async def execute(self, run: BatchRun) -> None:
        self.runs.append(run)
        for line in run.lines:
            await self.gate.wait()
            if run.stop.is_set():
                return
            self.sent[line.custom_id] += 1
            text = json.dumps({"custom_id": line.custom_id})
            await run.record(LineResult(line.number, text, True))


async def anyone(record: TenantRecord) -> Tenant:
    return ANONYMOUS


class Cluster:
    """Runners on one store's records, one clock, one count of lines sent."""

    def __init__(self, make_store: MakeStore) -> None:
        self.make_store = make_store
        self.clock = FakeClock()
        self.sent: Counter[str] = Counter()
        self.gate = asyncio.Event()
        self.gate.set()
        self.runs: list[BatchRun] = []

    def runner(self, *, max_running: int = 64, holder: str | None = None) -> BatchRunner:
        return BatchRunner(
            self.make_store(),
            [Counting(self.sent, self.gate, self.runs)],
            tenant_of=anyone,
            clock=self.clock,
            file_ttl=86_400,
            poll_interval=0.01,
            max_line_bytes=4096,
            max_running=max_running,
            holder=holder,
        )

    async def batch(self, runner: BatchRunner, ids: list[str], *, submit: bool = True) -> str:
        """A batch of ``ids`` kept in ``runner``'s store (and started there, if ``submit``)."""
        store = runner.store
        lines = [
            {"custom_id": i, "method": "POST", "url": CHAT, "body": {"model": "m"}} for i in ids
        ]
        data = "".join(json.dumps(line) + "\n" for line in lines).encode()
        scratch = store.scratch()
        scratch.write_bytes(data)
        now = int(self.clock.time())
        file = FileRecord(new_file_id(), "o", "in.jsonl", "batch", len(data), now, None, len(ids))
        await store.add_file((file, scratch))
        tenant = TenantRecord("anonymous", "anonymous", None, {})
        batch = BatchRecord(new_batch_id(), "o", tenant, CHAT, file.id, now, now + DAY, len(ids))
        if submit:
            await runner.submit(batch)
        else:
            await store.add_batch(batch)
        return batch.id


@asynccontextmanager
async def started(*runners: BatchRunner) -> AsyncIterator[None]:
    try:
        for runner in runners:
            await runner.start()
        yield
    finally:
        for runner in runners:
            await runner.aclose()


async def until(check: Callable[[], Awaitable[bool]]) -> None:
    """Once ``check`` holds, polled (the deadline only bounds a failing test)."""
    async with asyncio.timeout(20):
        while True:
            if await check():
                return
            await asyncio.sleep(0.005)


async def status_of(store: BatchStore, batch_id: str) -> BatchRecord:
    kept = await store.load_batch(batch_id)
    assert kept is not None
    return kept


async def reached(store: BatchStore, batch_id: str, status: BatchStatus) -> None:
    async def check() -> bool:
        return (await status_of(store, batch_id)).status is status

    await until(check)


@pytest.fixture
def cluster(make_store: MakeStore) -> Cluster:
    return Cluster(make_store)


async def test_a_batch_left_by_a_dead_runner_is_taken_over_once_its_lease_expires(
    cluster: Cluster,
) -> None:
    ids = [f"k{i}" for i in range(20)]
    dead = cluster.runner(holder="dead")
    await dead.store.start()
    batch_id = await cluster.batch(dead, ids, submit=False)
    store = dead.store
    now = cluster.clock.time()
    # It held the lease, got as far as in_progress and recorded five lines, then died.
    assert await store.claim(batch_id, "dead", now=now, ttl=dead.lease)
    kept = await status_of(store, batch_id)
    kept.moved(BatchStatus.IN_PROGRESS, int(now))
    assert await store.save_batch(kept, was=BatchStatus.VALIDATING)
    for number in range(1, 6):
        text = json.dumps({"custom_id": f"k{number - 1}"})
        assert await store.record(batch_id, LineResult(number, text, True))
    await store.aclose()

    heir = cluster.runner()
    async with started(heir):
        assert heir.running == [], "a lease not yet expired is left to its holder"
        cluster.clock.advance(heir.lease)
        await reached(heir.store, batch_id, BatchStatus.COMPLETED)
        done = await status_of(heir.store, batch_id)
    assert (done.completed, done.failed) == (20, 0)
    assert cluster.sent == Counter(ids[5:]), "only the lines not recorded were sent, once each"


async def test_a_cancel_on_one_runner_stops_the_runner_holding_the_batch(
    cluster: Cluster,
) -> None:
    holder, other = cluster.runner(), cluster.runner()
    async with started(holder, other):
        cluster.gate.clear()  # the first line waits: it is in flight
        batch_id = await cluster.batch(holder, [f"c{i}" for i in range(10)])
        assert holder.running == [batch_id]
        await reached(holder.store, batch_id, BatchStatus.IN_PROGRESS)
        cancelling = await other.cancel(batch_id, owner="o")
        assert cancelling is not None
        assert cancelling.status is BatchStatus.CANCELLING
        assert other.running == []

        async def stopped() -> bool:
            return cluster.runs[0].stop.is_set()

        # The holder sees the cancel at its next poll: no line starts after it.
        await until(stopped)
        cluster.gate.set()
        await reached(other.store, batch_id, BatchStatus.CANCELLED)
        done = await status_of(other.store, batch_id)
    assert cluster.sent == Counter()
    assert (done.completed, done.failed) == (0, 10)
    assert done.error_file_id is not None


async def test_a_runner_that_lost_its_lease_stops_at_once(cluster: Cluster) -> None:
    runner = cluster.runner()
    async with started(runner):
        cluster.gate.clear()
        batch_id = await cluster.batch(runner, ["a", "b", "c"])
        assert runner.running == [batch_id]
        store = runner.store
        # Another runner whose clock is ahead found the lease expired and took it.
        later = cluster.clock.time() + runner.lease + 1
        assert await store.claim(batch_id, "thief", now=later, ttl=runner.lease)

        async def stopped() -> bool:
            return runner.running == []

        await until(stopped)
        cluster.gate.set()
        assert (await status_of(store, batch_id)).status is not BatchStatus.COMPLETED
    assert cluster.sent == Counter(), "the line waiting when the lease was lost was never sent"


async def test_batches_spread_over_runners_with_room_and_each_line_runs_once(
    cluster: Cluster,
) -> None:
    first, second = cluster.runner(max_running=2), cluster.runner(max_running=2)
    async with started(first, second):
        cluster.gate.clear()
        batches = [await cluster.batch(first, [f"b{b}-{i}" for i in range(15)]) for b in range(5)]

        async def both_full() -> bool:
            return len(first.running) == 2 and len(second.running) == 2

        await until(both_full)
        assert not set(first.running) & set(second.running)
        cluster.gate.set()
        for batch_id in batches:
            await reached(first.store, batch_id, BatchStatus.COMPLETED)
    assert cluster.sent == Counter({f"b{b}-{i}": 1 for b in range(5) for i in range(15)})
