"""The dispatcher: the one path every request takes through the gateway's providers.

    route -> order -> slot -> attempt -> classify -> retry or fail over -> one outcome

Plain calls and streams share the loop (``_run``); they differ only in what one attempt is. A
plain attempt is the whole call. A stream's attempt ends at its first batch: the stream is then
committed to that provider (``UpstreamStream``) and handed to its consumer, and nothing fails
over any more. Every attempt holds a ``Lease`` on its provider, which records the provider's
outcome exactly once; the request's own outcome (trail, usage, request id) goes into the
``Outcome`` the front door passed in.

New capabilities plug in here: another protocol is another kind of attempt, a cache lookup
comes before the loop, queueing and hedging live in the slot and attempt steps.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import random
from collections.abc import AsyncGenerator, Awaitable, Callable
from enum import Enum
from typing import Any, Generic, Literal, Protocol, TypeVar, cast

from .attempts import BUSY_RETRY_AFTER, Decision, RequestAttempts
from .balancing import Candidate, Strategy, order
from .clock import Clock
from .config import HealthConfig, RoutingConfig
from .deadline import Deadline
from .exceptions import (
    DeadlineExceededError,
    FirstByteTimeoutError,
    LeapError,
    ProviderBusyError,
    RateLimitError,
    StreamInterruptedError,
    UpstreamUnavailableError,
)
from .hedging import HedgeBudget, hedge_delay
from .hooks import HookChain, HookContext
from .limits import Acquired
from .native import EventBatch, NativeCall, NativeReply, ProtocolRequest, WireProtocol
from .outcome import Outcome
from .providers.base import NativeProvider
from .registry import Lease, ProviderEntry, ProviderStatus, Registry
from .retry import RetryPolicy
from .routing import Route, RouteTable
from .sessions import request_session
from .state import Bucket, RateLimiter, Reservation, StateBackend, StickyTable
from .streaming import ChunkBatch, chunks_from_completion
from .tenants.policy import Tenant
from .tokens import estimate_answer_tokens, estimate_prompt_tokens, estimate_tokens
from .tracing import Tracing
from .trail import RoutingTrail
from .types import ChatCompletion, ChatCompletionChunk, ChatCompletionRequest, Usage

__all__ = ["Admit", "Batch", "Dispatcher", "UpstreamStream", "for_route", "note_usage"]


class _Answer(Protocol):
    """What an attempt gives back: it knows the upstream's request id."""

    @property
    def request_id(self) -> str | None: ...


_T = TypeVar("_T", bound=_Answer)
_R = TypeVar("_R", bound=ChatCompletionRequest | ProtocolRequest)
# A stream's batches: chat chunks, or the events of a protocol spoken natively.
Batch = ChunkBatch | EventBatch
_B = TypeVar("_B", bound=Batch)
_OFF = (ProviderStatus.INACTIVE, ProviderStatus.MAINTENANCE)


class _Slot(Enum):
    TAKEN = "taken"
    FULL = "full"  # skipped: another provider may serve


def for_route(
    route: Route, request: ChatCompletionRequest, trail: RoutingTrail | None = None
) -> ChatCompletionRequest:
    """``request`` as the route's provider takes it: the model name it knows it by, and its
    parameter rules applied (what they changed is noted in ``trail``, once per provider)."""
    params = route.params
    if params is not None:
        adapted, changed = params.adapt(request, model=route.model)
        if changed:
            _note_adapted(trail, route, changed)
            return adapted
    if request.model == route.model:
        return request
    return request.model_copy(update={"model": route.model})


def native_for_route(
    route: Route, call: NativeCall, trail: RoutingTrail | None = None
) -> NativeCall:
    """``call`` as the route's provider takes it natively: its model name, and for a
    Responses body the sampling parameters its rules drop (noted like ``for_route``'s)."""
    call = call.for_model(route.model)
    params = route.params
    if params is None or call.protocol is not WireProtocol.RESPONSES:
        return call
    body, changed = params.adapt_responses(call.body)
    if not changed:
        return call
    _note_adapted(trail, route, changed)
    return NativeCall(call.protocol, body, call.headers, call.stream, call.endpoint)


def _note_adapted(trail: RoutingTrail | None, route: Route, changed: str) -> None:
    """What a provider's rules changed, in the trail once (retries send it again)."""
    if trail is not None:
        note = f"{route.provider}: {changed}"
        if note not in trail.notes:
            trail.notes.append(note)


class Admit(Protocol):
    """Checks a tenant's policy for a request and reserves what it limits (raises when it
    may not go)."""

    async def __call__(
        self,
        tenant: Tenant,
        request: ChatCompletionRequest | ProtocolRequest,
        model: str,
        outcome: Outcome,
        *,
        within: float,
    ) -> None: ...


