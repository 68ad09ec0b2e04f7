"""``FileDirectory``: where a batch store keeps file bytes, one host's directory or a mount
every replica shares.

    <directory>/files/<file id>   a file's bytes
    <directory>/scratch/          uploads and output files being written

Bytes are written in ``scratch/`` and renamed into ``files/`` before their record is kept, so
a record always has its bytes. Several processes may use one directory at once, so leftovers
(bytes whose record was never kept, scratch files of a crashed process) are only removed once
they are older than ``STRAY_AGE``: anything younger may be another process's work in progress.
"""

from __future__ import annotations

import secrets
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Collection
from pathlib import Path

import anyio
import anyio.to_thread

__all__ = ["CHUNK", "STRAY_AGE", "FileDirectory"]

CHUNK = 64 * 1024
# Seconds after which bytes without a record, and scratch files, are leftovers of a crash.
STRAY_AGE = 3600.0


class FileDirectory:
    """File bytes under ``directory`` (None: a temporary directory, removed by ``remove``)."""

    def __init__(self, directory: str | Path | None) -> None:
        self.temporary = directory is None
        self.root = Path(directory) if directory is not None else None

    @property
    def path(self) -> Path:
        assert self.root is not None, "the store is not started"
        return self.root

    def open(self) -> Path:
        """Make the directory (a temporary one when none was given); blocking."""
        if self.root is None:
            self.root = Path(tempfile.mkdtemp(prefix="leapasgi-batches-"))
        for sub in ("files", "scratch"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        return self.root

    def remove(self) -> None:
        """Remove a temporary directory (a given one stays)."""
        if self.temporary and self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = None

    def scratch(self) -> Path:
        return self.path / "scratch" / secrets.token_hex(16)

    def file(self, file_id: str) -> Path:
        return self.path / "files" / file_id

    def unlink(self, file_id: str) -> None:
        self.file(file_id).unlink(missing_ok=True)

    async def unlink_all(self, file_ids: Collection[str]) -> None:
        def unlink() -> None:
            for file_id in file_ids:
                self.unlink(file_id)

        if file_ids:
            await anyio.to_thread.run_sync(unlink)

    async def read(self, file_id: str) -> AsyncIterator[bytes]:
        async with await anyio.open_file(self.file(file_id), "rb") as file:
            while chunk := await file.read(CHUNK):
                yield chunk

    def stray(self, *, now: float | None = None) -> list[Path]:
        """Files in ``files/`` and ``scratch/`` older than ``STRAY_AGE``; blocking."""
        cutoff = (time.time() if now is None else now) - STRAY_AGE
        found = []
        for sub in ("files", "scratch"):
            for path in (self.path / sub).iterdir():
                try:
                    if path.stat().st_mtime < cutoff:
                        found.append(path)
                except FileNotFoundError:
                    continue  # another process took it meanwhile
        return found

    async def tidy(self, known: Callable[[list[str]], Awaitable[set[str]]]) -> int:
        """Remove old scratch files and old bytes whose id ``known`` does not vouch for;
        how many."""
        old = await anyio.to_thread.run_sync(self.stray)
        held = [path.name for path in old if path.parent.name == "files"]
        kept = await known(held) if held else set()
        gone = [p for p in old if not (p.parent.name == "files" and p.name in kept)]

        def remove() -> None:
            for path in gone:
                path.unlink(missing_ok=True)

        await anyio.to_thread.run_sync(remove)
        return len(gone)
