"""HookChain: a gateway's hooks in order, each call isolated. Which methods a hook has, and
whether each is async, is read once, when the chain is built; a request only calls those."""

from __future__ import annotations

import importlib
import inspect
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

from ..exceptions import ConfigurationError, HookError, LeapError
from ..native import EventBatch, ProtocolRequest
from ..outcome import Outcome
from ..streaming import ChunkBatch
from ..types import ChatCompletion, ChatCompletionRequest
from .base import Answer, Hook, HookContext

__all__ = ["HookChain", "load_hook"]

logger = logging.getLogger("leapasgi.hooks")

# (the hook's name, the bound method, whether it returns an awaitable)
_Call = tuple[str, Callable[..., Any], bool]


def _name(hook: object) -> str:
    name = getattr(hook, "name", "")
    return name if isinstance(name, str) and name else type(hook).__name__


def _calls(hooks: list[object], method: str) -> list[_Call]:
    calls = []
    for hook in hooks:
        function = getattr(type(hook), method, None)
        if function is None or function is getattr(Hook, method):
            continue  # not overridden: never called
        bound = getattr(hook, method)
        calls.append((_name(hook), bound, inspect.iscoroutinefunction(function)))
    return calls


class HookChain:
    """Hooks called in order at each step of a request."""

    def __init__(self, hooks: Iterable[object]) -> None:
        self.hooks = list(hooks)
        self._before = _calls(self.hooks, "before")
        self._after = _calls(self.hooks, "after")
        self._chunk = _calls(self.hooks, "on_chunk")
        self._error = _calls(self.hooks, "on_error")
        # Whether any hook watches streamed chunks (else a stream's batches are not walked).
        self.watches_chunks = bool(self._chunk)

    def __len__(self) -> int:
        return len(self.hooks)

    def context(
        self, request: ChatCompletionRequest | ProtocolRequest, outcome: Outcome
    ) -> HookContext:
        """A new request's context, for every step of it."""
        return HookContext(request, stream=outcome.stream, tenant=outcome.tenant)

    async def before(self, ctx: HookContext, outcome: Outcome) -> ChatCompletion | None:
        """The ``before`` hooks, until one answers; ``ctx.request`` is the request as they
        left it. Returns the answer (noted in the trail), else None."""
        for call in self._before:
            answer = await _run(call, outcome, ctx)
            if answer is not None:
                return _answered(call[0], ctx, outcome, answer)
        return None

    async def after(self, ctx: HookContext, outcome: Outcome, answer: Answer) -> None:
        """Every ``after`` hook, with the answer."""
        for call in self._after:
            await _run(call, outcome, ctx, answer)

    async def chunks(
        self, ctx: HookContext, outcome: Outcome, batch: ChunkBatch | EventBatch
    ) -> None:
        """Every ``on_chunk`` hook, with each chunk (or event) of ``batch``."""
        for chunk in batch.chunks:
            for call in self._chunk:
                await _run(call, outcome, ctx, chunk)

    async def error(self, ctx: HookContext, error: LeapError) -> None:
        """Every ``on_error`` hook; what they raise is logged and ignored (the request is
        already ending with ``error``)."""
        for name, method, is_async in self._error:
            try:
                result = method(ctx, error)
                if is_async:
                    await result
            except Exception as exc:  # isolated: the request already ends with its error
                logger.error("hook %r failed in on_error: %s", name, type(exc).__name__)


def _answered(name: str, ctx: HookContext, outcome: Outcome, answer: object) -> ChatCompletion:
    """A ``before`` hook's answer, checked: a ChatCompletion, to a request that can take one."""
    request = ctx.request
    if not isinstance(answer, ChatCompletion):
        reason = f"hook {name!r} answered with {type(answer).__name__}, not a ChatCompletion"
    elif isinstance(request, ProtocolRequest) and not request.translatable:
        reason = f"hook {name!r} answered a request ({ctx.protocol}) that has no chat form"
    else:
        ctx.answered_by = outcome.answered_by = name
        outcome.trail.notes.append(f"hook {name!r} answered")
        return answer
    logger.error("%s (request %s)", reason, outcome.request_id)
    outcome.trail.notes.append(reason)
    raise HookError(reason, hook=name)


async def _run(call: _Call, outcome: Outcome, *args: Any) -> Any:
    name, method, is_async = call
    try:
        result = method(*args)
        if is_async:
            result = await result
        return result
    except LeapError:
        raise
    except Exception as exc:
        # The exception's text may quote the request; its type is enough to find it.
        reason = f"hook {name!r} failed: {type(exc).__name__}"
        logger.error("%s (request %s)", reason, outcome.request_id)
        outcome.trail.notes.append(reason)
        raise HookError(reason, hook=name) from None


def load_hook(path: str, options: Mapping[str, Any] | None = None) -> object:
    """The hook at ``"package.module:factory"``, called with ``options`` as keywords; a path
    that does not import, or a factory that refuses the options, is a ConfigurationError."""
    module_name, _, attribute = path.partition(":")
    if not module_name or not attribute:
        raise ConfigurationError(f"hooks: {path!r} is not of the form 'package.module:factory'")
    try:
        factory: Callable[..., object] = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as exc:
        raise ConfigurationError(f"hooks: cannot import {path!r} ({type(exc).__name__})") from None
    try:
        hook = factory(**(options or {}))
    except (TypeError, ValueError) as exc:
        raise ConfigurationError(f"hooks: {path!r} refused its options: {exc}") from None
    if isinstance(hook, Awaitable):
        raise ConfigurationError(f"hooks: {path!r} made an awaitable, not a hook")
    return hook
