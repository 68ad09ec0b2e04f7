"""The chat tool's work: build the request, stream it through the manager while reporting
progress, and fold the chunks into one answer with its routing trail.

The answer always streams internally when a provider can stream: the first-token timeout then
guards it, and hosts that asked for progress see the answer grow. Nothing reaches the MCP client
before the answer is whole, so the manager may still fail over until the first chunk, as it does
for HTTP clients.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from mcp.server.mcpserver.exceptions import ToolError

from leapasgi import (
    ChatCompletion,
    ChatCompletionAccumulator,
    ChatCompletionChunk,
    ChatCompletionRequest,
    GatewayCore,
    LeapError,
    Outcome,
    RoutingTrail,
    Tenant,
    UnsupportedFeatureError,
    parse_chat_request,
)

from .models import AttemptInfo, ChatMessage, ChatResult, TokenUsage

__all__ = ["PROGRESS_EVERY", "ChatRunner", "chat_body", "chat_result"]

# A progress notification on the first chunk, then on every this many chunks.
PROGRESS_EVERY = 8

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
    """Serves chats for the tool through one gateway's manager, counted in its metrics and
    access log like any other request."""

    def __init__(self, gateway: GatewayCore) -> None:
        self._gateway = gateway

    async def run(
        self,
        body: dict[str, Any],
        *,
        provider: str | None,
        report: Report,
        tenant: Tenant | None = None,
    ) -> tuple[ChatCompletion, Outcome]:
        """The completion for ``body`` and the request's outcome (trail, request id);
        ``provider`` is tried first if given; ``tenant`` (over HTTP: the caller the gateway
        identified) is accounted and limited like any other.

        Raises LeapError (with its trail) when nothing could serve, ToolError for a preferred
        provider that does not serve the model.
        """
        request = parse_chat_request(body)
        manager = self._gateway.manager
        if provider is not None:
            self._check_preferred(request, provider)
        progress = _Progress(report)
        with self._gateway.outcome() as outcome:
            # Over stdio nobody is identified: the gateway's anonymous caller, accounted too.
            outcome.tenant = (
                tenant if tenant is not None else self._gateway.tenancy.identity.anonymous
            )
            await manager.start()
            streamed = parse_chat_request(
                {**body, "stream": True, "stream_options": {"include_usage": True}}
            )
            try:
                manager.routes.routes(streamed)
            except UnsupportedFeatureError:
                # No provider of this model streams (or has some other feature): ask for it
                # whole; the dispatcher says what is missing if streaming was not all of it.
                completion = await manager.chat(request, prefer=provider, outcome=outcome)
            else:
                completion = await self._stream(streamed, provider, outcome, progress)
            outcome.sent = True
        return completion, outcome

    def _check_preferred(self, request: ChatCompletionRequest, provider: str) -> None:
        """ToolError unless ``provider`` exists and serves the request's model; a routing
        error is left to the dispatcher, which reports it."""
        manager = self._gateway.manager
        if provider not in manager.registry:
            names = ", ".join(manager.registry.names()) or "none"
            raise ToolError(f"No provider named {provider!r}. Providers: {names}")
        try:
            routes = manager.routes.routes(request)
        except LeapError:
            return
        if all(route.provider != provider for route in routes):
            serving = ", ".join(route.provider for route in routes)
            raise ToolError(
                f"Provider {provider!r} does not serve `{request.model}`; these do: {serving}"
            )

    async def _stream(
        self,
        request: ChatCompletionRequest,
        provider: str | None,
        outcome: Outcome,
        progress: _Progress,
    ) -> ChatCompletion:
        accumulator = ChatCompletionAccumulator()
        manager = self._gateway.manager
        async with manager.stream(request, prefer=provider, outcome=outcome) as stream:
            async for chunk in stream:
                accumulator.add(chunk)
                await progress.chunk(chunk, stream.trail)
        return accumulator.result()


def chat_result(completion: ChatCompletion, outcome: Outcome) -> ChatResult:
    """The tool's answer: the text, who served it, usage, the routing trail and the request's
    id (the one in the gateway's access log)."""
    trail = outcome.trail
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
        request_id=outcome.request_id,
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
