"""Spend per subject and period in the SQLite file (one host): the memory ledger's budgets
survive a restart. Rows are (subject, period key, usd): "2026-12-06", "2026-12", "total"."""

from __future__ import annotations

import sqlite3

from ._sqlite import SqliteFile
from .ledger import spend_keys

__all__ = ["load_spend", "prune_spend", "save_spend"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS spend (
    subject TEXT NOT NULL,
    period TEXT NOT NULL,
    usd REAL NOT NULL DEFAULT 0,
    PRIMARY KEY (subject, period)
) WITHOUT ROWID;
"""


async def load_spend(database: SqliteFile, wall: float) -> list[tuple[str, str, float]]:
    """Spend kept for the periods ``wall`` is in (today, this month, all time)."""
    database.ensure(_SCHEMA)
    periods = spend_keys(wall)

    def read(connection: sqlite3.Connection) -> list[tuple[str, str, float]]:
        rows = connection.execute(
            "SELECT subject, period, usd FROM spend WHERE period IN (?, ?, ?)", periods
        )
        return [(str(s), str(p), float(u)) for s, p, u in rows]

    return await database.run(read)


async def save_spend(database: SqliteFile, rows: list[tuple[str, str, float]]) -> None:
    """Add ``rows`` to what is kept."""
    database.ensure(_SCHEMA)

    def write(connection: sqlite3.Connection) -> None:
        connection.executemany(
            "INSERT INTO spend (subject, period, usd) VALUES (?, ?, ?) "
            "ON CONFLICT (subject, period) DO UPDATE SET usd = usd + excluded.usd",
            rows,
        )

    await database.run(write)


async def prune_spend(database: SqliteFile, before: str) -> int:
    """Forget the spend of days and months that ended before day ``before`` ("YYYY-MM-DD");
    totals are kept."""
    database.ensure(_SCHEMA)
    month = before[:7]

    def delete(connection: sqlite3.Connection) -> int:
        days = connection.execute(
            "DELETE FROM spend WHERE length(period) = 10 AND period < ?", (before,)
        ).rowcount
        months = connection.execute(
            "DELETE FROM spend WHERE length(period) = 7 AND period < ?", (month,)
        ).rowcount
        return int(days + months)

    return await database.run(delete)
