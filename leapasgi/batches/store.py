"""Where files and batches are kept: ``BatchStore``, implemented by ``SqliteBatchStore``
(``sqlite.py``: one host's directory, the default) and ``RedisBatchStore`` (``redis.py``:
records in Redis, bytes on a mount every replica shares).

The promises the runner builds on:

- ``record`` keeps a line's answer durably and counts it in the same step, once; a line
  already recorded is never recorded (or sent) again.
- A batch's status changes only from the status its writer saw (``save_batch`` and
  ``finish`` take ``was``): a cancel on one replica is never overwritten by the replica
  running the batch, and a batch is finished once.
- One runner at a time holds a batch's lease (``claim``): it is free, expired, or already
  the claimant's; only the holder runs the batch, renewing the lease while it does.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Protocol

from .objects import BatchRecord, BatchStatus, FileRecord, LineResult

__all__ = ["BatchStore", "NewFile"]

# A file to keep: its record, and where its bytes are now (a scratch file the store takes).
NewFile = tuple[FileRecord, Path]


class BatchStore(Protocol):
    """Files (bytes and records), batches, and each batch's recorded lines."""

    async def start(self) -> None:
        """Open the store (safe to call twice)."""
        ...

    async def aclose(self) -> None: ...

    def scratch(self) -> Path:
        """A new path to write a file's bytes to before ``add_file`` takes them."""
        ...

    async def add_file(self, new: NewFile) -> None:
        """Keep a file: its bytes move from the scratch path."""
        ...

    async def get_file(self, file_id: str, *, owner: str | None) -> FileRecord | None:
        """The file, if it exists, has not expired and is ``owner``'s."""
        ...

    async def list_files(
        self,
        *,
        owner: str | None,
        purpose: str | None,
        after: str | None,
        limit: int,
        newest_first: bool,
    ) -> list[FileRecord]:
        """``owner``'s files in order of creation, those after the file ``after``."""
        ...

    async def delete_file(self, file_id: str, *, owner: str | None) -> bool:
        """Forget the file and its bytes; False when there was none of ``owner``'s."""
        ...

    def read_file(self, file_id: str) -> AsyncIterator[bytes]:
        """The file's bytes, in chunks."""
        ...

    async def add_batch(self, batch: BatchRecord) -> None: ...

    async def save_batch(self, batch: BatchRecord, *, was: BatchStatus) -> bool:
        """Keep the batch's status, times and files (its counts are kept by ``record``) if
        its kept status is still ``was``; False (nothing changed) when it is not."""
        ...

    async def get_batch(self, batch_id: str, *, owner: str | None) -> BatchRecord | None: ...

    async def load_batch(self, batch_id: str) -> BatchRecord | None:
        """The batch, whoever's it is (the runner's view)."""
        ...

    async def list_batches(
        self, *, owner: str | None, after: str | None, limit: int
    ) -> list[BatchRecord]:
        """``owner``'s batches, newest first, those after the batch ``after``."""
        ...

    async def unfinished(self) -> list[BatchRecord]:
        """Every batch not in a final status, oldest first: what a restart resumes."""
        ...

    async def active(self, owner: str | None) -> int:
        """How many of ``owner``'s batches are not finished."""
        ...

    async def recorded(self, batch_id: str) -> set[int]:
        """The lines of the batch whose answers are recorded."""
        ...

    async def record(self, batch_id: str, result: LineResult) -> bool:
        """Keep one line's answer and count it, in one durable step; False (and nothing
        changed) when that line was recorded already, or the batch is finished."""
        ...

    def results(self, batch_id: str) -> AsyncIterator[LineResult]:
        """The recorded answers, in line order."""
        ...

    async def finish(self, batch: BatchRecord, files: list[NewFile], *, was: BatchStatus) -> bool:
        """In one step, if the batch's kept status is still ``was``: keep the output and
        error files, save the batch (now final), drop its recorded lines (the files hold
        them now) and its lease. False (nothing kept; the files stay where they are) when
        the status is no longer ``was``."""
        ...

    async def claim(self, batch_id: str, holder: str, *, now: float, ttl: float) -> bool:
        """Take (or renew) the batch's lease for ``holder`` until ``now + ttl``: True when
        it was free, expired at ``now`` or already ``holder``'s and the batch is not
        finished; False (nothing changed) otherwise."""
        ...

    async def release(self, batch_id: str, holder: str) -> None:
        """Give up the lease, if ``holder`` holds it."""
        ...

    async def unleased(self, now: float, *, limit: int) -> list[str]:
        """Up to ``limit`` unfinished batches, oldest first, whose lease is free or expired
        at ``now``: those a runner may claim."""
        ...

    async def file_in_use(self, file_id: str) -> bool:
        """Whether a batch not finished reads the file."""
        ...

    async def expire_files(self, now: int) -> int:
        """Forget the files that expired by ``now``; how many."""
        ...
