"""The ``BatchStore`` contract, held by ``SqliteBatchStore`` and ``RedisBatchStore`` alike: a
line is recorded and counted once, a status moves only from the one its writer saw, files
list and page per owner, what is kept survives reopening (old leftover bytes do not), and a
lease is held by one runner at a time."""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from leapasgi.batches import BatchRecord, BatchStore, FileRecord, LineResult, TenantRecord
from leapasgi.batches._files import STRAY_AGE
from leapasgi.batches.objects import BatchStatus
from leapasgi.batches.redis import RedisBatchStore
from leapasgi.exceptions import StoreUnavailableError
from tests.redis_server import RedisServer

from .conftest import MakeStore, redis_store

pytestmark = pytest.mark.anyio

NOW = 1_700_000_000.0
TTL = 5.0


def batch(file_id: str = "file-1", batch_id: str = "batch_1", owner: str = "o") -> BatchRecord:
    tenant = TenantRecord("t", "key", None, {})
    return BatchRecord(batch_id, owner, tenant, "/v1/embeddings", file_id, 1, 86_401, 2)


async def add_file(
    store: BatchStore,
    file_id: str,
    *,
    owner: str | None = "o",
    purpose: str = "batch",
    expires_at: int | None = None,
    data: bytes = b'{"x":1}\n',
) -> FileRecord:
    scratch = store.scratch()
    scratch.write_bytes(data)
    record = FileRecord(file_id, owner, "in.jsonl", purpose, len(data), 1, expires_at, 1)
    await store.add_file((record, scratch))
    return record


@pytest.fixture
async def store(make_store: MakeStore) -> AsyncIterator[BatchStore]:
    opened = make_store()
    await opened.start()
    try:
        yield opened
    finally:
        await opened.aclose()


async def test_a_line_is_recorded_and_counted_once(store: BatchStore) -> None:
    await store.add_batch(batch())
    answer = LineResult(1, '{"custom_id":"a"}', True, 3, 4, 1)
    assert await store.record("batch_1", answer)
    assert not await store.record("batch_1", LineResult(1, '{"custom_id":"b"}', False))
    assert await store.record("batch_1", LineResult(3, '{"custom_id":"c"}', False))
    kept = await store.load_batch("batch_1")
    assert kept is not None
    assert (kept.completed, kept.failed, kept.input_tokens, kept.output_tokens) == (1, 1, 3, 4)
    assert kept.cached_tokens == 1
    assert await store.recorded("batch_1") == {1, 3}
    results = [(r.line, r.text, r.ok) async for r in store.results("batch_1")]
    assert results == [(1, '{"custom_id":"a"}', True), (3, '{"custom_id":"c"}', False)]
    assert await store.get_batch("batch_1", owner="someone else") is None
    assert await store.get_batch("batch_1", owner="o") is not None


async def test_a_status_moves_only_from_the_one_its_writer_saw(store: BatchStore) -> None:
    record = batch()
    await store.add_batch(record)
    record.moved(BatchStatus.IN_PROGRESS, 2)
    assert await store.save_batch(record, was=BatchStatus.VALIDATING)
    # A writer that still thinks it is validating changes nothing.
    stale = batch()
    stale.moved(BatchStatus.FAILED, 3)
    assert not await store.save_batch(stale, was=BatchStatus.VALIDATING)
    kept = await store.load_batch("batch_1")
    assert kept is not None
    assert kept.status is BatchStatus.IN_PROGRESS
    assert kept.times == {"in_progress_at": 2}
    assert await store.active("o") == 1
    assert [b.id for b in await store.unfinished()] == ["batch_1"]


