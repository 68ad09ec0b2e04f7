"""The gateway's MCP tools, bound to one gateway, and the MCPServer that offers them.

Each tool's docstring is the description the model reads; its arguments and return model are
the schemas. Errors the model should act on are raised as ToolError with a clear message, and
every result and message passes the scrubber on its way out.
"""

from __future__ import annotations

import asyncio
from typing import Annotated

from mcp.server import MCPServer
from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import ToolAnnotations
from pydantic import Field

from leapasgi import (
    GatewayCore,
    HealthResult,
    LeapError,
    ProviderSnapshot,
    ProviderStatus,
    Quantiles,
    Role,
    __version__,
    tenant_of_scope,
)

from ._errors import describe
from ._scrub import Scrubber
from .chat import ChatRunner, chat_body, chat_result
from .models import (
    AdminStatus,
    ChatMessage,
    ChatResult,
    HealthCheckInfo,
    HealthCheckResult,
    LatencyPercentiles,
    ModelInfo,
    ModelsResult,
    ProviderInfo,
    ProvidersResult,
    StatsResult,
)

__all__ = ["INSTRUCTIONS", "RECENT_CHANGES", "GatewayTools", "build_server"]

INSTRUCTIONS = (
    "An LLM gateway: `chat` asks any model or alias it serves (see `list_models`) and fails "
    "over between providers; `list_providers`, `provider_stats` and `health_check` show how "
    "the providers are doing."
)
# Status transitions listed per provider.
RECENT_CHANGES = 5

_READ_ONLY = ToolAnnotations(read_only_hint=True, open_world_hint=False)


