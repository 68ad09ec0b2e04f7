"""The gateway's core: what every front door (HTTP, MCP) shares, and its lifetime.

A config becomes a manager (providers, dispatcher, health checks), an access policy (keys), a
recorder (metrics and the access log, fed by each request's ``Outcome``) and the services that
start and stop with it. It knows nothing of HTTP: ``leapasgi.Gateway`` adds the ASGI app on top.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Protocol, Self

from starlette.types import Scope

from .access import AccessPolicy
from .cache import ResponseCache
from .config import GatewayConfig, load_config
from .conversations import ResponseStore
from .exceptions import LeapError
from .genai_metrics import GenAIMetrics
from .hooks import HookChain
from .manager import ProviderManager
from .outcome import Outcome
from .prometheus import GatewayMetrics
from .providers.base import Provider
from .recorder import OutcomeRecorder
from .state import StateBackend, build_state
from .tenants.identity import Authenticate
from .tenants.tenancy import Tenancy
from .tracing import Tracing

if TYPE_CHECKING:
    from opentelemetry.metrics import MeterProvider
    from opentelemetry.trace import TracerProvider

__all__ = ["GatewayCore", "Service"]


class Service(Protocol):
    """Something that starts and stops with a gateway, such as the MCP endpoint at /mcp."""

    async def start(self) -> None: ...

    async def aclose(self) -> None: ...


class GatewayCore:
    """One gateway's providers, keys, metrics and lifetime; ``async with`` runs the lifetime.

    Mounted apps get no lifespan events, so the manager also starts on first use; the host's
    lifespan can instead start and stop it with ``async with gateway:``.
    """

    def __init__(
        self,
        manager: ProviderManager | None = None,
        *,
        config: GatewayConfig | None = None,
        providers: Iterable[Provider] | None = None,
        env: Mapping[str, str] | None = None,
        response_store: ResponseStore | None = None,
        state: StateBackend | None = None,
        authenticate: Authenticate | None = None,
        hooks: Iterable[object] | None = None,
        tracer_provider: TracerProvider | None = None,
        meter_provider: MeterProvider | None = None,
    ) -> None:
        self.config = config = config or GatewayConfig()
        clock = manager.registry.clock if manager is not None else None
        # Breakers, limits, the cache, sessions and conversations: in this process, or shared.
        self.state: StateBackend = state or build_state(
            config.state, config.cache, clock=clock, env=env
        )
        if manager is None:
            manager = ProviderManager.from_config(config, env=env, state=self.state)
        else:
            manager.use_state(self.state)
        self.manager = manager
        responses = config.responses
        # The Responses API's conversations, kept by the state backend unless one is given.
        self.response_store: ResponseStore = response_store or self.state.responses(
            ttl=responses.store_ttl,
            max_entries=responses.store_max_entries,
            max_bytes=responses.store_max_bytes,
        )
        # The exact response cache: None when switched off (then it costs nothing).
        self.cache: ResponseCache | None = (
            ResponseCache(config.cache, self.state.cache, clock=self.manager.registry.clock)
            if config.cache.enabled
            else None
        )
        # Session headers, read only when some route routes sticky.
        self.session_headers: tuple[bytes, ...] = (
            tuple(name.encode() for name in config.routing.session_headers)
            if self.manager.routes.sticky_anywhere
            else ()
        )
        for provider in providers or ():
            self.manager.register_provider(provider)
        server = self.config.server
        self.access = AccessPolicy(server.api_keys, server.admin_key)
        self.metrics = GatewayMetrics()
        self.recorder = OutcomeRecorder(
            self.metrics,
            listed=self.manager.routes.listed,
            structured=config.server.log_format == "json",
        )
        # Who calls (keys, OAuth2 tokens, the host's own users), what each may use, and what
        # each spent: every request is accounted to its tenant.
        self.tenancy = Tenancy(
            config,
            self.state,
            clock=self.manager.registry.clock,
            routes=self.manager.routes,
            authenticate=authenticate,
        )
        self.recorder.accountant = self.tenancy.account
        self.manager.dispatcher.admit = self.tenancy.admit
        self.manager.dispatcher.price = self.tenancy.price
        # Request hooks: the config's, then the code's; none costs nothing.
        chain = [*(hook.hook for hook in config.hooks), *(hooks or ())]
        if chain:
            self.manager.dispatcher.hooks = HookChain(chain)
        # OpenTelemetry traces: built (and opentelemetry imported) only when asked for.
        telemetry = config.telemetry
        if tracer_provider is not None or telemetry.traces:
            tracing = Tracing(tracer_provider, capture_content=telemetry.capture_content)
            self.recorder.tracing = self.manager.dispatcher.tracing = tracing
        if meter_provider is not None or telemetry.metrics:
            self.recorder.genai = GenAIMetrics(meter_provider)
        self._services: list[Service] = []

    @classmethod
    def from_config(
        cls, config: str | Path | GatewayConfig, *, env: Mapping[str, str] | None = None
    ) -> Self:
        """A gateway from a TOML file (or a loaded config)."""
        if not isinstance(config, GatewayConfig):
            config = load_config(config, env=env)
        return cls(config=config, env=env)

    def outcome(self, operation: str = "chat") -> Outcome:
        """A new request's outcome, counted in the metrics and the access log when its
        ``with`` block ends."""
        return self.recorder.outcome(operation)

    async def refusal(self, scope: Scope, *, resource: str = "") -> LeapError | None:
        """None when the caller of this request may use the API (it is identified, and kept
        in the scope); else the error it is answered with (401, 403, 503)."""
        try:
            await self.tenancy.identity.identify(scope, resource=resource)
        except LeapError as error:
            return error
        return None

    def secrets(self) -> Iterator[str]:
        """Every secret the gateway holds: its keys and each provider's, for scrubbing."""
        server = self.config.server
        for key in (*server.api_keys, server.admin_key):
            if key is not None:
                yield key.get_secret_value()
        for entry in self.manager.registry:
            yield from entry.provider.secrets()

    def add_service(self, service: Service) -> None:
        """Start ``service`` with the gateway and stop it first when the gateway closes."""
        self._services.append(service)

    async def start(self) -> None:
        """Start the manager (model discovery, health checks) and the services; safe to call
        twice."""
        await self.manager.start()  # it starts the state backend first
        await self.tenancy.start()
        for service in self._services:
            await service.start()

    async def aclose(self) -> None:
        """Stop the services and health checks, and close every provider's connections."""
        try:
            for service in reversed(self._services):
                await service.aclose()
        finally:
            try:
                await self.tenancy.aclose()  # before the state backend it may write to
            finally:
                await self.manager.aclose()
                self.recorder.flush()  # every request has been logged by now

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
