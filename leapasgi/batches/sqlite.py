"""``SqliteBatchStore``: files and batches in one host's directory.

    <directory>/batches.sqlite3   file and batch records, each batch's recorded lines
    <directory>/files/<file id>   a file's bytes
    <directory>/scratch/          uploads and output files being written

A file's bytes are written in ``scratch/`` and renamed into ``files/`` before its record is
committed, so a record always has its bytes; bytes left without a record by a crash are
removed when the store opens. A recorded line and its batch's counts change in one
transaction: after a crash (even SIGKILL) a line is either recorded and counted or neither.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import sqlite3
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread

from ..tenants._sqlite import SqliteFile
from .objects import BatchRecord, FileRecord, LineResult
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
    finished INTEGER NOT NULL DEFAULT 0,
    data TEXT NOT NULL,
    completed INTEGER NOT NULL DEFAULT 0,
    failed INTEGER NOT NULL DEFAULT 0,
    input_tokens INTEGER NOT NULL DEFAULT 0,
    output_tokens INTEGER NOT NULL DEFAULT 0,
    cached_tokens INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS batches_owner ON batches (owner, seq);
CREATE INDEX IF NOT EXISTS files_owner ON files (owner, seq);
CREATE TABLE IF NOT EXISTS batch_lines (
    batch_id TEXT NOT NULL,
    line INTEGER NOT NULL,
    ok INTEGER NOT NULL,
    result TEXT NOT NULL,
    PRIMARY KEY (batch_id, line)
) WITHOUT ROWID;
"""
_BATCH = "SELECT data, completed, failed, input_tokens, output_tokens, cached_tokens FROM batches"
CHUNK = 64 * 1024
# Recorded lines read at a time when the output files are written.
_PAGE = 1000


def _batch(row: Any) -> BatchRecord:
    return BatchRecord.loads(row[0], tuple(row[1:6]))


class SqliteBatchStore:
    """Files and batches under ``directory`` (None: a temporary directory, removed when the
    store closes)."""

    def __init__(self, directory: str | Path | None) -> None:
        self._given = Path(directory) if directory is not None else None
        self._directory: Path | None = None
        self._database: SqliteFile | None = None

    @property
    def directory(self) -> Path:
        assert self._directory is not None, "the store is not started"
        return self._directory

    @property
    def _db(self) -> SqliteFile:
        assert self._database is not None, "the store is not started"
        return self._database

    async def start(self) -> None:
        if self._database is not None:
            return
        await anyio.to_thread.run_sync(self._open)

    def _open(self) -> None:
        directory = self._given or Path(tempfile.mkdtemp(prefix="leapasgi-batches-"))
        for sub in ("files", "scratch"):
            (directory / sub).mkdir(parents=True, exist_ok=True)
        database = SqliteFile(directory / "batches.sqlite3", name="batch database")
        database.ensure(_SCHEMA)
        known = database.run_sync(lambda c: {r[0] for r in c.execute("SELECT id FROM files")})
        # Bytes without a record (a crash between rename and commit) and stale scratch files.
        for path in (directory / "files").iterdir():
            if path.name not in known:
                path.unlink(missing_ok=True)
        for path in (directory / "scratch").iterdir():
            path.unlink(missing_ok=True)
        self._directory = directory
        self._database = database

    async def aclose(self) -> None:
        database, self._database = self._database, None
        if database is not None:
            database.close()
        if self._given is None and self._directory is not None:
            shutil.rmtree(self._directory, ignore_errors=True)

    def scratch(self) -> Path:
        return self.directory / "scratch" / secrets.token_hex(16)

    def _path(self, file_id: str) -> Path:
        return self.directory / "files" / file_id

    # -- files --------------------------------------------------------------------------

    async def add_file(self, new: NewFile) -> None:
        record, source = new
        target = self._path(record.id)

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
            await anyio.to_thread.run_sync(self._unlink, file_id)
        return deleted

    def _unlink(self, file_id: str) -> None:
        self._path(file_id).unlink(missing_ok=True)

    async def read_file(self, file_id: str) -> AsyncIterator[bytes]:
        async with await anyio.open_file(self._path(file_id), "rb") as file:
            while chunk := await file.read(CHUNK):
                yield chunk

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
        for file_id in expired:
            await anyio.to_thread.run_sync(self._unlink, file_id)
        return len(expired)

    # -- batches ------------------------------------------------------------------------

    async def add_batch(self, batch: BatchRecord) -> None:
        await self._db.query(
            "INSERT INTO batches (id, owner, finished, data) VALUES (?, ?, ?, ?)",
            (batch.id, batch.owner, int(batch.status.finished), batch.dumps()),
        )

    async def save_batch(self, batch: BatchRecord) -> None:
        await self._db.query(
            "UPDATE batches SET data = ?, finished = ? WHERE id = ?",
            (batch.dumps(), int(batch.status.finished), batch.id),
        )

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

    # -- lines --------------------------------------------------------------------------

    async def recorded(self, batch_id: str) -> set[int]:
        rows = await self._db.query("SELECT line FROM batch_lines WHERE batch_id = ?", (batch_id,))
        return {int(row[0]) for row in rows}

    async def record(self, batch_id: str, result: LineResult) -> bool:
        def write(connection: sqlite3.Connection) -> bool:
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

    async def finish(self, batch: BatchRecord, files: list[NewFile]) -> None:
        def write(connection: sqlite3.Connection) -> None:
            for record, source in files:
                os.replace(source, self._path(record.id))
                _insert_file(connection, record)
            connection.execute(
                "UPDATE batches SET data = ?, finished = ?, completed = ?, failed = ? WHERE id = ?",
                (
                    batch.dumps(),
                    int(batch.status.finished),
                    batch.completed,
                    batch.failed,
                    batch.id,
                ),
            )
            connection.execute("DELETE FROM batch_lines WHERE batch_id = ?", (batch.id,))

        try:
            await self._db.run(write)
        except BaseException:
            for record, _ in files:
                with contextlib.suppress(OSError):
                    self._unlink(record.id)
            raise


def _insert_file(connection: sqlite3.Connection, record: FileRecord) -> None:
    connection.execute(
        "INSERT INTO files (id, owner, purpose, expires_at, data) VALUES (?, ?, ?, ?, ?)",
        (record.id, record.owner, record.purpose, record.expires_at, record.dumps()),
    )