class GatewayTools:
    """The tools, as methods over one gateway."""

    def __init__(self, gateway: GatewayCore) -> None:
        self._gateway = gateway
        self._scrub = Scrubber(gateway)
        self._chat = ChatRunner(gateway)

    async def chat(
        self,
        model: Annotated[
            str,
            Field(
                min_length=1,
                description="A model or alias from list_models; `provider/model` sends the "
                "request to that provider only",
            ),
        ],
        prompt: Annotated[
            str | None, Field(min_length=1, description="The question: one user message")
        ] = None,
        messages: Annotated[
            list[ChatMessage] | None,
            Field(min_length=1, description="A whole conversation, instead of prompt"),
        ] = None,
        system: Annotated[str | None, Field(description="System instructions to put first")] = None,
        temperature: Annotated[float | None, Field(ge=0, le=2)] = None,
        max_tokens: Annotated[
            int | None, Field(ge=1, description="The most tokens the answer may have")
        ] = None,
        json_mode: Annotated[
            bool, Field(description="Ask for the answer as a JSON object (say so in the prompt)")
        ] = False,
        provider: Annotated[
            str | None,
            Field(
                description="A preferred provider from list_providers: tried first, the others "
                "serving the model only if it fails"
            ),
        ] = None,
        *,
        ctx: Context,
    ) -> ChatResult:
        """Ask a model through the gateway and get its answer, the provider and model that
        served it, token usage, and the routing trail (every provider tried, and why any
        failed). Give either prompt or messages."""
        body = chat_body(
            model=model,
            prompt=prompt,
            messages=messages,
            system=system,
            temperature=temperature,
            max_tokens=max_tokens,
            json_mode=json_mode,
        )
        try:
            scope = getattr(ctx.request_context.request, "scope", None)
            completion, outcome = await self._chat.run(
                body,
                provider=provider,
                report=ctx.report_progress,
                tenant=tenant_of_scope(scope) if scope is not None else None,
            )
        except LeapError as error:
            raise self._error(error) from None
        return self._scrub.model(chat_result(completion, outcome))

    async def list_providers(self, *, ctx: Context) -> ProvidersResult:
        """Every provider: status, health, circuit breaker, features, models, latency
        percentiles, error counts and recent status changes. Over HTTP, needs the admin key."""
        self._admin_only(ctx, "Listing the providers")
        await self._gateway.manager.start()
        snapshots = self._gateway.manager.registry.snapshots()
        return self._scrub.model(ProvidersResult(providers=[_provider(s) for s in snapshots]))

    async def list_models(self) -> ModelsResult:
        """The models and aliases chat accepts, and the providers that serve each."""
        manager = self._gateway.manager
        await manager.start()
        aliases = manager.routes.aliases
        models = [
            ModelInfo(
                name=name,
                alias=name in aliases,
                targets=list(aliases[name].targets) if name in aliases else [],
                providers=providers,
            )
            for name, providers in sorted(manager.routes.models().items())
        ]
        return self._scrub.model(ModelsResult(models=models))

    async def health_check(
        self,
        provider: Annotated[
            str | None, Field(description="Check this provider only; default: every one")
        ] = None,
        *,
        ctx: Context,
    ) -> HealthCheckResult:
        """Run health checks now, in parallel (all providers but inactive ones, or one), and
        return each result. Checks use free endpoints, never a billed completion. Over HTTP,
        needs the admin key."""
        self._admin_only(ctx, "Running health checks")
        registry = self._gateway.manager.registry
        if provider is not None:
            self._known_provider(provider)
            names = [provider]
        else:
            names = [e.name for e in registry if e.status is not ProviderStatus.INACTIVE]
        try:
            results = await self._check(names, ctx)
            infos = [_health(r, registry.snapshot(r.provider)) for r in results]
        except LeapError as error:
            raise self._error(error) from None
        healthy = sum(1 for i in infos if i.ok)
        result = HealthCheckResult(results=infos, healthy=healthy, unhealthy=len(infos) - healthy)
        return self._scrub.model(result)

    async def provider_stats(self, *, ctx: Context) -> StatsResult:
        """Totals over every provider: how many are active and healthy, requests, successes,
        errors, success rate and requests in flight. Over HTTP, needs the admin key."""
        self._admin_only(ctx, "Reading provider totals")
        stats = self._gateway.manager.registry.stats()
        return StatsResult(
            providers=stats.total,
            active=stats.active,
            healthy=stats.healthy,
            in_flight=stats.in_flight,
            requests=stats.requests,
            successes=stats.successes,
            errors=stats.errors,
            success_rate=stats.success_rate,
        )

    async def set_provider_status(
        self,
        provider: Annotated[str, Field(description="The provider's name")],
        status: Annotated[
            AdminStatus,
            Field(description="active: take traffic; inactive: none; maintenance: drain"),
        ],
        reason: Annotated[str | None, Field(max_length=200, description="Why, for the log")] = None,
        *,
        ctx: Context,
    ) -> ProviderInfo:
        """Admin: switch a provider on (active), off (inactive) or to maintenance (finish the
        requests in flight, take no new ones). Returns the provider as it now is."""
        self._admin_only(ctx, "Changing a provider's status")
        self._known_provider(provider)
        registry = self._gateway.manager.registry
        try:
            registry.set_status(provider, status, cause=reason or "set by an MCP client")
        except LeapError as error:
            raise self._error(error) from None
        return self._scrub.model(_provider(registry.snapshot(provider)))

    async def _check(self, names: list[str], ctx: Context) -> list[HealthResult]:
        manager = self._gateway.manager
        tasks = [asyncio.create_task(manager.check_health(name)) for name in names]
        done: dict[str, HealthResult] = {}
        try:
            for finished in asyncio.as_completed(tasks):
                result = (await finished)[0]
                done[result.provider] = result
                verdict = "ok" if result.ok else "failed"
                await ctx.report_progress(len(done), len(names), f"{result.provider}: {verdict}")
        finally:
            for task in tasks:
                task.cancel()
        return [done[name] for name in names if name in done]

    def _admin_only(self, ctx: Context, what: str) -> None:
        """ToolError unless the caller may do admin things: over stdio, the local user who
        started the server may; over HTTP, only the admin key, as on the gateway's own admin
        routes (an API key may chat and list models, not inspect or steer the providers)."""
        scope = getattr(ctx.request_context.request, "scope", None)
        if scope is not None and self._gateway.access.role(scope) is not Role.ADMIN:
            raise ToolError(f"{what} over HTTP needs the gateway's admin key")

    def _known_provider(self, name: str) -> None:
        registry = self._gateway.manager.registry
        if name not in registry:
            names = ", ".join(registry.names()) or "none"
            raise ToolError(f"No provider named {name!r}. Providers: {names}")

    def _error(self, error: LeapError) -> ToolError:
        known = self._gateway.manager.routes.models()
        return ToolError(self._scrub.text(describe(error, known_models=known)))