async def test_a_batch_finishes_once_with_its_files_and_then_records_nothing(
    store: BatchStore,
) -> None:
    await add_file(store, "file-in")
    record = batch("file-in")
    await store.add_batch(record)
    assert await store.file_in_use("file-in")
    assert await store.record("batch_1", LineResult(1, "{}", True))
    record.moved(BatchStatus.FINALIZING, 2)
    assert await store.save_batch(record, was=BatchStatus.VALIDATING)

    def output(file_id: str) -> tuple[FileRecord, Path]:
        scratch = store.scratch()
        scratch.write_bytes(b"{}\n")
        return FileRecord(file_id, "o", "out.jsonl", "batch_output", 3, 2, 100, 1), scratch

    record.completed = 1
    record.moved(BatchStatus.COMPLETED, 3)
    record.output_file_id = "file-out"
    assert await store.finish(record, [output("file-out")], was=BatchStatus.FINALIZING)
    loser = output("file-lost")
    assert not await store.finish(record, [loser], was=BatchStatus.FINALIZING)
    assert loser[1].exists(), "a finish that lost keeps nothing of its files"
    assert await store.get_file("file-lost", owner="o") is None

    kept = await store.load_batch("batch_1")
    assert kept is not None
    assert (kept.status, kept.completed, kept.output_file_id) == (
        BatchStatus.COMPLETED,
        1,
        "file-out",
    )
    assert b"".join([c async for c in store.read_file("file-out")]) == b"{}\n"
    assert await store.recorded("batch_1") == set()
    assert not await store.record("batch_1", LineResult(2, "{}", True))
    assert await store.recorded("batch_1") == set()
    assert not await store.file_in_use("file-in")
    assert await store.active("o") == 0
    assert await store.unfinished() == []
    assert not await store.claim("batch_1", "a", now=NOW, ttl=TTL)


async def test_files_are_listed_paged_and_deleted_per_owner(store: BatchStore) -> None:
    for i in range(5):
        await add_file(store, f"file-{i}", purpose="batch" if i % 2 == 0 else "batch_output")
    await add_file(store, "file-other", owner="p")

    async def ids(**options: object) -> list[str]:
        query = {"owner": "o", "purpose": None, "after": None, "limit": 10, "newest_first": True}
        query.update(options)
        return [f.id for f in await store.list_files(**query)]  # type: ignore[arg-type]

    assert await ids() == ["file-4", "file-3", "file-2", "file-1", "file-0"]
    assert await ids(newest_first=False, limit=2) == ["file-0", "file-1"]
    assert await ids(after="file-3") == ["file-2", "file-1", "file-0"]
    assert await ids(after="file-3", newest_first=False) == ["file-4"]
    assert await ids(purpose="batch") == ["file-4", "file-2", "file-0"]
    assert await ids(purpose="unknown") == []
    assert await ids(after="file-other") == []
    assert await ids(owner="p") == ["file-other"]
    assert await store.get_file("file-other", owner="o") is None
    assert not await store.delete_file("file-other", owner="o")
    assert await store.delete_file("file-2", owner="o")
    assert not await store.delete_file("file-2", owner="o")
    assert await ids() == ["file-4", "file-3", "file-1", "file-0"]


async def test_files_expire(store: BatchStore) -> None:
    await add_file(store, "file-old", expires_at=100)
    await add_file(store, "file-new", expires_at=200)
    await add_file(store, "file-forever")
    assert await store.expire_files(150) == 1
    assert await store.get_file("file-old", owner="o") is None
    assert await store.get_file("file-new", owner="o") is not None
    assert await store.expire_files(150) == 0
    assert [
        f.id
        for f in await store.list_files(
            owner="o", purpose=None, after=None, limit=10, newest_first=False
        )
    ] == ["file-new", "file-forever"]


async def test_batches_are_listed_newest_first_and_paged(store: BatchStore) -> None:
    for i in range(4):
        await store.add_batch(batch(batch_id=f"batch_{i}"))
    await store.add_batch(batch(batch_id="batch_p", owner="p"))
    listed = await store.list_batches(owner="o", after=None, limit=3)
    assert [b.id for b in listed] == ["batch_3", "batch_2", "batch_1"]
    listed = await store.list_batches(owner="o", after="batch_1", limit=3)
    assert [b.id for b in listed] == ["batch_0"]
    assert await store.list_batches(owner="o", after="batch_p", limit=3) == []
    assert await store.active("o") == 4
    assert await store.active("p") == 1