# One attempt: (entry, route, the request, attempts, lease, started).
_Attempt = Callable[[ProviderEntry, Route, _R, RequestAttempts, Lease, float], Awaitable[_T]]


class Dispatcher:
    """Serves requests over the registry's providers: one deadline and one attempt budget per
    request, retries with backoff and Retry-After, failover, breakers and concurrency limits."""

    def __init__(
        self,
        registry: Registry,
        routes: RouteTable,
        *,
        routing: RoutingConfig,
        health: HealthConfig,
        state: StateBackend,
        clock: Clock,
        rng: random.Random,
    ) -> None:
        self._registry = registry
        self._routes = routes
        self._routing = routing
        self._health = health
        self._clock = clock
        self._rng = rng
        self._cursors: dict[str, itertools.count[int]] = {}
        self._policies: dict[int, RetryPolicy] = {}
        self._limiter: RateLimiter = state.limiter
        self._sticky: StickyTable = state.sticky
        # Hedged requests: on when routing.hedge_after is set (then a budget bounds them).
        self._hedging = routing.hedge_after is not None
        self.hedges = HedgeBudget(routing.hedge_budget)
        # The tenant's policy, checked and reserved before the loop (tenancy's ``admit``),
        # and the price of an answer (tenancy's ``price``), for its cost header.
        self.admit: Admit | None = None
        self.price: Callable[[Outcome], float | None] | None = None
        # Request hooks (GatewayCore's); None: no hook, and nothing is done for them.
        self.hooks: HookChain | None = None
        # Traces, when on: each attempt gets a span (``Tracing.traced``).
        self.tracing: Tracing | None = None

    def use_state(self, state: StateBackend) -> None:
        """Take rate limits and sticky sessions from ``state``."""
        self._limiter = state.limiter
        self._sticky = state.sticky

    async def complete(
        self, request: ChatCompletionRequest, outcome: Outcome, *, prefer: str | None = None
    ) -> ChatCompletion:
        """One completion from the best provider that can serve it; ``prefer`` names a
        provider to try first."""
        hooks = self.hooks
        context = None
        if hooks is None:
            completion = await self._run(
                request, request.model, self._routes.routes, outcome, prefer, self._complete
            )
        else:
            completion, context = await self._hooked(
                hooks, request, self._routes.routes, outcome, prefer, self._complete, _itself
            )
            if context.answered_by is not None:  # no provider: nothing used, nothing to pay
                await self._after(hooks, context, outcome, completion)
                return completion
            request = cast(ChatCompletionRequest, context.request)
        usage = completion.usage
        if usage is not None:
            note_usage(outcome, usage)
        elif self.price is not None:
            # No report: estimated, and marked as an estimate.
            outcome.prompt_tokens = estimate_prompt_tokens(request, 0)[0]
            outcome.completion_tokens = estimate_answer_tokens(completion)
            outcome.usage_estimated = True
        if self.price is not None:
            outcome.cost_usd = self.price(outcome)
        if hooks is not None and context is not None:
            await self._after(hooks, context, outcome, completion)
        return completion

    async def open_stream(
        self, request: ChatCompletionRequest, outcome: Outcome, *, prefer: str | None = None
    ) -> UpstreamStream[ChunkBatch]:
        """A stream committed to the first provider that sent a first batch; failures before
        it fail over."""
        outcome.stream = True
        hooks = self.hooks
        if hooks is None:
            return await self._run(
                request, request.model, self._routes.routes, outcome, prefer, self._open
            )
        stream, context = await self._hooked(
            hooks, request, self._routes.routes, outcome, prefer, self._open, self._answered
        )
        stream.hooked = (hooks, context)
        return stream

    async def exchange(
        self, request: ProtocolRequest, outcome: Outcome, *, prefer: str | None = None
    ) -> NativeReply | ChatCompletion:
        """One whole answer to a request in another protocol: the upstream's own answer from a
        provider that speaks it, else a chat completion to translate back."""
        hooks = self.hooks
        context = None
        answer: NativeReply | ChatCompletion
        if hooks is None:
            answer = await self._run(
                request, request.model, self._protocol_routes, outcome, prefer, self._exchange
            )
        else:
            answer, context = await self._hooked(
                hooks, request, self._protocol_routes, outcome, prefer, self._exchange, _itself
            )
            if context.answered_by is not None:
                await self._after(hooks, context, outcome, answer)
                return answer
        if isinstance(answer, NativeReply):
            if answer.usage is not None:
                outcome.prompt_tokens, outcome.completion_tokens, outcome.cached_tokens = (
                    answer.usage
                )
        elif answer.usage is not None:
            note_usage(outcome, answer.usage)
        if self.price is not None:
            outcome.cost_usd = self.price(outcome)
        if hooks is not None and context is not None:
            await self._after(hooks, context, outcome, answer)
        return answer

    async def open_exchange(
        self, request: ProtocolRequest, outcome: Outcome, *, prefer: str | None = None
    ) -> UpstreamStream[Batch]:
        """A stream in another protocol, committed at its first content: native events from a
        provider that speaks it, else chat chunks to translate."""
        outcome.stream = True
        hooks = self.hooks
        stream: UpstreamStream[Batch]
        if hooks is None:
            stream = await self._run(
                request, request.model, self._protocol_routes, outcome, prefer, self._open_exchange
            )
            return stream
        stream, context = await self._hooked(
            hooks,
            request,
            self._protocol_routes,
            outcome,
            prefer,
            self._open_exchange,
            self._answered,
        )
        stream.hooked = (hooks, context)
        return stream

    async def _hooked(
        self,
        hooks: HookChain,
        request: _R,
        routes_of: Callable[[_R, RoutingTrail], list[Route]],
        outcome: Outcome,
        prefer: str | None,
        attempt: _Attempt[_R, _T],
        answered: Callable[[ChatCompletion, HookContext], _T],
    ) -> tuple[_T, HookContext]:
        """``_run`` after the ``before`` hooks, with the request as they left it, or the
        answer a hook gave (made a ``_T`` by ``answered``); the ``on_error`` hooks see the
        error it ends with."""
        outcome.model = request.model
        context = hooks.context(request, outcome)
        try:
            answer = await hooks.before(context, outcome)
            changed = cast(_R, context.request)
            if answer is not None:
                outcome.request = changed
                outcome.settle()
                return answered(answer, context), context
            result = await self._run(changed, changed.model, routes_of, outcome, prefer, attempt)
        except LeapError as error:
            if outcome.error is None:  # a hook refused it: _run never saw it
                outcome.failed(error)
                outcome.settle()
            await hooks.error(context, error)
            raise
        return result, context

    def _answered(self, answer: ChatCompletion, context: HookContext) -> UpstreamStream[Any]:
        """A hook's answer to a streamed request, as a stream of chat chunks (translated to
        the request's protocol by its front door, as a chat-only provider's are)."""
        request = context.request
        chat = request.chat() if isinstance(request, ProtocolRequest) else request
        chunks = chunks_from_completion(answer, include_usage=chat.include_usage)
        clock = self._clock
        return UpstreamStream(
            _no_more(), ChunkBatch(chunks), None, None, clock=clock, started=clock.monotonic()
        )

    async def _after(
        self, hooks: HookChain, context: HookContext, outcome: Outcome, answer: Any
    ) -> None:
        """The ``after`` hooks; one that refuses the answer ends the request."""
        try:
            await hooks.after(context, outcome, answer)
        except LeapError as error:
            outcome.failed(error)
            await hooks.error(context, error)
            raise

    def _protocol_routes(self, request: ProtocolRequest, trail: RoutingTrail) -> list[Route]:
        protocol = request.native.protocol
        if not request.translatable:
            return self._routes.native_routes(request.model, protocol)
        native = self._routes.all_native(request.model, protocol)
        if native is not None:
            return native  # passes through everywhere: no chat form needed to route it
        return self._routes.routes(request.chat(), trail)

    async def _run(
        self,
        request: _R,
        model: str,
        routes_of: Callable[[_R, RoutingTrail], list[Route]],
        outcome: Outcome,
        prefer: str | None,
        attempt: _Attempt[_R, _T],
    ) -> _T:
        """Try routes until one attempt succeeds, and settle the request's outcome; raises
        the error the request ends with."""
        outcome.model = model
        outcome.request = request
        if self.tracing is not None:
            attempt = self.tracing.traced(attempt, outcome)
        session = None
        try:
            tenant = outcome.tenant
            if tenant is not None and tenant.policy.restricted and self.admit is not None:
                await self.admit(
                    tenant, request, model, outcome, within=self._routing.request_timeout
                )
            routes = routes_of(request, outcome.trail)
            if prefer is None and self._routes.sticky_anywhere and self._routes.is_sticky(model):
                session = outcome.session or request_session(request)
                if session is not None:
                    prefer = await self._sticky.get(session)
            attempts = self._plan(routes, model, outcome.trail, prefer)
            attempts.priority = outcome.priority
            hedge = self._hedge_delay(outcome, model, attempts) if self._hedging else None
            clock = self._clock
            while True:
                route = await attempts.next()
                if route is None:
                    raise attempts.exhausted_error()
                if hedge is not None:
                    answered = await self._hedged(route, request, attempts, attempt, hedge)
                    if answered is None:
                        continue
                    route, result = answered
                    break
                # The unhedged attempt, inline: the hot path makes no coroutine of its own.
                entry = self._registry.get(route.provider)
                if entry.rated or entry.limit is not None:
                    lease = await self._lease(entry, route, request, attempts)
                    if lease is None:
                        continue
                else:
                    lease = entry.lease(expires_at=attempts.deadline.at)
                started = clock.monotonic()
                try:
                    result = await attempt(entry, route, request, attempts, lease, started)
                    break
                except LeapError as error:
                    self._failed(route, entry, lease, error, started, attempts)
                except BaseException:
                    lease.abandoned()
                    raise
        except LeapError as error:
            outcome.failed(error)
            outcome.settle()
            raise
        outcome.upstream_request_id = result.request_id
        outcome.settle()
        if session is not None and route.provider != prefer:
            # The session's provider from now on (its first, or it moved on a failure).
            await self._sticky.set(session, route.provider, self._routing.sticky_ttl)
        return result

    def _hedge_delay(
        self, outcome: Outcome, model: str, attempts: RequestAttempts
    ) -> float | Literal["p95"] | None:
        """The hedge delay of this request, when it is hedged: the client asked
        (``x-leap-hedge: on``), or its model or alias is hedged and it did not say no; never
        for a tenant whose requests must not be duplicated, nor with one provider to go to."""
        wanted = outcome.hedge
        if wanted is False or (wanted is None and not self._routes.hedged(model)):
            return None
        tenant = outcome.tenant
        if (tenant is not None and not tenant.policy.hedge) or attempts.alternatives < 2:
            return None
        self.hedges.earn()
        attempts.hedging = True
        attempts.stream = outcome.stream
        return self._routing.hedge_after

    async def _hedged(
        self,
        route: Route,
        request: _R,
        attempts: RequestAttempts,
        attempt: _Attempt[_R, _T],
        after: float | Literal["p95"],
    ) -> tuple[Route, _T] | None:
        """``_try`` on ``route``; when it has produced nothing after the hedge delay, a second
        attempt on the next fresh route (within the hedge budget). The first to answer (for a
        stream, to produce content) wins and the other is cancelled at once; None when both
        failed."""
        delay = hedge_delay(after, self._registry.get(route.provider), stream=attempts.stream)
        first = asyncio.ensure_future(self._try(route, request, attempts, attempt))
        racing: dict[asyncio.Future[_T | None], Route] = {first: route}
        winner: asyncio.Future[_T | None] = first
        try:
            early, _ = await asyncio.wait((first,), timeout=delay)
            second = None if early else attempts.next_fresh()
            if second is None or not self.hedges.take():
                if second is not None:
                    attempts.put_back(second)
                result = await first
                return None if result is None else (route, result)
            attempts.record_hedge(second, delay)
            racing[asyncio.ensure_future(self._try(second, request, attempts, attempt))] = second
            pending: set[asyncio.Future[_T | None]] = set(racing)
            while pending:
                finished, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for task in finished:
                    result = task.result()  # the error a request ends with ends this one
                    if result is not None:
                        winner = task
                        return racing[task], result
            return None
        finally:
            await _discard(
                {t for t in racing if not t.done()},
                {t for t in racing if t.done() and t is not winner},
            )

    async def _try(
        self,
        route: Route,
        request: _R,
        attempts: RequestAttempts,
        attempt: _Attempt[_R, _T],
    ) -> _T | None:
        """One attempt on ``route`` as a task of its own (a hedged request's): its lease, the
        call; None when the provider was skipped or failed; raises the error the request ends
        with. A cancelled attempt (the hedge lost) lets go of its lease and is noted."""
        entry = self._registry.get(route.provider)
        if entry.rated or entry.limit is not None:
            lease = await self._lease(entry, route, request, attempts)
            if lease is None:
                return None
        else:
            lease = entry.lease(expires_at=attempts.deadline.at)
        started = self._clock.monotonic()
        try:
            return await attempt(entry, route, request, attempts, lease, started)
        except LeapError as error:
            self._failed(route, entry, lease, error, started, attempts)
            return None
        except asyncio.CancelledError:
            lease.abandoned()
            attempts.record_cancelled(route, self._clock.monotonic() - started)
            raise
        except BaseException:
            lease.abandoned()
            raise

    async def _lease(
        self, entry: ProviderEntry, route: Route, request: _R, attempts: RequestAttempts
    ) -> Lease | None:
        """A lease on a provider with rate or concurrency limits: its share of the limits and
        a slot first; None when it was skipped (noted in the trail)."""
        reserved = None
        if entry.rated and (buckets := entry.buckets(route.model)):
            reserved = await self._reserve(entry, route, buckets, request, attempts)
            if reserved is None:
                return None
        if entry.limit is not None:
            slot = await self._take_slot(entry, route, attempts)
            if slot is not _Slot.TAKEN:
                if reserved is not None:
                    self._limiter.settle(reserved, None)
                return None
        lease = entry.lease(expires_at=attempts.deadline.at)
        if reserved is not None:
            lease.reserved = (self._limiter, reserved)
        return lease

    def _failed(
        self,
        route: Route,
        entry: ProviderEntry,
        lease: Lease,
        error: LeapError,
        started: float,
        attempts: RequestAttempts,
    ) -> None:
        """An attempt failed: noted, and its lease ended as the provider's fault or the
        caller's; raises when the error is the request's answer."""
        latency = self._clock.monotonic() - started
        decision = attempts.record_failure(route, entry, error, latency)
        if decision is Decision.FINAL:
            lease.refused(error)
            raise attempts.final_error(error) from error
        lease.failed(error, latency)

    async def _reserve(
        self,
        entry: ProviderEntry,
        route: Route,
        buckets: tuple[Bucket, ...],
        request: ChatCompletionRequest | ProtocolRequest,
        attempts: RequestAttempts,
    ) -> Reservation | None:
        """Take the request's share of ``entry``'s rate limits; None when one is spent (the
        provider is skipped, and noted in the trail)."""
        tokens = estimate_tokens(request) if any(b.tpm for b in buckets) else 0
        granted = await self._limiter.reserve(buckets, tokens)
        if isinstance(granted, Reservation):
            return granted
        attempts.record_rate_limited(
            route,
            RateLimitError(
                f"Provider {entry.name!r} is at its rate limit for {route.model!r}",
                provider=entry.name,
                retry_after=max(1.0, math.ceil(granted)),
                code="rate_limit_exceeded",
            ),
        )
        return None

    async def _complete(
        self,
        entry: ProviderEntry,
        route: Route,
        request: ChatCompletionRequest,
        attempts: RequestAttempts,
        lease: Lease,
        started: float,
    ) -> ChatCompletion:
        deadline = attempts.deadline
        call = entry.provider.chat(for_route(route, request, attempts.trail), deadline=deadline)
        if entry.capabilities.honors_deadline:
            completion = await call  # it stops at the deadline by itself
        else:
            completion = await bounded(call, route.provider, deadline)
        latency = self._clock.monotonic() - started
        usage = completion.usage
        if usage is None:
            lease.succeeded(latency)
        else:
            lease.succeeded(
                latency,
                prompt_tokens=usage.prompt_tokens,
                completion_tokens=usage.completion_tokens,
            )
        attempts.record_success(route, latency)
        return completion

    async def _open(
        self,
        entry: ProviderEntry,
        route: Route,
        request: ChatCompletionRequest,
        attempts: RequestAttempts,
        lease: Lease,
        started: float,
    ) -> UpstreamStream[ChunkBatch]:
        batches = entry.provider.stream(
            for_route(route, request, attempts.trail), deadline=attempts.deadline
        )
        return await self._commit(entry, route, batches, attempts, lease, started)

    async def _exchange(
        self,
        entry: ProviderEntry,
        route: Route,
        request: ProtocolRequest,
        attempts: RequestAttempts,
        lease: Lease,
        started: float,
    ) -> NativeReply | ChatCompletion:
        deadline = attempts.deadline
        answer: NativeReply | ChatCompletion
        native = _speaker(entry, request)
        if native is not None:
            reply = native.send(
                native_for_route(route, request.native, attempts.trail), deadline=deadline
            )
            answer = await (
                reply
                if entry.capabilities.honors_deadline
                else bounded(reply, route.provider, deadline)
            )
            usage = answer.usage
            latency = self._clock.monotonic() - started
            if usage is None:
                lease.succeeded(latency)
            else:
                lease.succeeded(latency, prompt_tokens=usage[0], completion_tokens=usage[1])
            attempts.record_success(route, latency)
            return answer
        chat = _chat_form(request, attempts.trail, route)
        return await self._complete(entry, route, chat, attempts, lease, started)

    async def _open_exchange(
        self,
        entry: ProviderEntry,
        route: Route,
        request: ProtocolRequest,
        attempts: RequestAttempts,
        lease: Lease,
        started: float,
    ) -> UpstreamStream[Batch]:
        deadline = attempts.deadline
        native = _speaker(entry, request)
        batches: AsyncGenerator[Batch, None]
        if native is not None:
            batches = native.open(
                native_for_route(route, request.native, attempts.trail), deadline=deadline
            )
        else:
            chat = _chat_form(request, attempts.trail, route)
            batches = entry.provider.stream(
                for_route(route, chat, attempts.trail), deadline=deadline
            )
            # Translated, the protocol's preamble goes out with the first chunk: a chunk
            # carrying only the role is held back with it, so what fails before content
            # still fails over.
            return await self._commit(entry, route, batches, attempts, lease, started, held=True)
        return await self._commit(entry, route, batches, attempts, lease, started)

    async def _commit(
        self,
        entry: ProviderEntry,
        route: Route,
        batches: AsyncGenerator[_B, None],
        attempts: RequestAttempts,
        lease: Lease,
        started: float,
        *,
        held: bool = False,
    ) -> UpstreamStream[_B]:
        """The stream's first batch (with ``held``, its first with content), then the stream
        committed to this provider."""
        deadline = attempts.deadline
        bound = None if entry.capabilities.honors_deadline else deadline
        try:
            first = await self._first_batch(batches, route.provider, deadline, bound, held)
        except BaseException:
            await close_quietly(batches)
            raise
        stream = UpstreamStream(batches, first, lease, bound, clock=self._clock, started=started)
        attempts.record_success(route, stream.ttft)
        # From here the consumer holds the lease; if it never closes the stream, the
        # lease is reclaimed at the deadline (ProviderEntry.reclaim).
        entry.keep(lease)
        return stream

    async def _first_batch(
        self,
        batches: AsyncGenerator[_B, None],
        name: str,
        deadline: Deadline,
        bound: Deadline | None,
        held: bool = False,
    ) -> _B:
        limit = self._routing.first_token_timeout
        preamble: list[_B] = []
        try:
            while True:
                if limit and limit < deadline.remaining():
                    try:
                        async with asyncio.timeout(limit):
                            batch = await bounded(anext(batches), name, None)
                    except TimeoutError:
                        raise FirstByteTimeoutError(
                            f"Provider {name!r} sent no first token within {limit:g} s",
                            provider=name,
                        ) from None
                else:
                    batch = await bounded(anext(batches), name, bound)
                if batch.chunks:
                    if not held:
                        return batch
                    preamble.append(batch)
                    if has_content(batch):
                        return joined(preamble)
        except StopAsyncIteration:
            if preamble:
                return joined(preamble)
            raise StreamInterruptedError(
                f"Provider {name!r} ended the stream before its first chunk", provider=name
            ) from None

    async def _take_slot(
        self, entry: ProviderEntry, route: Route, attempts: RequestAttempts
    ) -> _Slot:
        """Take one of ``entry``'s slots, waiting in its line within the request's deadline;
        a provider that stays full is noted in the trail and skipped."""
        limit = entry.limit
        assert limit is not None
        if limit.try_acquire():
            return _Slot.TAKEN
        # A stream dropped without being closed may hold a slot past its deadline.
        if entry.reclaim(self._clock.monotonic()) and limit.try_acquire():
            return _Slot.TAKEN
        # In line by priority, then deadline; a request that could not be answered in time
        # even once served (its wait plus the provider's typical latency) is shed at once.
        deadline = attempts.deadline
        clock = self._clock
        waiting = clock.monotonic()
        got = await limit.acquire(
            deadline.remaining(),
            priority=attempts.priority,
            deadline=deadline.at,
            service_time=service_time(entry),
        )
        if got is Acquired.TAKEN or got is Acquired.TIMED_OUT:  # it waited in line
            attempts.trail.queued += clock.monotonic() - waiting
        if got is Acquired.TAKEN:
            return _Slot.TAKEN
        if got is Acquired.SHED:
            why = "could not answer within the request's time (shed)"
        elif got is Acquired.TIMED_OUT:
            why = "kept the request in line until too little of its time was left"
        else:
            why = (
                f"is at its concurrency limit ({limit.max_in_flight} in flight, "
                f"{limit.max_waiting} waiting)"
            )
        attempts.record_overflow(
            route,
            ProviderBusyError(
                f"Provider {entry.name!r} {why}",
                provider=entry.name,
                retry_after=BUSY_RETRY_AFTER,
            ),
        )
        # Shed or given up in line: another provider may still answer in time.
        return _Slot.FULL

    def _plan(
        self, routes: list[Route], model: str, trail: RoutingTrail, prefer: str | None
    ) -> RequestAttempts:
        """The request's routes, the usable ones ordered by the balancing strategy (the
        preferred provider first), with its deadline and attempt budget."""
        registry = self._registry
        now = self._clock.monotonic()
        if len(routes) == 1:
            # One candidate: nothing to balance (the common case of a model one provider serves).
            off = registry.get(routes[0].provider).status in _OFF
            return self._attempts([] if off else routes, now, trail)
        alias = self._routes.aliases.get(model)
        strategy = Strategy(
            alias.strategy if alias is not None and alias.strategy else self._routing.strategy
        )
        # Least-latency probes a provider without a latency sample for as long as an ejection
        # lasts, so one that looked slow once is found again when it recovers.
        probe_after = self._health.base_ejection if strategy is Strategy.LEAST_LATENCY else None
        usable: dict[str, Route] = {}
        candidates = []
        for position, route in enumerate(routes):
            entry = registry.get(route.provider)
            if entry.status in _OFF:
                continue
            usable[route.provider] = route
            sampled_at = entry.sampled_at
            candidates.append(
                Candidate(
                    route.provider,
                    # An alias lists its targets in preference order; that order is the priority.
                    priority=position if alias is not None else entry.settings.priority,
                    weight=entry.settings.weight,
                    latency=entry.stats.ewma.value,
                    in_flight=entry.stats.in_flight,
                    probe=probe_after is not None
                    and entry.stats.in_flight == 0
                    and (sampled_at is None or now - sampled_at >= probe_after),
                )
            )
        cursor = next(self._cursors.setdefault(model, itertools.count()))
        ranked = order(strategy, candidates, rng=self._rng, cursor=cursor)
        ordered = [usable[candidate.name] for candidate in ranked]
        if prefer is not None:
            ordered.sort(key=lambda route: route.provider != prefer)
        return self._attempts(ordered, now, trail)

    def _attempts(self, routes: list[Route], now: float, trail: RoutingTrail) -> RequestAttempts:
        return RequestAttempts(
            routes,
            registry=self._registry,
            clock=self._clock,
            rng=self._rng,
            policy=self._policy,
            max_attempts=self._routing.max_attempts,
            deadline=Deadline(now + self._routing.request_timeout, self._clock),
            trail=trail,
        )

    def _policy(self, max_retries: int) -> RetryPolicy:
        policy = self._policies.get(max_retries)
        if policy is None:
            routing = self._routing
            policy = self._policies[max_retries] = RetryPolicy(
                max_retries=max_retries,
                initial_delay=routing.retry_initial_delay,
                max_delay=routing.retry_max_delay,
                max_retry_after=routing.max_retry_after,
            )
        return policy


