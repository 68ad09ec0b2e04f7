"""``BatchRunner``: each batch's life, from ``validating`` to a final status, across restarts
and replicas.

A batch is driven by one task: its input file is checked against its endpoint, its lines not
yet recorded are handed to the executor that accepts it, and when they are all answered (or
it was cancelled, or its window ended) its output and error files are written and it ends.
Everything a batch has reached is in the store before the next step, so whichever runner
drives it next resumes where it stopped: lines recorded are never sent again.

Only the holder of a batch's lease drives it. Every ``poll_interval`` (on the injected clock)
a runner renews the leases of the batches it drives (a lease lasts ``LEASE_POLLS`` intervals),
looks at each batch's kept status (a cancel made on another replica stops it there), ends
those whose completion window passed, claims unfinished batches whose lease is free or
expired (a batch made on another replica, or left by one that died), up to ``max_running``,
and forgets expired files. A runner that cannot renew a lease before it lapses stops that
batch at once: its lines in flight are the only ones another runner may send again.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import secrets
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import anyio

from ..clock import Clock
from ..exceptions import LeapError, StoreUnavailableError
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

__all__ = ["LEASE_POLLS", "MIN_LEASE", "BatchRunner", "TenantOf"]

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
# A lease lasts this many poll intervals, and at least MIN_LEASE seconds: a runner misses a
# few renewals (a slow disk, a Redis hiccup) before another may take its batches.
LEASE_POLLS = 5
MIN_LEASE = 1.0
# Tries of a cancel whose batch changed status between reading and writing it.
_CANCEL_TRIES = 5
_CANCELLABLE = (BatchStatus.VALIDATING, BatchStatus.IN_PROGRESS)


def _holder() -> str:
    """This runner's name on the leases it holds: host, process, and 32 random bits."""
    return f"{socket.gethostname()[:64]}:{os.getpid()}:{secrets.token_hex(4)}"


@dataclass(slots=True)
class _Active:
    """A batch being driven: its record (the one copy every change goes through), until when
    its lease is known to be held, and what stops it: ``stop`` (cancelled: lines in flight
    finish), ``expire`` (the window ended) and ``halt`` (the lease was lost, or another runner
    ended the batch: drop everything now)."""

    batch: BatchRecord
    until: float
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    expire: asyncio.Event = field(default_factory=asyncio.Event)
    halt: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None


