"""The chat tool's work: build the request, stream it through the manager while reporting
progress, and fold the chunks into one answer with its routing trail.

The answer always streams internally when a provider can stream: the first-token timeout then
guards it, and hosts that asked for progress see the answer grow. Nothing reaches the MCP client
before the answer is whole, so the manager may still fail over until the first chunk, as it does
for HTTP clients.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

from mcp.server.mcpserver.exceptions import ToolError

from leapasgi import (
    ChatCompletion,
    ChatCompletionAccumulator,
    ChatCompletionChunk,
    ChatCompletionRequest,
    Gateway,
    InvalidRequestError,
    LeapError,
    RoutingTrail,
    parse_chat_request,
)

from .models import AttemptInfo, ChatMessage, ChatResult, TokenUsage

__all__ = ["PROGRESS_EVERY", "ChatRunner", "chat_body", "chat_result"]

# A progress notification on the first chunk, then on every this many chunks.
PROGRESS_EVERY = 8
# The routing error code when no candidate has a feature the request needs.
_UNSUPPORTED = "unsupported_feature"

Report = Callable[[float, float | None, str | None], Awaitable[None]]


def chat_body(
    *,
    model: str,
    prompt: str | None,
    messages: list[ChatMessage] | None,
    system: str | None,
    temperature: float | None,
    max_tokens: int | None,
    json_mode: bool,
) -> dict[str, Any]:
    """The chat completion body for the tool's arguments; ToolError when they do not fit."""
    if prompt is not None and messages is not None:
        raise ToolError("Give either prompt (one user message) or messages, not both")
    if prompt is None and messages is None:
        raise ToolError("Give prompt (one user message) or messages (a conversation)")
    conversation: list[dict[str, Any]] = []
    if system is not None:
        conversation.append({"role": "system", "content": system})
    if prompt is not None:
        conversation.append({"role": "user", "content": prompt})
    else:
        conversation += [m.model_dump() for m in messages or ()]
    body: dict[str, Any] = {"model": model, "messages": conversation}
    if temperature is not None:
        body["temperature"] = temperature
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    if json_mode:
        body["response_format"] = {"type": "json_object"}
    return body


class _Progress:
    """Progress notifications for one chat; the count never goes back, even across a fallback."""

    def __init__(self, report: Report) -> None:
        self._report = report
        self._chunks = 0
        self._characters = 0

    async def chunk(self, chunk: ChatCompletionChunk, trail: RoutingTrail) -> None:
        self._chunks += 1
        for choice in chunk.choices:
            self._characters += len(choice.delta.content or "")
        if self._chunks == 1 or self._chunks % PROGRESS_EVERY == 0:
            served = trail.served_by
            who = served.provider if served is not None else "the provider"
            message = f"{who} is answering: {self._characters} characters so far"
            await self._report(self._chunks, None, message)


class ChatRunner:
    """Serves chats for the tool through one gateway's manager, counted in its metrics."""

    def __init__(self, gateway: Gateway) -> None:
        self._gateway = gateway

    async def run(
        self, body: dict[str, Any], *, provider: str | None, report: Report
    ) -> tuple[ChatCompletion, RoutingTrail]:
        """The completion for ``body`` and its trail; ``provider`` is tried first if given.

        Raises LeapError (with its trail) when nothing could serve, ToolError for a preferred
        provider that does not serve the model.
        """
        started = time.perf_counter()
        request = parse_chat_request(body)
        progress = _Progress(report)
        try:
            await self._gateway.manager.start()
            completion, trail = await self._run(body, provider, progress)
        except LeapError as error:
            self._gateway.record_failure(error, started=started, request=request)
            raise
        usage = completion.usage
        self._gateway.record_success(
            request,
            trail,
            started=started,
            prompt_tokens=usage.prompt_tokens if usage else 0,
            completion_tokens=usage.completion_tokens if usage else 0,
        )
        return completion, trail

    async def _run(
        self, body: dict[str, Any], provider: str | None, progress: _Progress
    ) -> tuple[ChatCompletion, RoutingTrail]:
        if provider is None:
            return await self._route(body, progress)
        try:
            return await self._route(self._pinned(body, provider), progress)
        except LeapError as error:
            if not error.retryable:
                raise
            first = error.trail
        # The preferred provider could not serve: the others get their turn.
        try:
            completion, trail = await self._route(body, progress)
        except LeapError as error:
            error.trail = _joined(first, error.trail)
            raise
        return completion, _joined(first, trail)

    def _pinned(self, body: dict[str, Any], provider: str) -> dict[str, Any]:
        """``body`` routed to ``provider`` alone, with the model name it has for it."""
        manager = self._gateway.manager
        if provider not in manager.registry:
            names = ", ".join(manager.registry.names()) or "none"
            raise ToolError(f"No provider named {provider!r}. Providers: {names}")
        routes = manager.routes.routes(parse_chat_request(body))
        for route in routes:
            if route.provider == provider:
                return {**body, "model": f"{route.provider}/{route.model}"}
        serving = ", ".join(r.provider for r in routes)
        raise ToolError(
            f"Provider {provider!r} does not serve `{body['model']}`; these do: {serving}"
        )

    async def _route(
        self, body: dict[str, Any], progress: _Progress
    ) -> tuple[ChatCompletion, RoutingTrail]:
        streamed = {**body, "stream": True, "stream_options": {"include_usage": True}}
        try:
            return await self._stream(parse_chat_request(streamed), progress)
        except InvalidRequestError as error:
            if error.code != _UNSUPPORTED or error.trail is not None:
                raise
        # No provider of this model streams (or has some other feature): ask for it whole.
        return await self._gateway.manager.chat_with_trail(parse_chat_request(body))

    async def _stream(
        self, request: ChatCompletionRequest, progress: _Progress
    ) -> tuple[ChatCompletion, RoutingTrail]:
        accumulator = ChatCompletionAccumulator()
        async with self._gateway.manager.stream(request) as stream:
            async for chunk in stream:
                accumulator.add(chunk)
                await progress.chunk(chunk, stream.trail)
        return accumulator.result(), stream.trail


def _joined(first: RoutingTrail | None, then: RoutingTrail | None) -> RoutingTrail:
    return RoutingTrail([*(first.attempts if first else ()), *(then.attempts if then else ())])


def chat_result(completion: ChatCompletion, trail: RoutingTrail) -> ChatResult:
    """The tool's answer: the text, who served it, usage and the routing trail."""
    served = trail.served_by
    choice = completion.choices[0] if completion.choices else None
    message = choice.message if choice is not None else None
    usage = completion.usage
    return ChatResult(
        reply=(message.content or message.refusal or "") if message is not None else "",
        provider=served.provider if served is not None else "",
        model=completion.model or (served.model if served is not None else ""),
        finish_reason=choice.finish_reason if choice is not None else None,
        usage=TokenUsage(
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens,
            total_tokens=usage.total_tokens,
        )
        if usage is not None
        else None,
        attempts=[
            AttemptInfo(
                provider=a.provider,
                model=a.model,
                outcome=a.outcome,
                status=a.status,
                latency_ms=round(a.latency * 1000, 3),
                message=a.message,
                skipped=a.skipped,
            )
            for a in trail.attempts
        ],
    )