def build_server(gateway: GatewayCore, *, admin_tools: bool = False) -> MCPServer:
    """An MCP server whose tools use ``gateway``; ``admin_tools`` adds set_provider_status.

    The server does not start or stop the gateway: whoever owns the gateway does (the
    ``leapmcp`` command, the gateway's lifespan, or the manager's start on first use).
    """
    tools = GatewayTools(gateway)
    server = MCPServer("leapasgi", instructions=INSTRUCTIONS, version=__version__)
    open_world = ToolAnnotations(read_only_hint=False, open_world_hint=True)
    server.add_tool(tools.chat, title="Ask a model", annotations=open_world)
    server.add_tool(tools.list_providers, title="List providers", annotations=_READ_ONLY)
    server.add_tool(tools.list_models, title="List models", annotations=_READ_ONLY)
    checks = ToolAnnotations(read_only_hint=True, open_world_hint=True)
    server.add_tool(tools.health_check, title="Check provider health", annotations=checks)
    server.add_tool(tools.provider_stats, title="Provider totals", annotations=_READ_ONLY)
    if admin_tools:
        admin = ToolAnnotations(read_only_hint=False, destructive_hint=False, idempotent_hint=True)
        server.add_tool(tools.set_provider_status, title="Set provider status", annotations=admin)
    return server


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


def _percentiles(quantiles: Quantiles | None) -> LatencyPercentiles | None:
    if quantiles is None:
        return None
    return LatencyPercentiles(
        p50=round(quantiles.p50 * 1000, 3),
        p95=round(quantiles.p95 * 1000, 3),
        p99=round(quantiles.p99 * 1000, 3),
    )


def _provider(s: ProviderSnapshot) -> ProviderInfo:
    changes = s.transitions[-RECENT_CHANGES:]
    fields = {
        "name": s.name,
        "kind": s.kind,
        "preset": s.preset,
        "status": s.status.value,
        "health": s.health.value,
        "breaker": s.breaker.value,
        "times_ejected": s.times_ejected,
        "ejected_until": s.ejected_until,
        "features": list(s.features),
        "models": list(s.models),
        "priority": s.priority,
        "weight": s.weight,
        "last_check_at": s.last_check_at,
        "last_check_ok": s.last_check_ok,
        "requests": s.requests,
        "successes": s.successes,
        "errors": dict(s.errors),
        "consecutive_errors": s.consecutive_errors,
        "in_flight": s.in_flight,
        "success_rate": s.success_rate,
        "latency_ewma_ms": _ms(s.latency_ewma),
        "latency_ms": _percentiles(s.latency),
        "ttft_ms": _percentiles(s.ttft),
        "prompt_tokens": s.prompt_tokens,
        "completion_tokens": s.completion_tokens,
        "last_error": s.last_error,
        "recent_changes": [
            {"at": c.at, "status": c.status.value, "cause": c.cause} for c in changes
        ],
    }
    return ProviderInfo.model_validate(fields)


def _health(result: HealthResult, snapshot: ProviderSnapshot) -> HealthCheckInfo:
    return HealthCheckInfo.model_validate(
        {
            "provider": result.provider,
            "ok": result.ok,
            "latency_ms": round(result.latency * 1000, 3),
            "error": result.error,
            "status": snapshot.status.value,
            "health": snapshot.health.value,
        }
    )
