"""Retries for a provider used on its own, outside a manager or gateway.

A provider makes one upstream attempt per call, and under a manager that is what it must do:
the dispatcher retries and fails over within one deadline and one attempt budget, so wrapping a
provider registered there would multiply the attempts. ``Retrying`` is for code that talks to
one provider directly and wants the same retry rules (``RetryPolicy``) around it.
"""

from __future__ import annotations

import random
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable
from types import TracebackType
from typing import TypeVar

from ..clock import Clock, SystemClock
from ..deadline import Deadline
from ..exceptions import LeapError
from ..retry import RetryPolicy
from ..streaming import ChunkBatch
from ..types import ChatCompletion, ChatCompletionRequest, Model
from .base import DEFAULT_TOTAL_TIMEOUT, Capabilities, Provider

__all__ = ["Retrying"]

_T = TypeVar("_T")


class Retrying:
    """``provider`` with its calls retried by ``policy`` (backoff, Retry-After), every attempt
    and wait inside one deadline: the call's own, else ``total`` seconds. A stream is retried
    only until its first batch has been handed on."""

    def __init__(
        self,
        provider: Provider,
        *,
        policy: RetryPolicy | None = None,
        total: float = DEFAULT_TOTAL_TIMEOUT,
        clock: Clock | None = None,
        rng: Callable[[], float] | None = None,
    ) -> None:
        self.provider = provider
        self.name = provider.name
        self.policy = policy or RetryPolicy()
        self._total = total
        self._clock = clock or SystemClock()
        self._rng = rng or random.random

    def __repr__(self) -> str:
        return f"Retrying({self.provider!r}, max_retries={self.policy.max_retries})"

    @property
    def capabilities(self) -> Capabilities:
        """The wrapped provider's."""
        return self.provider.capabilities

    async def chat(
        self, request: ChatCompletionRequest, *, deadline: Deadline | None = None
    ) -> ChatCompletion:
        """``provider.chat``, retried."""
        until = self._deadline(deadline)
        return await self._retrying(lambda: self.provider.chat(request, deadline=until), until)

    async def stream(
        self, request: ChatCompletionRequest, *, deadline: Deadline | None = None
    ) -> AsyncGenerator[ChunkBatch, None]:
        """``provider.stream``, retried until its first batch."""
        until = self._deadline(deadline)
        retry = 0
        while True:
            batches = self.provider.stream(request, deadline=until)
            try:
                first = await anext(batches)
            except StopAsyncIteration:
                return
            except LeapError as error:
                await batches.aclose()
                await self._wait_or_raise(error, retry, until)
                retry += 1
                continue
            break
        try:
            yield first
            async for batch in batches:
                yield batch
        finally:
            await batches.aclose()

    async def list_models(self) -> list[Model]:
        """``provider.list_models``, retried."""
        until = self._deadline(None)
        return await self._retrying(self.provider.list_models, until)

    async def check_health(self) -> None:
        """``provider.check_health``, once: a check reports how the provider is now."""
        await self.provider.check_health()

    def secrets(self) -> Iterable[str]:
        """The wrapped provider's."""
        return self.provider.secrets()

    async def aclose(self) -> None:
        """Close the wrapped provider."""
        await self.provider.aclose()

    async def __aenter__(self) -> Retrying:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def _deadline(self, deadline: Deadline | None) -> Deadline:
        seconds = self._total if deadline is None else deadline.within(self._total)
        return Deadline.after(seconds, self._clock)

    async def _retrying(self, call: Callable[[], Awaitable[_T]], until: Deadline) -> _T:
        retry = 0
        while True:
            try:
                return await call()
            except LeapError as error:
                await self._wait_or_raise(error, retry, until)
            retry += 1

    async def _wait_or_raise(self, error: LeapError, retry: int, until: Deadline) -> None:
        """Sleep before retry number ``retry``, or raise ``error`` when it ends the call."""
        delay = self.policy.after(error, retry, rng=self._rng)
        if delay is None or delay >= until.remaining():
            raise error
        await self._clock.sleep(delay)