def _speaker(entry: ProviderEntry, request: ProtocolRequest) -> NativeProvider | None:
    """The provider, when it speaks the request's protocol natively."""
    native = entry.native
    if native is not None and request.native.protocol in entry.capabilities.protocols:
        return native
    return None


async def _discard(running: set[asyncio.Future[Any]], finished: set[asyncio.Future[Any]]) -> None:
    """Cancel the losing attempts of a hedged request and wait for them to let go (the upstream
    requests close); an answer that finished too is a stream to close, or simply dropped."""
    for task in running:
        task.cancel()
    if running:
        await asyncio.wait(running)
    for task in finished:
        if task.cancelled() or task.exception() is not None:
            continue
        loser = task.result()
        if isinstance(loser, UpstreamStream):
            await loser.close()
            loser.abandoned()


def service_time(entry: ProviderEntry) -> float:
    """How long a request holds one of ``entry``'s slots, typically: its median latency (0
    before any sample, when nothing is shed)."""
    quantiles = entry.stats.latency.quantiles()
    return quantiles.p50 if quantiles is not None else 0.0


def note_usage(outcome: Outcome, usage: Usage) -> None:
    """Put a chat completion's usage in the outcome (cached prompt tokens included)."""
    outcome.prompt_tokens = usage.prompt_tokens
    outcome.completion_tokens = usage.completion_tokens
    details = usage.prompt_tokens_details
    outcome.cached_tokens = (details.cached_tokens or 0) if details is not None else 0