class BatchRunner:
    """Runs the batches kept in ``store`` with the first of ``executors`` that accepts each,
    at most ``max_running`` at once, each while it holds its lease."""

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
        max_running: int = 64,
        holder: str | None = None,
    ) -> None:
        self.store = store
        self.holder = holder or _holder()
        self._executors = executors
        self._tenant_of = tenant_of
        self._clock = clock
        self._file_ttl = int(file_ttl)
        self._poll = poll_interval
        self.lease = max(LEASE_POLLS * poll_interval, MIN_LEASE)
        self._max_line_bytes = max_line_bytes
        self._max_running = max_running
        self._active: dict[str, _Active] = {}
        # Batches this runner failed to drive (the store or the disk failed): left to others
        # until the clock's wall time given.
        self._resting: dict[str, float] = {}
        self._ticker: asyncio.Task[None] | None = None
        self._starting: asyncio.Lock | None = None
        self._started = False

    def now(self) -> int:
        """Unix seconds on the gateway's clock."""
        return int(self._clock.time())

    @property
    def running(self) -> list[str]:
        """The batches this runner drives now."""
        return list(self._active)

    async def start(self) -> None:
        """Open the store and claim the unfinished batches nobody holds; safe to call twice."""
        if self._started:
            return
        if self._starting is None:
            self._starting = asyncio.Lock()
        async with self._starting:
            if self._started:
                return
            await self.store.start()
            await self._tick()
            self._ticker = asyncio.create_task(self._run(), name="leapasgi-batch-ticker")
            self._started = True

    async def aclose(self) -> None:
        """Stop driving batches and give up their leases (another runner, or this one
        started again, resumes them)."""
        held = list(self._active)
        tasks = [a.task for a in self._active.values() if a.task is not None]
        if self._ticker is not None:
            tasks.append(self._ticker)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._active.clear()
        self._ticker = None
        if self._started:
            self._started = False
            try:
                for batch_id in held:
                    with contextlib.suppress(LeapError):
                        await self.store.release(batch_id, self.holder)
            finally:
                await self.store.aclose()

    def executor_for(self, batch: BatchRecord) -> BatchExecutor | None:
        """The executor that runs ``batch``: the one it was given, when it resumes, else the
        first that accepts it."""
        accepting = [e for e in self._executors if e.accepts(batch)]
        named = [e for e in accepting if e.name == batch.executor]
        return next(iter(named or accepting), None)

    async def submit(self, batch: BatchRecord) -> None:
        """Keep a new batch, and start it here when this runner has room (else a runner with
        room claims it)."""
        # A new batch goes to the first executor that takes it (its default name is not a
        # choice yet).
        executor = next((e for e in self._executors if e.accepts(batch)), None)
        if executor is not None:
            batch.executor = executor.name
        await self.store.add_batch(batch)
        if len(self._active) >= self._max_running:
            return
        now = self._clock.time()
        try:
            held = await self.store.claim(batch.id, self.holder, now=now, ttl=self.lease)
        except LeapError as error:
            logger.warning("batch %s not claimed (%s); left to the poll", batch.id, error.message)
            return
        if held:
            self._launch(batch, until=now + self.lease)

    async def cancel(self, batch_id: str, *, owner: str | None) -> BatchRecord | None:
        """Cancel ``owner``'s batch: ``cancelling`` while its lines in flight end, then
        ``cancelled``; a finished batch is returned as it is. None: no such batch. The
        runner driving it, here or on another replica, stops it when it sees the status."""
        for _ in range(_CANCEL_TRIES):
            batch = await self.store.get_batch(batch_id, owner=owner)
            if batch is None or batch.status not in _CANCELLABLE:
                return batch
            was = batch.status
            batch.moved(BatchStatus.CANCELLING, self.now())
            if await self.store.save_batch(batch, was=was):
                active = self._active.get(batch_id)
                if active is not None:
                    self._cancelled(active, batch)
                return batch
        return await self.store.get_batch(batch_id, owner=owner)

    def _launch(self, batch: BatchRecord, *, until: float) -> None:
        if batch.id in self._active:
            # Claimed twice here: a submit and the poll met on a new batch (the lease is
            # this runner's either way). One task drives it.
            return
        active = _Active(batch, until)
        if batch.status is BatchStatus.CANCELLING:
            active.stop.set()
        self._active[batch.id] = active
        active.task = asyncio.create_task(self._drive(active), name=f"leapasgi-{batch.id}")

    # -- the poll -----------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._poll)
            try:
                await self._tick()
            except Exception:  # never let one bad round end the polling for good
                logger.exception("batches: a poll failed")

    async def _tick(self) -> None:
        now = self._clock.time()
        for active in list(self._active.values()):
            await self._renew(active, now)
        await self._claim(now)
        try:
            await self.store.expire_files(int(now))
        except (LeapError, OSError) as error:
            logger.warning("expired files not removed: %s", _why(error))

    async def _renew(self, active: _Active, now: float) -> None:
        """Keep the lease, and follow the batch's kept status; halt it once the lease is
        lost (or may be: not renewed with less than a poll interval left)."""
        batch = active.batch
        if now >= batch.expires_at:
            active.expire.set()
        try:
            held = await self.store.claim(batch.id, self.holder, now=now, ttl=self.lease)
            if held:
                active.until = now + self.lease
                await self._follow(active)
        except LeapError as error:
            held = now < active.until - self._poll
            logger.warning("batch %s: lease not renewed (%s)", batch.id, error.message)
        if not held and not active.halt.is_set():
            logger.warning("batch %s: lease lost; stopped here", batch.id)
            active.halt.set()

    async def _follow(self, active: _Active) -> None:
        """What another runner may have done to the batch: cancelled it, or ended it."""
        kept = await self.store.load_batch(active.batch.id)
        if kept is None or kept.status.finished:
            active.halt.set()
        elif kept.status is BatchStatus.CANCELLING:
            self._cancelled(active, kept)

    def _cancelled(self, active: _Active, kept: BatchRecord) -> None:
        batch = active.batch
        if batch.status is not BatchStatus.CANCELLING:
            batch.status = BatchStatus.CANCELLING
            batch.times.update(kept.times)
        active.stop.set()

    async def _claim(self, now: float) -> None:
        """Claim unfinished batches nobody holds, while there is room."""
        room = self._max_running - len(self._active)
        self._resting = {k: v for k, v in self._resting.items() if v > now}
        if room <= 0:
            return
        try:
            found = await self.store.unleased(now, limit=room + len(self._resting))
            for batch_id in found:
                if room <= 0:
                    break
                if batch_id in self._active or batch_id in self._resting:
                    continue
                if not await self.store.claim(batch_id, self.holder, now=now, ttl=self.lease):
                    continue  # another runner was first
                batch = await self.store.load_batch(batch_id)
                if batch is None or batch.status.finished:
                    await self.store.release(batch_id, self.holder)
                    continue
                logger.info("batch %s claimed (%s)", batch_id, batch.status.value)
                self._launch(batch, until=now + self.lease)
                room -= 1
        except LeapError as error:
            logger.warning("batches not claimed: %s", error.message)

    # -- a batch's life -----------------------------------------------------------------

    async def _drive(self, active: _Active) -> None:
        batch = active.batch
        try:
            while not active.halt.is_set() and not batch.status.finished:
                if batch.status is BatchStatus.VALIDATING:
                    await self._validate(active)
                elif batch.status is BatchStatus.IN_PROGRESS:
                    await self._execute(active)
                elif batch.status is BatchStatus.FINALIZING:
                    await self._finalize(active, BatchStatus.COMPLETED)
                else:
                    # Cancelling: its executor ends what it started elsewhere (a batch handed
                    # over is cancelled upstream, and what was answered there kept) first.
                    await self._execute(active)
        except asyncio.CancelledError:
            self._active.pop(batch.id, None)
            raise
        except (LeapError, OSError) as error:
            # The store or the disk failed: the batch stays as it was kept; any runner (this
            # one after a rest) resumes it.
            logger.error("batch %s paused: %s", batch.id, _why(error))
            await self._rest(active)
        except Exception:
            logger.exception("batch %s paused", batch.id)
            await self._rest(active)
        else:
            self._active.pop(batch.id, None)
            if active.halt.is_set():
                return
            with contextlib.suppress(LeapError):
                await self.store.release(batch.id, self.holder)

    async def _rest(self, active: _Active) -> None:
        batch_id = active.batch.id
        self._active.pop(batch_id, None)
        self._resting[batch_id] = self._clock.time() + self.lease
        with contextlib.suppress(LeapError):
            await self.store.release(batch_id, self.holder)

    async def _move(self, active: _Active, status: BatchStatus) -> None:
        """Move the batch to ``status``, unless its kept status changed meanwhile (then the
        kept batch is followed)."""
        batch = active.batch
        was = batch.status
        batch.moved(status, self.now())
        if not await self.store.save_batch(batch, was=was):
            await self._reload(active)

    async def _reload(self, active: _Active) -> None:
        """Take the kept batch as it is (a write of ours found it changed)."""
        kept = await self.store.load_batch(active.batch.id)
        if kept is None or kept.status.finished:
            active.halt.set()
            return
        for name in (f.name for f in dataclasses.fields(BatchRecord)):
            setattr(active.batch, name, getattr(kept, name))
        if kept.status is BatchStatus.CANCELLING:
            active.stop.set()

    async def _validate(self, active: _Active) -> None:
        """Every line must call the batch's endpoint; else the batch fails, naming them."""
        batch = active.batch
        errors: list[dict[str, object]] = []
        try:
            async for line in self._lines(batch):
                if line.url != batch.endpoint and len(errors) < MAX_ERRORS_SHOWN:
                    errors.append(
                        {
                            "code": "mismatched_endpoint",
                            "message": f"The line's url {line.url} is not the batch's "
                            f"endpoint {batch.endpoint}.",
                            "param": "url",
                            "line": line.number,
                        }
                    )
        except FileNotFoundError:
            if await self.store.get_file(batch.input_file_id, owner=batch.owner) is not None:
                raise  # the bytes are away (a mount?), not the file: try again later
            errors.append({"code": "file_not_found", "message": "The input file was deleted."})
        if self.executor_for(batch) is None:
            errors.append(
                {"code": "unsupported_endpoint", "message": "No executor runs this batch."}
            )
        if batch.status is not BatchStatus.VALIDATING:
            return  # cancelled meanwhile
        if errors:
            batch.errors = errors
            await self._move(active, BatchStatus.FAILED)
        else:
            await self._move(active, BatchStatus.IN_PROGRESS)

    async def _execute(self, active: _Active) -> None:
        batch = active.batch
        cancelling = batch.status is BatchStatus.CANCELLING
        if not cancelling and self.now() >= batch.expires_at:
            await self._finalize(active, BatchStatus.EXPIRED)
            return
        executor = self.executor_for(batch)
        if executor is None:
            assert cancelling  # validation checked it
            await self._finalize(active, BatchStatus.CANCELLED)
            return
        done = await self.store.recorded(batch.id)
        pending = [line async for line in self._lines(batch) if line.number not in done]
        tenant: Tenant | LeapError
        try:
            tenant = await self._tenant_of(batch.tenant)
        except LeapError as refused:
            tenant = refused

        async def record(result: LineResult) -> None:
            # An answer in hand is kept once the store is back, while the lease holds.
            while True:
                try:
                    await self.store.record(batch.id, result)
                    return
                except StoreUnavailableError as error:
                    if active.halt.is_set():
                        raise
                    logger.warning("batch %s: answer not recorded yet: %s", batch.id, error.message)
                await asyncio.sleep(self._poll)

        async def keep() -> bool:
            while not active.halt.is_set():
                try:
                    if await self.store.save_batch(batch, was=batch.status):
                        return True
                    kept = await self.store.load_batch(batch.id)
                except StoreUnavailableError as error:
                    logger.warning("batch %s: progress not kept yet: %s", batch.id, error.message)
                    await asyncio.sleep(self._poll)
                    continue
                if kept is None or kept.status.finished:
                    active.halt.set()
                elif kept.status is BatchStatus.CANCELLING:
                    self._cancelled(active, kept)  # and kept again, cancelling
                else:
                    batch.status = kept.status
            return False

        run = BatchRun(batch, tenant, pending, record, active.stop, frozenset(done), keep)
        task = asyncio.create_task(executor.execute(run))
        ends = [asyncio.create_task(active.expire.wait()), asyncio.create_task(active.halt.wait())]
        try:
            await asyncio.wait((task, *ends), return_when=asyncio.FIRST_COMPLETED)
        finally:
            for end in ends:
                end.cancel()
            if not task.done():
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if active.halt.is_set():
            return
        if batch.status is BatchStatus.CANCELLING:
            await self._finalize(active, BatchStatus.CANCELLED)
        elif active.expire.is_set():
            await self._finalize(active, BatchStatus.EXPIRED)
        elif batch.status is BatchStatus.IN_PROGRESS:
            await self._move(active, BatchStatus.FINALIZING)

    def _lines(self, batch: BatchRecord) -> AsyncIterator[BatchLine]:
        return read_lines(
            self.store.read_file(batch.input_file_id), max_line_bytes=self._max_line_bytes
        )

    async def _finalize(self, active: _Active, status: BatchStatus) -> None:
        """Write the output and error files and end the batch in ``status``, in one step."""
        batch = active.batch
        kept = await self.store.load_batch(batch.id)
        if kept is None or kept.status is not batch.status:
            await self._reload(active)
            return
        batch.completed, batch.failed = kept.completed, kept.failed
        was = batch.status
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
            finished = await self.store.finish(batch, files, was=was)
        finally:
            for writer in (output, errors):
                await writer.discard()
        if not finished:
            await self._reload(active)
            return
        logger.info(
            "batch %s %s: %d completed, %d failed",
            batch.id,
            status.value,
            batch.completed,
            batch.failed,
        )


def _why(error: BaseException) -> str:
    if isinstance(error, LeapError):
        return error.message
    return f"{type(error).__name__}: {error}"


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
