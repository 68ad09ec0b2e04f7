"""A streamed completion as the manager serves it: routes tried until one sends its first
chunk, then the chunks of each upstream read handed on as they come, and the outcome recorded
on the provider exactly once."""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING

from .attempts import RequestAttempts
from .deadline import REQUEST_DEADLINE
from .exceptions import LeapError
from .providers.base import Provider
from .registry import ProviderEntry
from .routing import Route
from .streaming import ChunkBatch, batches_of
from .trail import RoutingTrail
from .types import ChatCompletionChunk, ChatCompletionRequest, Usage

if TYPE_CHECKING:
    from .manager import ProviderManager

__all__ = ["ManagedStream", "close_quietly", "for_route"]


def for_route(route: Route, request: ChatCompletionRequest) -> ChatCompletionRequest:
    """``request`` with the model name the route's provider knows it by."""
    if request.model == route.model:
        return request
    return request.model_copy(update={"model": route.model})


def _batches(provider: Provider, request: ChatCompletionRequest) -> AsyncIterator[ChunkBatch]:
    """The provider's stream a read at a time; one chunk per batch if it has no batches."""
    batches: Callable[[ChatCompletionRequest], AsyncIterator[ChunkBatch]] | None = getattr(
        provider, "stream_batches", None
    )
    if batches is not None:
        return batches(request)
    return batches_of(provider.stream(request))


async def close_quietly(chunks: AsyncIterator[object]) -> None:
    """Close an upstream stream; an error it raises while closing is of no interest now."""
    closer: Callable[[], Awaitable[None]] | None = getattr(chunks, "aclose", None)
    if closer is not None:
        with contextlib.suppress(LeapError):
            await closer()


class ManagedStream:
    """A streamed completion with its routing trail; iterate it, and ``aclose()`` it (or use
    ``async with``) when stopping early, which cancels the upstream request at once.

    A plain async iterator rather than a generator: every chunk passes through one call here,
    not a stack of generators. ``next_batch()`` hands over the chunks of one upstream read at
    once, with the upstream's own bytes where they can be relayed unchanged (the HTTP relay
    uses it); iterating gives the same chunks one by one.
    """

    def __init__(self, manager: ProviderManager, request: ChatCompletionRequest) -> None:
        self.trail = RoutingTrail()
        self._manager = manager
        self._request = request
        self._batches: AsyncIterator[ChunkBatch] | None = None
        self._entry: ProviderEntry | None = None
        self._pending: deque[ChatCompletionChunk] = deque()
        self._started = 0.0
        self._ttft = 0.0
        self._deadline = 0.0
        self._usage: Usage | None = None
        self._done = False

    def __aiter__(self) -> ManagedStream:
        return self

    async def __aenter__(self) -> ManagedStream:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def __anext__(self) -> ChatCompletionChunk:
        pending = self._pending
        if not pending:
            pending.extend((await self.next_batch()).chunks)
        return pending.popleft()

    async def next_batch(self) -> ChunkBatch:
        """The next chunks that arrived together (never none); raises StopAsyncIteration at
        the end, and the LeapError that ended the stream."""
        pending = self._pending
        if pending:
            batch = ChunkBatch(list(pending))
            pending.clear()
            return batch
        batches, entry = self._batches, self._entry
        if batches is None or entry is None:
            if self._done:
                raise StopAsyncIteration
            return await self._open()
        try:
            while True:
                if entry.settings.honors_deadline:
                    batch = await batches.__anext__()  # it stops at the deadline by itself
                else:
                    batch = await self._manager._bounded(batches.__anext__(), entry, self._deadline)
                if batch.chunks:
                    break
        except StopAsyncIteration:
            await self._finish(None)
            raise
        except LeapError as exc:
            await self._finish(exc)
            raise
        except BaseException:
            await self.aclose()
            raise
        self._note_usage(batch)
        return batch

    def _note_usage(self, batch: ChunkBatch) -> None:
        for chunk in batch.chunks:
            if chunk.usage is not None:
                self._usage = chunk.usage

    async def aclose(self) -> None:
        """Stop the stream; the upstream request is closed and its slot freed."""
        if self._batches is not None and self._entry is not None:
            await self._finish(None, abandoned=True)
        self._done = True

    async def _open(self) -> ChunkBatch:
        """Try routes until one yields a first chunk; failures before it fail over."""
        manager = self._manager
        clock = manager._clock
        await manager.start()
        attempts = manager._plan(self._request, self.trail)
        token = REQUEST_DEADLINE.set((clock, attempts.deadline))
        try:
            return await self._first(attempts)
        except BaseException:
            self._done = True  # a stream that failed to open stays ended
            raise
        finally:
            REQUEST_DEADLINE.reset(token)

    async def _first(self, attempts: RequestAttempts) -> ChunkBatch:
        manager = self._manager
        clock = manager._clock
        while (route := await attempts.next()) is not None:
            entry = manager.registry.get(route.provider)
            if entry.limit is not None and not await manager._take_slot(entry, route, attempts):
                continue
            started = clock.monotonic()
            entry.begin()
            batches = _batches(entry.provider, for_route(route, self._request))
            try:
                first = await manager._first_batch(batches, entry, attempts.deadline)
            except LeapError as exc:
                await close_quietly(batches)
                entry.end()
                attempts.failed(route, entry, exc, started)
                continue
            except BaseException:
                await close_quietly(batches)
                entry.end()
                entry.abandoned()
                self._done = True
                raise
            self._ttft = clock.monotonic() - started
            attempts.succeeded(route, self._ttft)
            self._batches, self._entry = batches, entry
            self._started, self._deadline = started, attempts.deadline
            self._note_usage(first)
            return first
        self._done = True
        raise attempts.exhausted()

    async def _finish(self, error: LeapError | None, *, abandoned: bool = False) -> None:
        """Close the upstream stream and record the outcome, exactly once."""
        batches, entry = self._batches, self._entry
        self._batches = self._entry = None
        self._done = True
        if batches is None or entry is None:
            return
        await close_quietly(batches)
        entry.end()
        latency = self._manager._clock.monotonic() - self._started
        if error is not None:
            entry.failed(error, latency)
            attempt = self.trail.attempts[-1]
            attempt.outcome, attempt.message = type(error).__name__, error.message
            error.trail = self.trail
        elif abandoned:
            entry.abandoned()
        else:
            usage = self._usage or Usage()
            entry.succeeded(
                latency,
                ttft=self._ttft,
                prompt_tokens=usage.prompt_tokens,
                completion_tokens=usage.completion_tokens,
            )

    def __del__(self) -> None:
        # Dropped without aclose(): free the slot now; asyncio finalizes the upstream stream.
        entry = self._entry
        if entry is not None and not self._done:
            self._entry = None
            entry.end()
            entry.abandoned()
