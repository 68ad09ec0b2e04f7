"""A streamed completion as the manager hands it out: opened through the dispatcher (which
fails over until a provider sends its first batch), then read a batch at a time, with the
provider's outcome recorded on its lease and the request's in its ``Outcome``, once."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

from .dispatch import Batch, UpstreamStream, note_usage
from .exceptions import LeapError
from .hooks import HookChain, HookContext
from .native import EventBatch
from .outcome import Outcome
from .streaming import ChunkBatch
from .trail import RoutingTrail
from .types import ChatCompletionChunk

__all__ = ["ManagedStream"]

_B = TypeVar("_B", bound=Batch)


class ManagedStream(Generic[_B]):
    """A streamed completion with its routing trail; iterate it (chunk by chunk, or a batch at
    a time with ``next_batch()``), and ``aclose()`` it (or use ``async with``) when stopping
    early, which cancels the upstream request at once.

    The provider's slot is given back when the stream ends, fails or is closed; a stream
    dropped without any of these keeps it until the request's deadline, never longer.
    """

    __slots__ = ("_done", "_open", "_pending", "_upstream", "outcome")

    def __init__(self, open: Callable[[], Awaitable[UpstreamStream[_B]]], outcome: Outcome) -> None:
        self.outcome = outcome
        self._open = open
        self._upstream: UpstreamStream[_B] | None = None
        self._pending: deque[ChatCompletionChunk] = deque()
        self._done = False

    @property
    def trail(self) -> RoutingTrail:
        """Every provider tried, and why any failed."""
        return self.outcome.trail

    def __aiter__(self: ManagedStream[ChunkBatch]) -> ManagedStream[ChunkBatch]:
        return self

    async def __aenter__(self) -> ManagedStream[_B]:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def __anext__(self: ManagedStream[ChunkBatch]) -> ChatCompletionChunk:
        pending = self._pending
        while not pending:  # a batch may carry only usage
            pending.extend((await self.next_batch()).chunks)
        return pending.popleft()

    async def next_batch(self) -> _B:
        """The next chunks (or native events) that arrived together (never none); raises
        StopAsyncIteration at the end, and the LeapError that ended the stream."""
        pending = self._pending
        if pending:
            rest = ChunkBatch(list(pending))
            pending.clear()
            return rest  # type: ignore[return-value]  # only chat streams are iterated by chunk
        upstream = self._upstream
        if upstream is None:
            if self._done:
                raise StopAsyncIteration
            return await self._first()
        try:
            batch = await upstream.next()
        except StopAsyncIteration:
            await self._ended(upstream)
            raise
        except LeapError as error:
            raise await self._broke(upstream, error) from error
        except BaseException:
            await self.aclose()
            raise
        self._note_usage(batch)
        hooked = upstream.hooked
        if hooked is not None and hooked[0].watches_chunks:
            await self._watched(upstream, hooked, batch)
        return batch

    async def aclose(self) -> None:
        """Stop the stream; the upstream request is closed and its slot freed."""
        upstream, self._upstream = self._upstream, None
        self._done = True
        if upstream is not None:
            try:
                await upstream.close()
            finally:
                upstream.abandoned()

    async def _first(self) -> _B:
        try:
            upstream = await self._open()
        except BaseException:
            self._done = True  # a stream that failed to open stays ended
            raise
        self._upstream = upstream
        self.outcome.first_token_at = time.perf_counter()
        first = upstream.first
        self._note_usage(first)
        hooked = upstream.hooked
        if hooked is not None and hooked[0].watches_chunks:
            await self._watched(upstream, hooked, first)
        return first

    async def _watched(
        self, upstream: UpstreamStream[_B], hooked: tuple[HookChain, HookContext], batch: _B
    ) -> None:
        """The ``on_chunk`` hooks over ``batch``; one that raises ends the stream (the
        provider did nothing wrong: its attempt is abandoned, not failed)."""
        hooks, context = hooked
        try:
            await hooks.chunks(context, self.outcome, batch)
        except LeapError as error:
            self._upstream = None
            self._done = True
            try:
                await upstream.close()
            finally:
                upstream.abandoned()
            outcome = self.outcome
            failure = error.for_request(outcome.trail)
            outcome.failed(failure)
            await hooks.error(context, failure)
            raise failure from error

    def _note_usage(self, batch: Batch) -> None:
        if type(batch) is EventBatch:
            if batch.usage is not None:
                outcome = self.outcome
                outcome.prompt_tokens, outcome.completion_tokens, outcome.cached_tokens = (
                    batch.usage
                )
            return
        assert type(batch) is ChunkBatch
        if batch.usage is not None:
            note_usage(self.outcome, batch.usage)  # reported, not for the client's stream
        for chunk in batch.chunks:
            usage = chunk.usage
            if usage is not None:
                note_usage(self.outcome, usage)

    async def _ended(self, upstream: UpstreamStream[_B]) -> None:
        """The stream ended cleanly: record its success, close the upstream request."""
        self._upstream = None
        self._done = True
        outcome = self.outcome
        upstream.succeeded(
            prompt_tokens=outcome.prompt_tokens, completion_tokens=outcome.completion_tokens
        )
        await upstream.close()
        if upstream.hooked is not None:
            hooks, context = upstream.hooked
            try:
                await hooks.after(context, outcome, None)
            except LeapError as error:
                failure = error.for_request(outcome.trail)
                outcome.failed(failure)
                await hooks.error(context, failure)
                raise failure from error

    async def _broke(self, upstream: UpstreamStream[_B], error: LeapError) -> LeapError:
        """The stream broke after it began: record the failure, close the upstream request;
        returns the error the stream ends with (the upstream's, with the request's trail)."""
        self._upstream = None
        self._done = True
        upstream.failed(error)
        await upstream.close()
        outcome = self.outcome
        attempt = outcome.trail.attempts[-1]
        attempt.outcome, attempt.message = type(error).__name__, error.message
        failure = error.for_request(outcome.trail)
        outcome.failed(failure)
        if upstream.hooked is not None:
            hooks, context = upstream.hooked
            await hooks.error(context, failure)
        return failure
