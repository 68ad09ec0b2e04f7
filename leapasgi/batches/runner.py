"""``BatchRunner``: each batch's life, from ``validating`` to a final status, across restarts.

A batch is driven by one task: its input file is checked against its endpoint, its lines not
yet recorded are handed to the executor that accepts it, and when they are all answered (or
it was cancelled, or its window ended) its output and error files are written and it ends.
Everything a batch has reached is in the store before the next step, so a gateway started
again resumes each unfinished batch where it stopped: lines recorded are never sent again.

A sweep every ``poll_interval`` ends the batches whose completion window has passed (on the
injected clock's wall time) and forgets expired files.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import anyio

from ..clock import Clock
from ..exceptions import LeapError
from ..tenants.policy import Tenant
from .executor import BatchExecutor, BatchRun
from .lines import BatchLine, read_lines
from .objects import (
    MAX_ERRORS_SHOWN,
    BatchRecord,
    BatchStatus,
    FileRecord,
    LineResult,
    TenantRecord,
    file_id,
    unanswered_line,
)
from .store import BatchStore, NewFile

__all__ = ["BatchRunner", "TenantOf"]

logger = logging.getLogger("leapasgi.batches")

# A batch's tenant as it may call now (a virtual key's current policy), or the LeapError
# every remaining line is answered with (the key was revoked).
TenantOf = Callable[[TenantRecord], Awaitable[Tenant]]
_UNANSWERED = {
    BatchStatus.EXPIRED: (
        "batch_expired",
        "This request could not be executed before the completion window expired.",
    ),
    BatchStatus.CANCELLED: ("batch_cancelled", "The batch was cancelled before this request ran."),
}
# Bytes of output gathered before they are written out.
_FLUSH_BYTES = 1024 * 1024


@dataclass(slots=True)
class _Active:
    """A batch being driven: its record (the one copy every change goes through) and what
    stops it."""

    batch: BatchRecord
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    expire: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None


class BatchRunner:
    """Runs the batches kept in ``store`` with the first of ``executors`` that accepts each."""

    def __init__(
        self,
        store: BatchStore,
        executors: Sequence[BatchExecutor],
        *,
        tenant_of: TenantOf,
        clock: Clock,
        file_ttl: float,
        poll_interval: float,
        max_line_bytes: int,
    ) -> None:
        self.store = store
        self._executors = executors
        self._tenant_of = tenant_of
        self._clock = clock
        self._file_ttl = int(file_ttl)
        self._poll = poll_interval
        self._max_line_bytes = max_line_bytes
        self._active: dict[str, _Active] = {}
        self._sweeper: asyncio.Task[None] | None = None
        self._starting: asyncio.Lock | None = None
        self._started = False

    def now(self) -> int:
        """Unix seconds on the gateway's clock."""
        return int(self._clock.time())

    async def start(self) -> None:
        """Open the store and resume every unfinished batch; safe to call twice."""
        if self._started:
            return
        if self._starting is None:
            self._starting = asyncio.Lock()
        async with self._starting:
            if self._started:
                return
            await self.store.start()
            for batch in await self.store.unfinished():
                self._launch(batch)
            self._sweeper = asyncio.create_task(self._sweep(), name="leapasgi-batch-sweep")
            self._started = True

    async def aclose(self) -> None:
        """Stop driving batches (they resume when a gateway starts on the store again)."""
        tasks = [a.task for a in self._active.values() if a.task is not None]
        if self._sweeper is not None:
            tasks.append(self._sweeper)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._active.clear()
        self._sweeper = None
        if self._started:
            self._started = False
            await self.store.aclose()

    def executor_for(self, batch: BatchRecord) -> BatchExecutor | None:
        """The executor that runs ``batch``: the one it was given, when it resumes, else the
        first that accepts it."""
        accepting = [e for e in self._executors if e.accepts(batch)]
        named = [e for e in accepting if e.name == batch.executor]
        return next(iter(named or accepting), None)

    def uses(self, file: str) -> bool:
        """Whether a batch not finished reads the file ``file``."""
        return any(a.batch.input_file_id == file for a in self._active.values())

    async def submit(self, batch: BatchRecord) -> None:
        """Keep a new batch and start it."""
        executor = self.executor_for(batch)
        if executor is not None:
            batch.executor = executor.name
        await self.store.add_batch(batch)
        self._launch(batch)

    async def cancel(self, batch_id: str, *, owner: str | None) -> BatchRecord | None:
        """Cancel ``owner``'s batch: ``cancelling`` while its lines in flight end, then
        ``cancelled``; a finished batch is returned as it is. None: no such batch."""
        active = self._active.get(batch_id)
        if active is None or active.batch.owner != owner:
            return await self.store.get_batch(batch_id, owner=owner)
        batch = active.batch
        if batch.status in (BatchStatus.VALIDATING, BatchStatus.IN_PROGRESS):
            batch.moved(BatchStatus.CANCELLING, self.now())
            await self.store.save_batch(batch)
            active.stop.set()
        return await self.store.get_batch(batch_id, owner=owner)

    def _launch(self, batch: BatchRecord) -> None:
        active = _Active(batch)
        if batch.status is BatchStatus.CANCELLING:
            active.stop.set()
        self._active[batch.id] = active
        active.task = asyncio.create_task(self._drive(active), name=f"leapasgi-{batch.id}")

    async def _drive(self, active: _Active) -> None:
        batch = active.batch
        try:
            if batch.status is BatchStatus.VALIDATING:
                await self._validate(active)
            if batch.status is BatchStatus.IN_PROGRESS:
                await self._execute(active)
            if batch.status is BatchStatus.FINALIZING:
                await self._finalize(batch, BatchStatus.COMPLETED)
            elif batch.status is BatchStatus.CANCELLING:
                await self._finalize(batch, BatchStatus.CANCELLED)
        except LeapError as error:
            # The store failed: the batch stays as it was kept, and resumes on a restart.
            logger.error("batch %s stopped: %s", batch.id, error.message)
        finally:
            self._active.pop(batch.id, None)

    async def _validate(self, active: _Active) -> None:
        """Every line must call the batch's endpoint; else the batch fails, naming them."""
        batch = active.batch
        errors: list[dict[str, object]] = []
        async for line in self._lines(batch):
            if line.url != batch.endpoint and len(errors) < MAX_ERRORS_SHOWN:
                errors.append(
                    {
                        "code": "mismatched_endpoint",
                        "message": f"The line's url {line.url} is not the batch's endpoint "
                        f"{batch.endpoint}.",
                        "param": "url",
                        "line": line.number,
                    }
                )
        if self.executor_for(batch) is None:
            errors.append(
                {"code": "unsupported_endpoint", "message": "No executor runs this batch."}
            )
        if batch.status is not BatchStatus.VALIDATING:
            return  # cancelled meanwhile
        if errors:
            batch.errors = errors
            batch.moved(BatchStatus.FAILED, self.now())
        else:
            batch.moved(BatchStatus.IN_PROGRESS, self.now())
        await self.store.save_batch(batch)

    async def _execute(self, active: _Active) -> None:
        batch = active.batch
        if self.now() >= batch.expires_at:
            await self._finalize(batch, BatchStatus.EXPIRED)
            return
        executor = self.executor_for(batch)
        assert executor is not None  # validation checked it
        done = await self.store.recorded(batch.id)
        pending = [line async for line in self._lines(batch) if line.number not in done]
        tenant: Tenant | LeapError
        try:
            tenant = await self._tenant_of(batch.tenant)
        except LeapError as refused:
            tenant = refused

        async def record(result: LineResult) -> None:
            await self.store.record(batch.id, result)

        run = BatchRun(batch, tenant, pending, record, active.stop)
        task = asyncio.create_task(executor.execute(run))
        expired = asyncio.create_task(active.expire.wait())
        try:
            await asyncio.wait((task, expired), return_when=asyncio.FIRST_COMPLETED)
        finally:
            expired.cancel()
            if not task.done():
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if active.expire.is_set() and batch.status is not BatchStatus.CANCELLING:
            await self._finalize(batch, BatchStatus.EXPIRED)
        elif batch.status is BatchStatus.IN_PROGRESS:
            batch.moved(BatchStatus.FINALIZING, self.now())
            await self.store.save_batch(batch)

    def _lines(self, batch: BatchRecord) -> AsyncIterator[BatchLine]:
        return read_lines(
            self.store.read_file(batch.input_file_id), max_line_bytes=self._max_line_bytes
        )

    async def _finalize(self, batch: BatchRecord, status: BatchStatus) -> None:
        """Write the output and error files and end the batch in ``status``, in one step."""
        kept = await self.store.load_batch(batch.id)
        if kept is not None:
            batch.completed, batch.failed = kept.completed, kept.failed
        now = self.now()
        ttl = batch.output_ttl or self._file_ttl
        output = _FileWriter(self.store.scratch())
        errors = _FileWriter(self.store.scratch())
        answered: set[int] = set()
        try:
            async for result in self.store.results(batch.id):
                answered.add(result.line)
                await (output if result.ok else errors).write(result.text)
            unanswered = _UNANSWERED.get(status)
            if unanswered is not None:
                code, message = unanswered
                async for line in self._lines(batch):
                    if line.number not in answered:
                        await errors.write(unanswered_line(line.custom_id, code, message))
                        batch.failed += 1
            files: list[NewFile] = []
            for writer, kind in ((output, "output"), (errors, "error")):
                size = await writer.close()
                if writer.lines:
                    record = FileRecord(
                        file_id(),
                        batch.owner,
                        f"{batch.id}_{kind}.jsonl",
                        "batch_output",
                        size,
                        now,
                        now + ttl,
                        writer.lines,
                    )
                    files.append((record, writer.path))
                    if kind == "output":
                        batch.output_file_id = record.id
                    else:
                        batch.error_file_id = record.id
            batch.moved(status, now)
            await self.store.finish(batch, files)
        finally:
            for writer in (output, errors):
                await writer.discard()
        logger.info(
            "batch %s %s: %d completed, %d failed",
            batch.id,
            status.value,
            batch.completed,
            batch.failed,
        )

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(self._poll)
            now = self.now()
            for active in list(self._active.values()):
                if now >= active.batch.expires_at:
                    active.expire.set()
            try:
                await self.store.expire_files(now)
            except LeapError as error:
                logger.warning("expired files not removed: %s", error.message)


class _FileWriter:
    """JSONL lines written to a scratch file, a megabyte at a time."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lines = 0
        self._size = 0
        self._buffer: list[bytes] = []
        self._buffered = 0
        self._file: anyio.AsyncFile[bytes] | None = None

    async def write(self, text: str) -> None:
        data = text.encode() + b"\n"
        self._buffer.append(data)
        self._buffered += len(data)
        self.lines += 1
        if self._buffered >= _FLUSH_BYTES:
            await self._flush()

    async def _flush(self) -> None:
        if not self._buffer:
            return
        if self._file is None:
            self._file = await anyio.open_file(self.path, "wb")
        data = b"".join(self._buffer)
        await self._file.write(data)
        self._size += len(data)
        self._buffer.clear()
        self._buffered = 0

    async def close(self) -> int:
        """Write what is left; the file's size."""
        await self._flush()
        if self._file is not None:
            await self._file.aclose()
            self._file = None
        return self._size

    async def discard(self) -> None:
        """Remove the scratch file, if it was not taken."""
        await self.close()
        await anyio.to_thread.run_sync(lambda: self.path.unlink(missing_ok=True))
