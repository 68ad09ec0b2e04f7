"""How a batch's lines get answered: ``BatchExecutor``, the seam, and ``DispatchExecutor``,
which sends each line through the gateway's own dispatcher.

The runner owns a batch's life (statuses, window, cancel, output files); an executor only
answers lines and hands each answer to ``BatchRun.record``, which keeps it durably before it
counts, and keeps its own progress on the batch with ``BatchRun.keep``. ``NativeExecutor``
(``native.py``: a batch handed over to a provider's own batch API at its batch price)
implements the same protocol.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..exceptions import BudgetExceededError, LeapError
from ..outcome import Outcome, OutcomeSink
from ..tenants.policy import PRIORITY_MIN, Tenant
from .lines import BatchLine
from .objects import BatchRecord, LineResult, answer_line, error_line

__all__ = [
    "EXECUTED_BY",
    "GATEWAY",
    "INITIAL_RETRY_DELAY",
    "OPERATIONS",
    "TRANSIENT_STATUSES",
    "BatchExecutor",
    "BatchRun",
    "DispatchExecutor",
    "LineHandler",
    "executed_by",
    "transient",
]

# A line's body, its outcome and its owner -> the answer's JSON bytes; raises a LeapError.
LineHandler = Callable[[dict[str, Any], Outcome, str | None], Awaitable[bytes]]
# Errors a batch waits out and tries again (the providers are busy, limited or failing now);
# any other error is the line's answer, in the error file.
TRANSIENT_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504})
INITIAL_RETRY_DELAY = 0.5
# The batch's metadata key saying who answered its lines: GATEWAY, or a provider's own batch
# API ("openai (native batch)").
EXECUTED_BY = "leapasgi_executed_by"
GATEWAY = "gateway"
# Each endpoint's GenAI operation and API, for the access log and metrics.
OPERATIONS = {
    "/v1/chat/completions": ("chat", "chat_completions"),
    "/v1/responses": ("chat", "responses"),
    "/v1/embeddings": ("embeddings", "embeddings"),
}


def transient(error: LeapError) -> bool:
    """Whether a line failing with ``error`` should be tried again later: a spent budget
    stays spent, the rest of these pass."""
    if isinstance(error, BudgetExceededError) and error.code == "budget_exceeded":
        return False
    return error.http_status in TRANSIENT_STATUSES


def executed_by(batch: BatchRecord, who: str, *, replacing: bool = False) -> bool:
    """Note in the batch's metadata who answers its lines (unless it names someone already
    and not ``replacing``); False when nothing changed."""
    metadata = batch.metadata if batch.metadata is not None else {}
    if metadata.get(EXECUTED_BY) == who or (EXECUTED_BY in metadata and not replacing):
        return False
    metadata[EXECUTED_BY] = who
    batch.metadata = metadata
    return True


async def _kept_nowhere() -> bool:
    return True


@dataclass(slots=True)
class BatchRun:
    """One run of a batch: the lines still to answer, who they are answered for (or the error
    every line gets, when that tenant may no longer call), and where answers go."""

    batch: BatchRecord
    tenant: Tenant | LeapError
    lines: Sequence[BatchLine]
    record: Callable[[LineResult], Awaitable[None]]
    # Set when the batch is cancelled: no new line starts; lines in flight finish.
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    # The lines already recorded (by an earlier run, or before a restart).
    done: frozenset[int] = frozenset()
    # Keeps the batch's record as it is now (the executor's progress: its metadata,
    # ``handover`` and ``progress``); False once the batch ended elsewhere.
    keep: Callable[[], Awaitable[bool]] = _kept_nowhere


class BatchExecutor(Protocol):
    """A way of answering a batch's lines."""

    # Kept on the batch ("gateway"), so a restart resumes it the same way.
    name: str

    def accepts(self, batch: BatchRecord) -> bool:
        """Whether this executor runs ``batch``."""
        ...

    async def execute(self, run: BatchRun) -> None:
        """Answer ``run.lines``, recording each; return when every line is recorded, or,
        once ``run.stop`` is set, when the lines in flight are (a cancelling batch is
        executed with ``stop`` set, to end what was started elsewhere). Cancelled when the
        batch's window ends (lines not recorded are then reported as expired), its lease is
        lost, or the runner closes."""
        ...


class DispatchExecutor:
    """Each line as an interactive request of its endpoint, through routing, failover,
    limits and the tenant's budget, at ``PRIORITY_MIN`` in every provider's line; at most
    ``concurrency`` lines at once over all batches."""

    name = "gateway"

    def __init__(
        self,
        handlers: Mapping[str, LineHandler],
        *,
        sink: OutcomeSink | None,
        concurrency: int,
        max_delay: float,
    ) -> None:
        self._handlers = handlers
        self._sink = sink
        self._slots = asyncio.Semaphore(concurrency)
        self._max_delay = max_delay

    def accepts(self, batch: BatchRecord) -> bool:
        return batch.endpoint in self._handlers

    async def execute(self, run: BatchRun) -> None:
        if not run.stop.is_set() and executed_by(run.batch, GATEWAY):
            await run.keep()
        async with asyncio.TaskGroup() as group:
            for line in run.lines:
                await self._slots.acquire()
                if run.stop.is_set():
                    self._slots.release()
                    break
                group.create_task(self._answer(run, line))

    async def _answer(self, run: BatchRun, line: BatchLine) -> None:
        try:
            delay = min(INITIAL_RETRY_DELAY, self._max_delay)
            while True:
                result, wait = await self._attempt(run, line)
                if result is not None:
                    await run.record(result)
                    return
                # Tried again later, unless the batch is cancelled meanwhile.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(min(max(delay, wait), self._max_delay)):
                        await run.stop.wait()
                if run.stop.is_set():
                    return
                delay = min(delay * 2, self._max_delay)
        finally:
            self._slots.release()

    async def _attempt(self, run: BatchRun, line: BatchLine) -> tuple[LineResult | None, float]:
        """The line's answer, or None and the seconds to wait before trying it again."""
        operation, api = OPERATIONS[line.url]
        with Outcome(operation, api=api, sink=self._sink) as outcome:
            tenant = run.tenant
            if isinstance(tenant, LeapError):
                outcome.failed(tenant)
                return _failed(line, tenant, outcome), 0.0
            outcome.tenant = tenant
            outcome.priority = PRIORITY_MIN
            try:
                body = await self._handlers[line.url](line.body, outcome, run.batch.owner)
            except LeapError as error:
                outcome.failed(error)
                if transient(error):
                    return None, error.retry_after or 0.0
                return _failed(line, error, outcome), 0.0
            outcome.sent = True
            text = answer_line(line.custom_id, 200, outcome.request_id, body)
            return LineResult(
                line.number,
                text,
                True,
                outcome.prompt_tokens,
                outcome.completion_tokens,
                outcome.cached_tokens,
            ), 0.0


def _failed(line: BatchLine, error: LeapError, outcome: Outcome) -> LineResult:
    text = error_line(line.custom_id, error.http_status, outcome.request_id, error.to_body())
    return LineResult(line.number, text, False)
