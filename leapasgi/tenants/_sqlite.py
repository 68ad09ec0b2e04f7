"""One SQLite database for what tenancy keeps in one host: keys, usage, spend.

Each store owns its tables and makes them with ``ensure``. Calls run in a worker thread, one at
a time per database (a lock), so the event loop never waits on the disk. WAL mode lets the
processes of ``leapasgi serve --workers N`` share the file; ``busy_timeout`` makes a writer wait
for another's transaction instead of failing. Without a path the database is in memory: it
lives as long as the gateway.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import anyio.to_thread

from ..exceptions import StoreUnavailableError

__all__ = ["SqliteFile"]

T = TypeVar("T")

# Milliseconds a write waits for another process's transaction to end.
BUSY_TIMEOUT_MS = 5_000


class SqliteFile:
    """A SQLite database used from asyncio: ``await db.run(fn)`` runs ``fn(connection)`` in a
    worker thread, inside a transaction (committed when it returns, rolled back when it
    raises)."""

    def __init__(self, path: str | Path | None, *, name: str = "tenant database") -> None:
        self.path = Path(path) if path is not None else None
        # What the database is, in the error a failure is answered with.
        self.name = name
        self._lock = threading.Lock()
        self._connection: sqlite3.Connection | None = None
        self.schemas: list[str] = []

    def __repr__(self) -> str:
        return f"SqliteFile({str(self.path) if self.path else ':memory:'!r})"

    def ensure(self, schema: str) -> None:
        """Tables and indexes (``CREATE ... IF NOT EXISTS``) made on first use (once)."""
        if schema in self.schemas:
            return
        self.schemas.append(schema)
        if self._connection is not None:
            with self._lock:
                self._connection.executescript(schema)

    def _connect(self) -> sqlite3.Connection:
        connection = self._connection
        if connection is None:
            target = str(self.path) if self.path is not None else ":memory:"
            if self.path is not None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            connection = sqlite3.connect(target, check_same_thread=False, isolation_level=None)
            connection.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            if self.path is not None:
                connection.execute("PRAGMA journal_mode = WAL")
                connection.execute("PRAGMA synchronous = NORMAL")
            for schema in self.schemas:
                connection.executescript(schema)
            self._connection = connection
        return connection

    def run_sync(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """``fn(connection)`` in one transaction, on this thread (for the CLI and startup)."""
        with self._lock:
            try:
                connection = self._connect()
                connection.execute("BEGIN IMMEDIATE")
                try:
                    result = fn(connection)
                except BaseException:
                    connection.execute("ROLLBACK")
                    raise
                connection.execute("COMMIT")
                return result
            except sqlite3.Error as exc:
                where = str(self.path) if self.path is not None else "memory"
                raise StoreUnavailableError(
                    f"The {self.name} ({where}) failed: {type(exc).__name__}"
                ) from None

    async def run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """``fn(connection)`` in one transaction, in a worker thread."""
        return await anyio.to_thread.run_sync(self.run_sync, fn)

    async def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """The rows of one statement."""
        return await self.run(lambda c: c.execute(sql, params).fetchall())

    def close(self) -> None:
        with self._lock:
            connection, self._connection = self._connection, None
            if connection is not None:
                connection.close()
