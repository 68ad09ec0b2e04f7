"""SqliteBatchStore: a line is recorded and counted once; what is kept survives reopening."""

from __future__ import annotations

from pathlib import Path

import pytest

from leapasgi.batches import BatchRecord, FileRecord, LineResult, SqliteBatchStore, TenantRecord
from leapasgi.batches.objects import BatchStatus

pytestmark = pytest.mark.anyio


def batch(file_id: str) -> BatchRecord:
    tenant = TenantRecord("t", "key", None, {})
    return BatchRecord("batch_1", "o", tenant, "/v1/embeddings", file_id, 1, 86_401, 2)


async def test_a_line_is_recorded_and_counted_once(tmp_path: Path) -> None:
    store = SqliteBatchStore(tmp_path)
    await store.start()
    try:
        await store.add_batch(batch("file-1"))
        answer = LineResult(1, '{"custom_id":"a"}', True, 3, 4, 1)
        assert await store.record("batch_1", answer)
        assert not await store.record("batch_1", LineResult(1, '{"custom_id":"b"}', False))
        kept = await store.load_batch("batch_1")
        assert kept is not None
        assert (kept.completed, kept.failed, kept.input_tokens, kept.output_tokens) == (1, 0, 3, 4)
        assert [r.text async for r in store.results("batch_1")] == ['{"custom_id":"a"}']
        assert await store.get_batch("batch_1", owner="someone else") is None
    finally:
        await store.aclose()


async def test_what_is_kept_survives_reopening_and_stray_bytes_do_not(tmp_path: Path) -> None:
    store = SqliteBatchStore(tmp_path)
    await store.start()
    scratch = store.scratch()
    scratch.write_bytes(b'{"x":1}\n')
    await store.add_file((FileRecord("file-1", "o", "in.jsonl", "batch", 8, 1, None, 1), scratch))
    await store.add_batch(batch("file-1"))
    await store.record("batch_1", LineResult(2, "{}", True))
    await store.aclose()
    (tmp_path / "files" / "file-stray").write_bytes(b"left by a crash")

    reopened = SqliteBatchStore(tmp_path)
    await reopened.start()
    try:
        (unfinished,) = await reopened.unfinished()
        assert unfinished.status is BatchStatus.VALIDATING
        assert await reopened.recorded("batch_1") == {2}
        assert b"".join([c async for c in reopened.read_file("file-1")]) == b'{"x":1}\n'
        assert not (tmp_path / "files" / "file-stray").exists()
        assert await reopened.active("o") == 1
    finally:
        await reopened.aclose()
