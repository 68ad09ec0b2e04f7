"""``NativeExecutor``: a batch handed over to its provider's own batch API (OpenAI's Files and
Batches) at that provider's batch price, instead of each line going through the gateway.

It takes a batch (``[batches] native = true``) when every line names one model whose first
route, as routing would choose it for the batch's tenant, is an active provider whose preset has
a native batch API and a batch rate in the price table; any other batch goes to the gateway's
own run (``DispatchExecutor``), which it hands on to.

A handover's stages, each kept in the batch's ``handover`` before the next is taken, so that a
restart, or another replica holding the lease, continues the same upstream batch::

    chosen -> uploaded (input file) -> created (upstream batch; found again by its input
    file after a create whose effect is unknown) -> polled (progress shown) -> stored (every
    answer recorded once, costed at the batch price) -> upstream files deleted

Lines the upstream did not answer (missing from its files, or never run) and every line of an
upstream batch that failed (its validation: an enqueued-token limit, say) then run through the
gateway, noted in the batch's metadata. A cancel, or the gateway's window closing
(``WINDOW_MARGIN`` before its end), cancels the upstream batch; what it answered is kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any

from ..clock import Clock
from ..exceptions import LeapError
from ..native import WireProtocol
from ..outcome import Outcome, OutcomeSink
from ..providers.batch_api import BatchAPIClient, native_batch_support, poll_delay
from ..providers.batch_results import BatchResult, ResultTally
from ..providers.batch_wire import BatchStatus as UpstreamStatus
from ..providers.batch_wire import InputLine, UpstreamBatch
from ..providers.settings import ProviderSettings
from ..registry import ProviderStatus, Registry
from ..routing import Route, RouteTable
from ..tenants.policy import PRIORITY_MIN, Tenant
from ..tenants.pricing import PriceTable, batch_price, cost
from ..trail import OK, Attempt
from .executor import (
    GATEWAY,
    OPERATIONS,
    BatchRun,
    DispatchExecutor,
    executed_by,
    transient,
)
from .lines import BatchLine
from .objects import MAX_ERRORS_SHOWN, BatchRecord, LineResult, answer_line

__all__ = [
    "BATCH_RATE",
    "FALLBACK",
    "NATIVE",
    "NATIVE_ENDPOINTS",
    "UPSTREAM_BATCH",
    "WINDOW_MARGIN",
    "NativeExecutor",
    "SettingsOf",
    "custom_id",
]

logger = logging.getLogger("leapasgi.batches")

# Metadata keys (besides EXECUTED_BY, "<provider> (native batch)"): the upstream batch's id,
# the batch rate its answers are priced at, and what the gateway ran itself, and why.
UPSTREAM_BATCH = "leapasgi_upstream_batch"
BATCH_RATE = "leapasgi_batch_rate"
FALLBACK = "leapasgi_fallback"
NATIVE = "native"
# Endpoints handed over. Not /v1/responses: the gateway keeps each answer of a Responses line
# for previous_response_id, and a line may follow one of those; the upstream has neither.
NATIVE_ENDPOINTS = {
    "/v1/chat/completions": WireProtocol.CHAT_COMPLETIONS,
    "/v1/embeddings": WireProtocol.EMBEDDINGS,
}
# The upstream batch is cancelled this long before the gateway's window ends, so that what it
# answered is collected (a cancel settles within minutes) and the rest run here meanwhile.
WINDOW_MARGIN = 3600.0
# Tries at reading a finished upstream batch's files before the lines left run here.
MAX_DOWNLOADS = 5
# Seconds a cancel sent as the window ends (the executor being cancelled) may take.
CANCEL_TIMEOUT = 10.0

# A provider's name -> its settings, when it is an OpenAI-compatible upstream.
SettingsOf = Callable[[str], ProviderSettings | None]
Account = Callable[[Outcome], Awaitable[None]]


def custom_id(line: int) -> str:
    """The id a line carries upstream: its line number (the caller's custom_id stays here)."""
    return f"line-{line}"


@dataclass(frozen=True, slots=True)
class _Deps:
    """What a handover uses besides its client."""

    gateway: DispatchExecutor
    prices: PriceTable
    account: Account
    sink: OutcomeSink | None
    clock: Clock


@dataclass(frozen=True, slots=True)
class _Choice:
    provider: str
    preset: str
    model: str
    rate: float


class NativeExecutor:
    """Hands batches over to their provider's batch API when ``enabled`` and they fit; runs
    the others, and the lines a handover left, with ``gateway``. A gateway service: ``aclose``
    closes its upstream connections."""

    name = NATIVE

    def __init__(
        self,
        gateway: DispatchExecutor,
        *,
        enabled: bool,
        routes: RouteTable,
        registry: Registry,
        prices: PriceTable,
        settings_of: SettingsOf,
        account: Account,
        sink: OutcomeSink | None,
        clock: Clock,
    ) -> None:
        self._gateway = gateway
        self._enabled = enabled
        self._routes = routes
        self._registry = registry
        self._prices = prices
        self._settings_of = settings_of
        self._clock = clock
        self._deps = _Deps(gateway, prices, account, sink, clock)
        self._clients: dict[str, BatchAPIClient] = {}
        # Clients of settings since replaced, closed with the rest.
        self._retired: list[BatchAPIClient] = []

    async def start(self) -> None:
        return None

    async def aclose(self) -> None:
        clients, self._clients = [*self._clients.values(), *self._retired], {}
        self._retired = []
        for client in clients:
            await client.aclose()

    def accepts(self, batch: BatchRecord) -> bool:
        # A batch it took is resumed by it even once handovers are off: it may be upstream.
        if batch.executor == self.name:
            return True
        return self._enabled and self._gateway.accepts(batch)

    async def execute(self, run: BatchRun) -> None:
        batch = run.batch
        state = batch.handover
        if state is None:
            if run.stop.is_set():
                return  # cancelled before anything was handed over
            choice = self._choose(run)
            if choice is None:
                batch.executor = GATEWAY
                await self._gateway.execute(run)
                return
            state = batch.handover = {
                "provider": choice.provider,
                "preset": choice.preset,
                "model": choice.model,
                "rate": choice.rate,
            }
            executed_by(batch, f"{choice.provider} (native batch)")
            _note(batch, BATCH_RATE, f"{choice.rate:g}")
            if not await run.keep():
                return
        client = self._client(state["provider"])
        if client is None:
            logger.error(
                "batch %s: provider %r of its handover is gone; the gateway runs its lines",
                batch.id,
                state["provider"],
            )
            await _fall_back(self._deps, run, run.lines, "its provider is no longer configured")
            return
        try:
            await _Handover(self._deps, run, state, client).run()
        except asyncio.CancelledError:
            # The window ended (not a lost lease, not a shutdown): stop the upstream batch.
            upstream = state.get("batch")
            if upstream and not state.get("cancelled") and self._clock.time() >= batch.expires_at:
                with contextlib.suppress(LeapError, TimeoutError):
                    async with asyncio.timeout(CANCEL_TIMEOUT):
                        await client.cancel(upstream)
            raise

    # -- the choice ---------------------------------------------------------------------

    def _choose(self, run: BatchRun) -> _Choice | None:
        """Where the batch goes, if it is handed over at all."""
        tenant, batch = run.tenant, run.batch
        protocol = NATIVE_ENDPOINTS.get(batch.endpoint)
        if not self._enabled or protocol is None or not isinstance(tenant, Tenant) or run.done:
            return None
        models = {line.body.get("model") for line in run.lines}
        if len(models) != 1:
            return None
        model = models.pop()
        if not isinstance(model, str) or not tenant.policy.allows(model):
            return None
        # A budget is checked line by line as the gateway runs them; a handover cannot stop.
        if tenant.policy.budget is not None:
            return None
        route = self._first(model)
        if route is None:
            return None
        entry = self._registry.get(route.provider)
        preset = entry.settings.preset
        if not native_batch_support(preset) or protocol not in entry.capabilities.protocols:
            return None
        assert preset is not None
        rate = self._prices.batch_rate(preset)
        price = self._prices.batch_price_of(route.model, service=preset, provider=route.provider)
        if rate is None or price is None or self._client(route.provider) is None:
            return None
        return _Choice(route.provider, preset, route.model, rate)

    def _first(self, model: str) -> Route | None:
        """The route routing tries first for ``model``: aliases in their order, else by
        priority, among active providers."""
        alias = self._routes.aliases.get(model)
        ranked: list[tuple[int, int, Route]] = []
        for position, route in enumerate(self._routes.targets(model)):
            entry = self._registry.get(route.provider)
            if entry.status is ProviderStatus.ACTIVE:
                rank = position if alias is not None else entry.settings.priority
                ranked.append((rank, position, route))
        return min(ranked, key=lambda r: (r[0], r[1]))[2] if ranked else None

    def _client(self, provider: str) -> BatchAPIClient | None:
        settings = self._settings_of(provider) if provider in self._registry else None
        if settings is None:
            return None
        client = self._clients.get(provider)
        if client is None or client.settings is not settings:
            if client is not None:
                self._retired.append(client)
            client = self._clients[provider] = BatchAPIClient(settings)
        return client


async def _fall_back(deps: _Deps, run: BatchRun, lines: Iterable[BatchLine], why: str) -> None:
    """Run ``lines`` through the gateway, saying so in the batch's metadata."""
    left = list(lines)
    if not left or run.stop.is_set():
        return
    _note(run.batch, FALLBACK, f"{len(left)} lines ran through the gateway: {why}")
    if not await run.keep():
        return
    await deps.gateway.execute(replace(run, lines=left))


async def _answered(
    deps: _Deps, run: BatchRun, state: dict[str, Any], line: BatchLine, result: BatchResult
) -> LineResult:
    """A line the upstream answered: its output (or error) line; an answer is accounted to
    the batch's tenant at the batch price."""
    body = json.dumps(result.body, separators=(",", ":"), ensure_ascii=False).encode()
    status = result.status_code or 200
    if not result.ok:
        request_id = result.request_id or "req_" + secrets.token_hex(12)
        text = answer_line(line.custom_id, status, request_id, body)
        return LineResult(line.number, text, False)
    tokens = _usage(result.body)
    operation, api = OPERATIONS[run.batch.endpoint]
    with Outcome(operation, api=api, sink=deps.sink) as outcome:
        if isinstance(run.tenant, Tenant):
            outcome.tenant = run.tenant
        outcome.model = str(line.body.get("model"))
        outcome.priority = PRIORITY_MIN
        outcome.upstream_request_id = result.request_id
        outcome.trail.attempts.append(Attempt(state["provider"], state["model"], OK, status))
        outcome.trail.notes.append(f"native batch {state.get('batch')}")
        outcome.prompt_tokens, outcome.completion_tokens, outcome.cached_tokens = tokens
        price = deps.prices.price_of(state["model"], state["provider"])
        if price is None:
            logger.warning("batch %s: no price for %s", run.batch.id, state["model"])
            outcome.cost_usd = 0.0
        else:
            outcome.cost_usd = cost(batch_price(price, float(state["rate"])), *tokens)
        await deps.account(outcome)
        outcome.sent = True
        text = answer_line(line.custom_id, status, outcome.request_id, body)
    return LineResult(line.number, text, True, *tokens)


class _Handover:
    """One run of a handed-over batch: from wherever its ``state`` says it stopped."""

    def __init__(
        self, deps: _Deps, run: BatchRun, state: dict[str, Any], client: BatchAPIClient
    ) -> None:
        self._deps = deps
        self._run = run
        self._state = state
        self._client = client
        self._clock = deps.clock
        self._recorded: set[int] = set()

    async def run(self) -> None:
        run, state = self._run, self._state
        if state.get("stage") != "stored":
            if state.get("batch") is None and not await self._create():
                return
            upstream = await self._follow()
            if upstream is None:
                return
            if upstream.status is UpstreamStatus.FAILED:
                await self._failed(upstream)
                return
            await self._collect(upstream)
            if not await run.keep():
                return
        await self._tidy()
        left = [line for line in run.lines if line.number not in self._recorded]
        await _fall_back(self._deps, run, left, "the upstream batch did not answer them")

    # -- create -------------------------------------------------------------------------

    async def _create(self) -> bool:
        """Upload the input file and create the upstream batch (once: a create whose effect
        is unknown is looked for before another); False when there is none to follow."""
        run, state, client = self._run, self._state, self._client
        batch = run.batch
        if state.get("input") is None:
            if run.stop.is_set():
                return False
            lines = [
                InputLine(custom_id(line.number), {**line.body, "model": state["model"]})
                for line in run.lines
            ]
            polls = 0
            while True:
                try:
                    uploaded = await client.upload(lines, endpoint=batch.endpoint)
                    break
                except LeapError as error:
                    if not transient(error):
                        await self._refused(
                            f"the upstream refused its input file ({error.message})"
                        )
                        return False
                    logger.warning("batch %s: upload failed: %s", batch.id, error.message)
                if not await self._wait(poll_delay(polls)):
                    return False
                polls += 1
            state["input"] = uploaded.id
            state["files"] = [uploaded.id]
            if not await run.keep():
                return False
        unsure = state.get("creating", False)
        polls = 0
        while True:
            if run.stop.is_set():
                await self._tidy()
                return False
            try:
                found = await client.find(state["input"]) if unsure else None
                if found is None:
                    state["creating"] = True  # from here a restart looks before creating
                    if not await run.keep():
                        return False
                    found = await client.create(
                        state["input"],
                        endpoint=batch.endpoint,
                        metadata={"leapasgi_batch": batch.id},
                    )
                break
            except LeapError as error:
                if not transient(error):
                    await self._refused(f"the upstream refused the batch ({error.message})")
                    return False
                logger.warning("batch %s: create failed: %s", batch.id, error.message)
                unsure = True
            if not await self._wait(poll_delay(polls)):
                return False
            polls += 1
        state["batch"] = found.id
        _note(batch, UPSTREAM_BATCH, found.id)
        return await run.keep()

    async def _refused(self, why: str) -> None:
        batch = self._run.batch
        logger.warning("batch %s: not handed over: %s", batch.id, why)
        executed_by(batch, GATEWAY, replacing=True)
        self._state["stage"] = "stored"
        await self._tidy()
        await _fall_back(self._deps, self._run, self._run.lines, why)

    # -- follow -------------------------------------------------------------------------

    async def _follow(self) -> UpstreamBatch | None:
        """Poll the upstream batch until it has its results (or failed), showing its
        progress; cancel it on a cancel or as the window closes. None: the batch ended
        elsewhere."""
        run, state, client = self._run, self._state, self._client
        batch = run.batch
        polls = 0
        while True:
            closing = self._clock.time() >= batch.expires_at - WINDOW_MARGIN
            if (run.stop.is_set() or closing) and not state.get("cancelled"):
                try:
                    await client.cancel(state["batch"])
                except LeapError as error:  # a batch that has ended cannot be cancelled
                    logger.warning("batch %s: upstream cancel: %s", batch.id, error.message)
                state["cancelled"] = True
                if not await run.keep():
                    return None
            try:
                upstream = await client.retrieve(state["batch"])
            except LeapError as error:
                logger.warning("batch %s: upstream batch not read: %s", batch.id, error.message)
            else:
                if upstream.status.terminal:
                    return upstream
                counts = upstream.request_counts
                if counts is not None and (counts.completed, counts.failed) != batch.progress:
                    batch.progress = (counts.completed, counts.failed)
                    if not await run.keep():
                        return None
            await self._wait(poll_delay(polls), stoppable=not state.get("cancelled"))
            polls += 1

    async def _wait(self, seconds: float, *, stoppable: bool = True) -> bool:
        """Wait ``seconds`` on the clock, no later than the window's closing; sooner when
        the batch is cancelled (``stoppable``). False when it was."""
        run = self._run
        closing = run.batch.expires_at - WINDOW_MARGIN - self._clock.time()
        if closing > 0:
            seconds = min(seconds, closing)
        sleep = asyncio.ensure_future(self._clock.sleep(seconds))
        waits: set[asyncio.Future[Any]] = {sleep}
        if stoppable:
            waits.add(asyncio.ensure_future(run.stop.wait()))
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for wait in waits:
                wait.cancel()
        return not (stoppable and run.stop.is_set())

    # -- results ------------------------------------------------------------------------

    async def _collect(self, upstream: UpstreamBatch) -> None:
        """Record every answer in the upstream's files once; what cannot be read is noted
        in the batch's errors."""
        run, state, client = self._run, self._state, self._client
        batch = run.batch
        lines = {custom_id(line.number): line for line in run.lines}
        submitted = set(lines) | {custom_id(n) for n in run.done}
        problems: list[dict[str, Any]] = []
        for attempt in range(MAX_DOWNLOADS):
            kept = {custom_id(n) for n in run.done | self._recorded}
            tally: ResultTally = client.tally(submitted, kept=kept)
            try:
                async for result in client.results(upstream, tally):
                    line = lines.get(result.custom_id)
                    if line is None or result.status_code is None:
                        continue  # never run upstream (expired, cancelled): left for here
                    answer = await _answered(self._deps, run, state, line, result)
                    await run.record(answer)
                    self._recorded.add(line.number)
            except LeapError as error:
                logger.warning("batch %s: upstream results: %s", batch.id, error.message)
                if transient(error) and attempt + 1 < MAX_DOWNLOADS:
                    await self._wait(poll_delay(attempt), stoppable=False)
                    continue
                problems.append({"code": "upstream_results", "message": error.message})
            for problem in tally.problems:
                named = lines.get(problem.custom_id or "")
                entry: dict[str, Any] = {
                    "code": f"upstream_{problem.kind.value}",
                    "message": f"{problem.file} file: {problem.detail}",
                }
                if named is not None:
                    entry["line"] = named.number
                problems.append(entry)
            break
        if problems:
            batch.errors = ((batch.errors or []) + problems)[:MAX_ERRORS_SHOWN]
        state["files"] = [
            f
            for f in (*state.get("files", []), upstream.output_file_id, upstream.error_file_id)
            if f is not None
        ]
        state["stage"] = "stored"
        batch.progress = None

    async def _failed(self, upstream: UpstreamBatch) -> None:
        """The upstream batch failed (its validation): the gateway runs every line."""
        batch = self._run.batch
        issue = upstream.issues[0] if upstream.issues else None
        why = "the upstream batch failed"
        if issue is not None:
            why += f" ({issue.code or 'error'}: {issue.message})"
        self._state["stage"] = "stored"
        batch.progress = None
        executed_by(batch, GATEWAY, replacing=True)
        if not await self._run.keep():
            return
        await self._tidy()
        await _fall_back(self._deps, self._run, self._run.lines, why)

    async def _tidy(self) -> None:
        """Delete the upstream files the batch left (their answers are stored here)."""
        state, client = self._state, self._client
        files: list[str] = list(state.get("files", []))
        if not files:
            return
        left = []
        for file_id in files:
            try:
                await client.delete_file(file_id)
            except LeapError as error:
                if error.http_status != 404:
                    logger.warning("upstream file %s not deleted: %s", file_id, error.message)
                    left.append(file_id)
        state["files"] = left
        await self._run.keep()


def _note(batch: BatchRecord, key: str, value: str) -> None:
    metadata = batch.metadata if batch.metadata is not None else {}
    metadata[key] = value
    batch.metadata = metadata


def _usage(body: dict[str, Any] | None) -> tuple[int, int, int]:
    """(prompt, completion, cached) tokens of an answer: chat, embeddings or Responses."""
    usage = body.get("usage") if isinstance(body, dict) else None
    if not isinstance(usage, dict):
        return 0, 0, 0
    prompt = _count(usage.get("prompt_tokens", usage.get("input_tokens")))
    completion = _count(usage.get("completion_tokens", usage.get("output_tokens")))
    details = usage.get("prompt_tokens_details") or usage.get("input_tokens_details")
    cached = _count(details.get("cached_tokens")) if isinstance(details, dict) else 0
    return prompt, completion, min(cached, prompt)


def _count(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0
