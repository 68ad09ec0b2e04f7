"""``SqliteBatchStore``: files and batches in one host's directory.

    <directory>/batches.sqlite3   file and batch records, each batch's recorded lines, leases
    <directory>/files/<file id>   a file's bytes (``_files.py``)
    <directory>/scratch/          uploads and output files being written

A file's bytes are renamed into ``files/`` before its record is committed, so a record always
has its bytes. A recorded line and its batch's counts change in one transaction: after a
crash (even SIGKILL) a line is either recorded and counted or neither. Every check-and-change
(a status moved from the one its writer saw, a lease taken) is one ``BEGIN IMMEDIATE``
transaction, so the processes of ``leapasgi serve --workers N`` can share one directory.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread

from ..tenants._sqlite import SqliteFile
from ._files import FileDirectory
from .objects import BatchRecord, BatchStatus, FileRecord, LineResult
from .store import NewFile

__all__ = ["SqliteBatchStore"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    seq INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    owner TEXT,
    purpose TEXT NOT NULL,
    expires_at INTEGER,
    data TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS batches (
    seq INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    owner TEXT,
    status TEXT NOT NULL,
    finished INTEGER NOT NULL DEFAULT 0,
    input_file_id TEXT NOT NULL,
    data TEXT NOT NULL,
    completed INTEGER NOT NULL DEFAULT 0,
    failed INTEGER NOT NULL DEFAULT 0,
    input_tokens INTEGER NOT NULL DEFAULT 0,
    output_tokens INTEGER NOT NULL DEFAULT 0,
    cached_tokens INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS batches_owner ON batches (owner, seq);
CREATE INDEX IF NOT EXISTS batches_unfinished ON batches (finished, seq);
CREATE INDEX IF NOT EXISTS batches_input ON batches (input_file_id, finished);
CREATE INDEX IF NOT EXISTS files_owner ON files (owner, seq);
CREATE TABLE IF NOT EXISTS batch_lines (
    batch_id TEXT NOT NULL,
    line INTEGER NOT NULL,
    ok INTEGER NOT NULL,
    result TEXT NOT NULL,
    PRIMARY KEY (batch_id, line)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS batch_leases (
    batch_id TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    until REAL NOT NULL
) WITHOUT ROWID;
"""
_BATCH = "SELECT data, completed, failed, input_tokens, output_tokens, cached_tokens FROM batches"
# Recorded lines read at a time when the output files are written.
_PAGE = 1000


def _batch(row: Any) -> BatchRecord:
    return BatchRecord.loads(row[0], tuple(row[1:6]))