def has_content(batch: Batch) -> bool:
    """True when a batch of chat chunks carries more than a role: text, a tool call, a
    refusal, an end, or usage."""
    if type(batch) is not ChunkBatch:
        return True
    for chunk in batch.chunks:
        if chunk.usage is not None:
            return True
        for choice in chunk.choices:
            delta = choice.delta
            if delta.content or delta.tool_calls or delta.refusal or choice.finish_reason:
                return True
    return False


def joined(batches: list[_B]) -> _B:
    """One batch of the chunks of several, with the first one's request id."""
    if len(batches) == 1:
        return batches[0]
    first = batches[0]
    chunks: list[ChatCompletionChunk] = []
    for batch in batches:
        if isinstance(batch, ChunkBatch):  # only chat streams are held
            chunks.extend(batch.chunks)
    return ChunkBatch(chunks, request_id=first.request_id)  # type: ignore[return-value]


def _chat_form(
    request: ProtocolRequest, trail: RoutingTrail, route: Route
) -> ChatCompletionRequest:
    """The chat form of a request the provider does not speak; what it dropped goes in the
    trail, once."""
    chat = request.chat()
    notes = request.notes
    if notes and notes[0] not in trail.notes:
        trail.notes.extend(notes)
    trail.translated.add(route.provider)
    return chat