async def test_what_is_kept_survives_reopening_and_old_stray_bytes_do_not(
    make_store: MakeStore,
) -> None:
    store = make_store()
    await store.start()
    await add_file(store, "file-1")
    await store.add_batch(batch("file-1"))
    await store.record("batch_1", LineResult(2, "{}", True))
    directory = store.directory  # type: ignore[attr-defined]
    await store.aclose()
    old = time.time() - STRAY_AGE - 60
    stray, young, scratch = (
        directory / "files" / "file-stray",
        directory / "files" / "file-young",
        directory / "scratch" / "left",
    )
    for path in (stray, young, scratch):
        path.write_bytes(b"left by a crash")
    for path in (stray, scratch, directory / "files" / "file-1"):
        os.utime(path, (old, old))

    reopened = make_store()
    await reopened.start()
    try:
        (unfinished,) = await reopened.unfinished()
        assert unfinished.status is BatchStatus.VALIDATING
        assert await reopened.recorded("batch_1") == {2}
        assert b"".join([c async for c in reopened.read_file("file-1")]) == b'{"x":1}\n'
        assert await reopened.active("o") == 1
        assert not stray.exists()
        assert not scratch.exists()
        # Another process may be keeping it right now.
        assert young.exists()
    finally:
        await reopened.aclose()


async def test_a_lease_is_held_by_one_runner_until_it_expires(store: BatchStore) -> None:
    await store.add_batch(batch(batch_id="batch_a"))
    await store.add_batch(batch(batch_id="batch_b"))
    assert await store.unleased(NOW, limit=10) == ["batch_a", "batch_b"]
    assert await store.claim("batch_a", "A", now=NOW, ttl=TTL)
    assert not await store.claim("batch_a", "B", now=NOW + 1, ttl=TTL)
    assert await store.unleased(NOW + 1, limit=10) == ["batch_b"]
    assert await store.unleased(NOW + 1, limit=0) == []
    # Renewed by its holder: still held past the first expiry.
    assert await store.claim("batch_a", "A", now=NOW + 4, ttl=TTL)
    assert not await store.claim("batch_a", "B", now=NOW + TTL + 1, ttl=TTL)
    # Not renewed: another takes it over once it expired, and the first cannot renew it.
    assert await store.unleased(NOW + 4 + TTL, limit=10) == ["batch_a", "batch_b"]
    assert await store.claim("batch_a", "B", now=NOW + 4 + TTL, ttl=TTL)
    assert not await store.claim("batch_a", "A", now=NOW + 5 + TTL, ttl=TTL)
    # Released only by its holder.
    await store.release("batch_a", "A")
    assert not await store.claim("batch_a", "C", now=NOW + 5 + TTL, ttl=TTL)
    await store.release("batch_a", "B")
    assert await store.claim("batch_a", "C", now=NOW + 5 + TTL, ttl=TTL)
    assert not await store.claim("batch_missing", "C", now=NOW, ttl=TTL)


async def test_ids_from_a_request_name_nothing_they_should_not(store: BatchStore) -> None:
    for wanted in ("", "../x", "a" * 10_000, "file-1\r\nDEL x", "*"):
        assert await store.get_file(wanted, owner="o") is None
        assert await store.get_batch(wanted, owner="o") is None
        assert not await store.delete_file(wanted, owner="o")


async def test_redis_gone_is_a_clear_error_and_the_store_reconnects(tmp_path: Path) -> None:
    server = RedisServer().start()
    try:
        store: RedisBatchStore = redis_store(server, "gone", tmp_path)
        await store.start()
        try:
            await store.add_batch(batch())
            server.kill()
            with pytest.raises(StoreUnavailableError, match="cannot be reached"):
                await store.load_batch("batch_1")
            with pytest.raises(StoreUnavailableError):
                await store.record("batch_1", LineResult(1, "{}", True))
            server.start()  # an empty server on the same port
            assert await store.load_batch("batch_1") is None
            await store.add_batch(batch())
            assert await store.record("batch_1", LineResult(1, "{}", True))
        finally:
            await store.aclose()
    finally:
        server.stop()