class SqliteBatchStore:
    """Files and batches under ``directory`` (None: a temporary directory, removed when the
    store closes)."""

    def __init__(self, directory: str | Path | None) -> None:
        self._files = FileDirectory(directory)
        self._database: SqliteFile | None = None

    @property
    def directory(self) -> Path:
        return self._files.path

    @property
    def _db(self) -> SqliteFile:
        assert self._database is not None, "the store is not started"
        return self._database

    async def start(self) -> None:
        if self._database is not None:
            return
        database = await anyio.to_thread.run_sync(self._open)

        async def known(ids: list[str]) -> set[str]:
            kept = await database.run(lambda c: {r[0] for r in c.execute("SELECT id FROM files")})
            return kept.intersection(ids)

        await self._files.tidy(known)
        self._database = database

    def _open(self) -> SqliteFile:
        directory = self._files.open()
        database = SqliteFile(directory / "batches.sqlite3", name="batch database")
        database.ensure(_SCHEMA)
        database.run_sync(lambda c: None)  # the schema, now
        return database

    async def aclose(self) -> None:
        database, self._database = self._database, None
        if database is not None:
            database.close()
        self._files.remove()

    def scratch(self) -> Path:
        return self._files.scratch()

    # -- files --------------------------------------------------------------------------

    async def add_file(self, new: NewFile) -> None:
        record, source = new
        target = self._files.file(record.id)

        def write(connection: sqlite3.Connection) -> None:
            os.replace(source, target)
            _insert_file(connection, record)

        await self._db.run(write)

    async def get_file(self, file_id: str, *, owner: str | None) -> FileRecord | None:
        rows = await self._db.query(
            "SELECT data FROM files WHERE id = ? AND owner IS ?", (file_id, owner)
        )
        return FileRecord.loads(rows[0][0]) if rows else None

    async def list_files(
        self,
        *,
        owner: str | None,
        purpose: str | None,
        after: str | None,
        limit: int,
        newest_first: bool,
    ) -> list[FileRecord]:
        sql = "SELECT data FROM files WHERE owner IS ?"
        params: list[Any] = [owner]
        if purpose is not None:
            sql += " AND purpose = ?"
            params.append(purpose)
        if after is not None:
            sql += f" AND seq {'<' if newest_first else '>'} "
            sql += "(SELECT seq FROM files WHERE id = ? AND owner IS ?)"
            params += [after, owner]
        sql += f" ORDER BY seq {'DESC' if newest_first else 'ASC'} LIMIT ?"
        params.append(limit)
        return [FileRecord.loads(row[0]) for row in await self._db.query(sql, params)]

    async def delete_file(self, file_id: str, *, owner: str | None) -> bool:
        def delete(connection: sqlite3.Connection) -> bool:
            cursor = connection.execute(
                "DELETE FROM files WHERE id = ? AND owner IS ?", (file_id, owner)
            )
            return cursor.rowcount > 0

        deleted = await self._db.run(delete)
        if deleted:
            await self._files.unlink_all([file_id])
        return deleted

    def read_file(self, file_id: str) -> AsyncIterator[bytes]:
        return self._files.read(file_id)

    async def file_in_use(self, file_id: str) -> bool:
        rows = await self._db.query(
            "SELECT 1 FROM batches WHERE input_file_id = ? AND finished = 0 LIMIT 1", (file_id,)
        )
        return bool(rows)

    async def expire_files(self, now: int) -> int:
        def delete(connection: sqlite3.Connection) -> list[str]:
            ids = [
                str(row[0])
                for row in connection.execute(
                    "SELECT id FROM files WHERE expires_at IS NOT NULL AND expires_at <= ?", (now,)
                )
            ]
            connection.executemany("DELETE FROM files WHERE id = ?", [(i,) for i in ids])
            return ids

        expired = await self._db.run(delete)
        await self._files.unlink_all(expired)
        return len(expired)

    # -- batches ------------------------------------------------------------------------

    async def add_batch(self, batch: BatchRecord) -> None:
        await self._db.query(
            "INSERT INTO batches (id, owner, status, finished, input_file_id, data) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (
                batch.id,
                batch.owner,
                batch.status.value,
                int(batch.status.finished),
                batch.input_file_id,
                batch.dumps(),
            ),
        )

    async def save_batch(self, batch: BatchRecord, *, was: BatchStatus) -> bool:
        move = _Move(batch, was, counts=False)
        return await self._db.run(move.apply)

    async def get_batch(self, batch_id: str, *, owner: str | None) -> BatchRecord | None:
        rows = await self._db.query(f"{_BATCH} WHERE id = ? AND owner IS ?", (batch_id, owner))
        return _batch(rows[0]) if rows else None

    async def load_batch(self, batch_id: str) -> BatchRecord | None:
        rows = await self._db.query(f"{_BATCH} WHERE id = ?", (batch_id,))
        return _batch(rows[0]) if rows else None

    async def list_batches(
        self, *, owner: str | None, after: str | None, limit: int
    ) -> list[BatchRecord]:
        sql = f"{_BATCH} WHERE owner IS ?"
        params: list[Any] = [owner]
        if after is not None:
            sql += " AND seq < (SELECT seq FROM batches WHERE id = ? AND owner IS ?)"
            params += [after, owner]
        sql += " ORDER BY seq DESC LIMIT ?"
        params.append(limit)
        return [_batch(row) for row in await self._db.query(sql, params)]

    async def unfinished(self) -> list[BatchRecord]:
        rows = await self._db.query(f"{_BATCH} WHERE finished = 0 ORDER BY seq")
        return [_batch(row) for row in rows]

    async def active(self, owner: str | None) -> int:
        rows = await self._db.query(
            "SELECT count(*) FROM batches WHERE owner IS ? AND finished = 0", (owner,)
        )
        return int(rows[0][0])

    # -- leases -------------------------------------------------------------------------

    async def claim(self, batch_id: str, holder: str, *, now: float, ttl: float) -> bool:
        def take(connection: sqlite3.Connection) -> bool:
            open_ = connection.execute(
                "SELECT 1 FROM batches WHERE id = ? AND finished = 0", (batch_id,)
            ).fetchone()
            if open_ is None:
                return False
            cursor = connection.execute(
                "INSERT INTO batch_leases (batch_id, holder, until) VALUES (?, ?, ?) "
                "ON CONFLICT (batch_id) DO UPDATE SET holder = excluded.holder, "
                "until = excluded.until WHERE batch_leases.holder = excluded.holder "
                "OR batch_leases.until <= ?",
                (batch_id, holder, now + ttl, now),
            )
            return cursor.rowcount > 0

        return await self._db.run(take)

    async def release(self, batch_id: str, holder: str) -> None:
        await self._db.query(
            "DELETE FROM batch_leases WHERE batch_id = ? AND holder = ?", (batch_id, holder)
        )

    async def unleased(self, now: float, *, limit: int) -> list[str]:
        rows = await self._db.query(
            "SELECT b.id FROM batches b LEFT JOIN batch_leases l ON l.batch_id = b.id "
            "WHERE b.finished = 0 AND (l.until IS NULL OR l.until <= ?) ORDER BY b.seq LIMIT ?",
            (now, limit),
        )
        return [str(row[0]) for row in rows]

    # -- lines --------------------------------------------------------------------------

    async def recorded(self, batch_id: str) -> set[int]:
        rows = await self._db.query("SELECT line FROM batch_lines WHERE batch_id = ?", (batch_id,))
        return {int(row[0]) for row in rows}

    async def record(self, batch_id: str, result: LineResult) -> bool:
        def write(connection: sqlite3.Connection) -> bool:
            open_ = connection.execute(
                "SELECT 1 FROM batches WHERE id = ? AND finished = 0", (batch_id,)
            ).fetchone()
            if open_ is None:
                return False
            cursor = connection.execute(
                "INSERT OR IGNORE INTO batch_lines (batch_id, line, ok, result) "
                "VALUES (?, ?, ?, ?)",
                (batch_id, result.line, int(result.ok), result.text),
            )
            if cursor.rowcount == 0:
                return False
            connection.execute(
                "UPDATE batches SET completed = completed + ?, failed = failed + ?, "
                "input_tokens = input_tokens + ?, output_tokens = output_tokens + ?, "
                "cached_tokens = cached_tokens + ? WHERE id = ?",
                (
                    int(result.ok),
                    int(not result.ok),
                    result.input_tokens,
                    result.output_tokens,
                    result.cached_tokens,
                    batch_id,
                ),
            )
            return True

        return await self._db.run(write)

    async def results(self, batch_id: str) -> AsyncIterator[LineResult]:
        last = 0
        while True:
            rows = await self._db.query(
                "SELECT line, ok, result FROM batch_lines WHERE batch_id = ? AND line > ? "
                "ORDER BY line LIMIT ?",
                (batch_id, last, _PAGE),
            )
            for line, ok, text in rows:
                yield LineResult(int(line), str(text), bool(ok))
            if len(rows) < _PAGE:
                return
            last = int(rows[-1][0])

    async def finish(self, batch: BatchRecord, files: list[NewFile], *, was: BatchStatus) -> bool:
        move = _Move(batch, was, counts=True)
        moved: list[str] = []

        def write(connection: sqlite3.Connection) -> bool:
            kept = connection.execute(
                "SELECT status FROM batches WHERE id = ?", (move.batch_id,)
            ).fetchone()
            if kept is None or kept[0] != was.value:
                return False
            for record, source in files:
                os.replace(source, self._files.file(record.id))
                moved.append(record.id)
                _insert_file(connection, record)
            return move.apply(connection)

        try:
            return await self._db.run(write)
        except BaseException:
            # Rolled back: the bytes renamed before the failure have no record.
            await self._files.unlink_all(moved)
            raise