class UpstreamStream(Generic[_B]):
    """A stream committed to one provider once its first batch came: the rest of its batches
    and the lease its outcome is recorded on. ``next()`` raises StopAsyncIteration at the end."""

    __slots__ = (
        "_batches",
        "_bound",
        "_clock",
        "_provider",
        "_started",
        "first",
        "hooked",
        "lease",
        "ttft",
    )

    def __init__(
        self,
        batches: AsyncGenerator[_B, None],
        first: _B,
        lease: Lease | None,
        bound: Deadline | None,
        *,
        clock: Clock,
        started: float,
    ) -> None:
        self._batches = batches
        self._bound = bound
        self._clock = clock
        self._started = started
        self.first = first
        # None: no provider holds it (a hook answered).
        self.lease = lease
        self._provider = "" if lease is None else lease.entry.name
        # Seconds from the attempt's start to its first batch.
        self.ttft = clock.monotonic() - started
        # The request's hooks and their context, when it has hooks.
        self.hooked: tuple[HookChain, HookContext] | None = None

    @property
    def request_id(self) -> str | None:
        """The upstream's request id, from the first batch."""
        return self.first.request_id

    def elapsed(self) -> float:
        """Seconds since the attempt started."""
        return self._clock.monotonic() - self._started

    async def next(self) -> _B:
        """The next batch with chunks in it."""
        batches, bound = self._batches, self._bound
        while True:
            if bound is None:
                batch = await anext(batches)  # the provider stops at the deadline itself
            else:
                batch = await bounded(anext(batches), self._provider, bound)
            if batch.chunks or (type(batch) is ChunkBatch and batch.usage is not None):
                return batch

    async def close(self) -> None:
        """Close the upstream request."""
        await close_quietly(self._batches)

    def succeeded(self, *, prompt_tokens: int, completion_tokens: int) -> None:
        """The stream ended well: its provider served the request."""
        if self.lease is not None:
            self.lease.succeeded(
                self.elapsed(),
                ttft=self.ttft,
                prompt_tokens=prompt_tokens,
                completion_tokens=completion_tokens,
            )

    def failed(self, error: LeapError) -> None:
        """The stream broke through its provider's fault."""
        if self.lease is not None:
            self.lease.failed(error, self.elapsed())

    def abandoned(self) -> None:
        """The stream ended without a verdict on its provider."""
        if self.lease is not None:
            self.lease.abandoned()


def _itself(answer: ChatCompletion, context: HookContext) -> ChatCompletion:
    """A hook's answer to a whole request: the answer itself."""
    return answer


async def _no_more() -> AsyncGenerator[Any, None]:
    """The rest of a stream that came whole in its first batch."""
    return
    yield


async def bounded(call: Awaitable[_T], provider: str, deadline: Deadline | None) -> _T:
    """Await ``call``, within ``deadline`` when given; foreign errors become LeapErrors."""
    try:
        if deadline is None:
            return await call
        async with asyncio.timeout(deadline.remaining()):
            return await call
    except TimeoutError:
        raise DeadlineExceededError(
            f"Provider {provider!r} did not finish before the request's deadline",
            provider=provider,
            retryable=False,
        ) from None
    except (LeapError, StopAsyncIteration, asyncio.CancelledError):
        raise
    except Exception as exc:
        raise UpstreamUnavailableError(
            f"Provider {provider!r} failed unexpectedly ({type(exc).__name__})",
            provider=provider,
        ) from exc


async def close_quietly(batches: AsyncGenerator[Batch, None]) -> None:
    """Close an upstream stream; an error it raises while closing is of no interest now."""
    with contextlib.suppress(LeapError):
        await batches.aclose()