class _Move:
    """A batch saved if its kept status is ``was`` (with its final ``counts``, when asked);
    a batch that ends loses its recorded lines and its lease. Its values are taken when the
    move is made, on the event loop, not when a worker thread applies it."""

    def __init__(self, batch: BatchRecord, was: BatchStatus, *, counts: bool) -> None:
        self.batch_id = batch.id
        self.sets = "data = ?, status = ?, finished = ?"
        self.params: list[Any] = [batch.dumps(), batch.status.value, int(batch.status.finished)]
        if counts:
            self.sets += ", completed = ?, failed = ?"
            self.params += [batch.completed, batch.failed]
        self.params += [batch.id, was.value]
        self.finished = batch.status.finished

    def apply(self, connection: sqlite3.Connection) -> bool:
        cursor = connection.execute(
            f"UPDATE batches SET {self.sets} WHERE id = ? AND status = ?", self.params
        )
        if cursor.rowcount == 0:
            return False
        if self.finished:
            connection.execute("DELETE FROM batch_lines WHERE batch_id = ?", (self.batch_id,))
            connection.execute("DELETE FROM batch_leases WHERE batch_id = ?", (self.batch_id,))
        return True


def _insert_file(connection: sqlite3.Connection, record: FileRecord) -> None:
    connection.execute(
        "INSERT INTO files (id, owner, purpose, expires_at, data) VALUES (?, ?, ?, ?, ?)",
        (record.id, record.owner, record.purpose, record.expires_at, record.dumps()),
    )
