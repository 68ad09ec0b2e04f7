"""The provider manager: the public façade over the registry, the dispatcher and the health
worker. Register providers, start and stop them, serve ``chat`` and ``stream`` (through the
dispatcher, which routes, retries and fails over within one deadline and one attempt budget),
and run health checks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import TracebackType

from pydantic import SecretStr

from ._logging import printable
from .clock import Clock, SystemClock
from .config import GatewayConfig, HealthConfig, ProviderConfig, RoutingConfig
from .dispatch import Batch, Dispatcher, UpstreamStream
from .exceptions import LeapError
from .health import BreakerPolicy, BreakerState
from .managed_stream import ManagedStream
from .native import NativeReply, ProtocolRequest
from .outcome import Outcome
from .providers.base import Provider
from .providers.presets import PRESETS
from .redact import public_url
from .registry import ProviderEntry, ProviderStatus, Registry, RouteSettings
from .routing import Alias, RouteTable
from .state import BreakerEvent, MemoryState, StateBackend
from .streaming import ChunkBatch
from .trail import RoutingTrail
from .types import ChatCompletion, ChatCompletionRequest, Model

__all__ = ["HealthResult", "ProviderManager"]

logger = logging.getLogger("leapasgi.manager")

# Presets load_default_providers registers when their key is present (Ollama is probed instead).
DEFAULT_PRESETS = ("openai", "groq", "together", "mistral", "deepseek", "openrouter", "fireworks")
OLLAMA_PROBE_TIMEOUT = 1.0


@dataclass(frozen=True, slots=True)
class HealthResult:
    """The outcome of one active health check."""

    provider: str
    ok: bool
    latency: float
    error: str | None = None


class ProviderManager:
    """Providers registered, started and stopped; requests served through the dispatcher;
    health checks run in the background."""

    def __init__(
        self,
        *,
        registry: Registry | None = None,
        routing: RoutingConfig | None = None,
        health: HealthConfig | None = None,
        clock: Clock | None = None,
        rng: random.Random | None = None,
        state: StateBackend | None = None,
    ) -> None:
        self._clock = clock or (registry.clock if registry is not None else SystemClock())
        self.routing = routing or RoutingConfig()
        self.health = health or HealthConfig()
        policy = BreakerPolicy(
            failure_threshold=self.health.failure_threshold,
            base_ejection=self.health.base_ejection,
            max_ejection=self.health.max_ejection,
        )
        self.registry = registry or Registry(clock=self._clock, policy=policy)
        self.routes = RouteTable(
            self.registry,
            {
                name: Alias(tuple(alias.targets), alias.strategy, alias.sticky, alias.hedge)
                for name, alias in self.routing.aliases.items()
            },
            sticky=self.routing.sticky,
            hedged=frozenset(self.routing.hedge_models),
        )
        # Breakers' news, rate limits and sessions: this process's, unless a backend is given.
        self.state: StateBackend = state or MemoryState(clock=self._clock)
        self.dispatcher = Dispatcher(
            self.registry,
            self.routes,
            routing=self.routing,
            health=self.health,
            state=self.state,
            clock=self._clock,
            rng=rng or random.Random(),
        )
        self.registry.observe(None if self.state.kind == "memory" else self._publish)
        self._worker: asyncio.Task[None] | None = None
        self._started = False
        self._start_lock: asyncio.Lock | None = None
        # Replaced or removed providers: waiting for their requests to finish, then closing.
        self._retired: list[Provider] = []
        self._closing: set[asyncio.Task[None]] = set()

    @classmethod
    def from_config(
        cls,
        config: GatewayConfig,
        *,
        clock: Clock | None = None,
        rng: random.Random | None = None,
        env: Mapping[str, str] | None = None,
        state: StateBackend | None = None,
    ) -> ProviderManager:
        """A manager with every enabled provider of ``config`` registered."""
        manager = cls(
            routing=config.routing, health=config.health, clock=clock, rng=rng, state=state
        )
        for provider in config.enabled_providers(env=env):
            manager.register(provider, env=env)
        return manager

    def use_state(self, state: StateBackend) -> None:
        """Keep breakers, holds, rate limits and sessions in ``state`` (before ``start``);
        a shared one hears of every ejection and tells the other replicas."""
        self.state = state
        self.dispatcher.use_state(state)
        self.registry.observe(None if state.kind == "memory" else self._publish)

    def _publish(self, entry: ProviderEntry) -> None:
        """Tell the other replicas of ``entry``'s ejection, hold or recovery."""
        breaker = entry.breaker
        clock = self._clock
        offset = clock.time() - clock.monotonic()
        until = breaker.open_until if breaker.state is not BreakerState.CLOSED else None
        held = breaker.held_until
        self.state.board.publish(
            BreakerEvent(
                entry.name,
                at=clock.time(),
                open_until=until + offset if until is not None else None,
                hold_until=held + offset if held is not None else None,
                rate_limited=entry.held_for_rate_limit,
                times_ejected=breaker.times_ejected,
            )
        )

    def _adopt(self, event: BreakerEvent) -> None:
        """Apply another replica's breaker event."""
        if event.provider not in self.registry:
            return
        clock = self._clock
        offset = clock.monotonic() - clock.time()
        self.registry.get(event.provider).adopt(
            open_until=None if event.open_until is None else event.open_until + offset,
            hold_until=None if event.hold_until is None else event.hold_until + offset,
            rate_limited=event.rate_limited,
            times_ejected=event.times_ejected,
            at=event.at + offset,
        )

    # Registration

    def register(
        self, config: ProviderConfig, *, env: Mapping[str, str] | None = None
    ) -> ProviderEntry:
        """Build and register a provider from its config (replacing one of the same name)."""
        provider = config.build(clock=self._clock, env=env)
        settings = RouteSettings(
            priority=config.priority,
            weight=config.weight,
            max_retries=config.max_retries,
            models=tuple(config.models),
            kind=config.type,
            preset=config.preset,
            # For display only (snapshots): never the query or user info a key may sit in.
            base_url=public_url(url) if (url := config.resolved_base_url) else None,
            max_in_flight=config.max_in_flight,
            max_waiting=config.max_waiting,
            adaptive=config.adaptive_concurrency,
            min_in_flight=config.min_in_flight,
            rpm=config.rpm,
            tpm=config.tpm,
            model_limits=tuple(
                (model, limit.rpm, limit.tpm) for model, limit in config.model_limits.items()
            ),
        )
        return self.register_provider(provider, settings)

    def register_provider(
        self, provider: Provider, settings: RouteSettings | None = None
    ) -> ProviderEntry:
        """Register a provider object built elsewhere. One of the same name is replaced, and
        closed once its requests in flight have finished."""
        registry = self.registry
        old = registry.get(provider.name) if provider.name in registry else None
        entry = registry.register(provider, settings or RouteSettings(), replace=True)
        if old is not None and old.provider is not provider:
            self._retire(old)
        return entry

    def register_openai_compatible(
        self,
        name: str,
        base_url: str,
        api_key: str | SecretStr | None = None,
        *,
        models: Iterable[str] | None = None,
    ) -> ProviderEntry:
        """Register any OpenAI-compatible endpoint."""
        config = ProviderConfig(
            name=name,
            base_url=base_url,
            api_key=SecretStr(api_key) if isinstance(api_key, str) else api_key,
            models=list(models or ()),
        )
        return self.register(config)

    async def load_default_providers(
        self,
        api_keys: Mapping[str, str] | None = None,
        *,
        ollama_url: str | None = None,
    ) -> list[str]:
        """Register each preset whose key is in ``api_keys`` (else the environment), and Ollama
        when its local endpoint answers; returns the names registered."""
        keys = os.environ if api_keys is None else api_keys
        names = []
        for name in DEFAULT_PRESETS:
            env_var = PRESETS[name].api_key_env
            key = keys.get(env_var) if env_var else None
            if key:
                self.register(ProviderConfig(name=name, preset=name, api_key=SecretStr(key)))
                names.append(name)
        ollama = ProviderConfig(name="ollama", preset="ollama", base_url=ollama_url)
        probe = ollama.build(clock=self._clock)
        try:
            async with asyncio.timeout(OLLAMA_PROBE_TIMEOUT):
                await probe.check_health()
        except (LeapError, TimeoutError):
            await probe.aclose()
        else:
            self.register_provider(probe, RouteSettings(kind="openai_compatible", preset="ollama"))
            names.append("ollama")
        return names

    async def remove(self, name: str) -> None:
        """Unregister a provider; it is closed once its requests in flight have finished."""
        self._retire(self.registry.remove(name))

    def _retire(self, entry: ProviderEntry) -> None:
        provider = entry.provider
        self._retired.append(provider)
        entry.reclaim(self._clock.monotonic())
        entry.when_idle(lambda: self._close_retired(provider))

    def _close_retired(self, provider: Provider) -> None:
        if provider not in self._retired:
            return  # the manager closed it already
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # replaced before anything ran: closed with the manager
        self._retired.remove(provider)
        task = loop.create_task(provider.aclose(), name=f"leapasgi-close-{provider.name}")
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    # Lifecycle

    async def __aenter__(self) -> ProviderManager:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    @property
    def started(self) -> bool:
        """True from ``start()`` (models discovered, health checks running) to ``aclose()``."""
        return self._started

    async def start(self) -> None:
        """Discover model lists and start the health-check worker; safe to call twice."""
        if self._started:
            return
        if self._start_lock is None:
            self._start_lock = asyncio.Lock()
        async with self._start_lock:
            if self._started:
                return
            await self.state.start(self._adopt)
            await self.discover_models()
            if self.health.interval > 0 and self._worker is None:
                self._worker = asyncio.create_task(self._health_loop(), name="leapasgi-health")
            self._started = True

    async def aclose(self) -> None:
        """Stop the worker and close every provider, replaced ones included."""
        worker, self._worker = self._worker, None
        if worker is not None:
            worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await worker
        self._started = False
        retired, self._retired = self._retired, []
        providers = [entry.provider for entry in self.registry]
        await asyncio.gather(*(p.aclose() for p in (*providers, *retired)), *self._closing)
        await self.state.aclose()

    async def discover_models(self) -> None:
        """Ask every provider without a configured model list for its models."""
        pending = [
            e for e in self.registry if not e.settings.models and e.discovered_models is None
        ]
        await asyncio.gather(*(self._discover(entry) for entry in pending))

    async def _discover(self, entry: ProviderEntry) -> None:
        try:
            async with asyncio.timeout(self.health.timeout):
                models = await entry.provider.list_models()
        except (LeapError, TimeoutError) as exc:
            reason = printable(_reason(exc))  # the upstream's words: never a forged line
            logger.warning("model discovery failed for %s: %s", entry.name, reason)
            return
        entry.discovered_models = tuple(model.id for model in models)
        self.registry.touch()

    # Health

    async def check_health(self, name: str | None = None) -> list[HealthResult]:
        """Run active health checks now (one provider, or all but inactive ones), in parallel."""
        if name is not None:
            entries = [self.registry.get(name)]
        else:
            entries = [e for e in self.registry if e.status is not ProviderStatus.INACTIVE]
        return list(await asyncio.gather(*(self._check(entry) for entry in entries)))

    async def _check(self, entry: ProviderEntry) -> HealthResult:
        started = self._clock.monotonic()
        error: str | None = None
        try:
            async with asyncio.timeout(self.health.timeout):
                await entry.provider.check_health()
        except TimeoutError:
            error = f"health check timed out after {self.health.timeout:g} s"
        except LeapError as exc:
            error = exc.message
        except Exception as exc:  # a custom provider's bug must not kill the worker
            error = f"health check failed ({type(exc).__name__})"
        entry.checked(error is None, f"health check: {error or 'ok'}")
        return HealthResult(entry.name, error is None, self._clock.monotonic() - started, error)

    async def _health_loop(self) -> None:
        # One replica checks at a time; the others learn the results from the state backend.
        lease = max(2 * self.health.interval, self.health.interval + self.health.timeout)
        while True:
            try:
                if await self.state.lock.acquire("health", lease):
                    await self.check_health()
                now = self._clock.monotonic()
                for entry in self.registry:
                    entry.reclaim(now)
            except Exception:  # the worker must outlive any one bad round
                logger.exception("health-check round failed")
            await self._clock.sleep(self.health.interval)

    # Serving

    async def chat(
        self,
        request: ChatCompletionRequest,
        *,
        prefer: str | None = None,
        outcome: Outcome | None = None,
    ) -> ChatCompletion:
        """One completion from the best provider that can serve it; ``prefer`` names a
        provider to try first. ``outcome``, when given, records how the request went; errors
        carry the routing trail either way."""
        if not self._started:
            await self.start()
        return await self.dispatcher.complete(request, outcome or Outcome(), prefer=prefer)

    async def chat_with_trail(
        self, request: ChatCompletionRequest
    ) -> tuple[ChatCompletion, RoutingTrail]:
        """``chat``, with the routing trail of the request."""
        outcome = Outcome()
        completion = await self.chat(request, outcome=outcome)
        return completion, outcome.trail

    def stream(
        self,
        request: ChatCompletionRequest,
        *,
        prefer: str | None = None,
        outcome: Outcome | None = None,
    ) -> ManagedStream[ChunkBatch]:
        """A streamed completion; failover happens only before the first chunk is handed on.
        Close it (``aclose()`` or ``async with``) if you stop before its end."""
        outcome = outcome or Outcome()

        async def open_stream() -> UpstreamStream[ChunkBatch]:
            if not self._started:
                await self.start()
            return await self.dispatcher.open_stream(request, outcome, prefer=prefer)

        return ManagedStream(open_stream, outcome)

    async def exchange(
        self,
        request: ProtocolRequest,
        *,
        prefer: str | None = None,
        outcome: Outcome | None = None,
    ) -> NativeReply | ChatCompletion:
        """One answer to a request in another protocol (Responses, Messages, embeddings): the
        upstream's own from a provider that speaks it, else a chat completion to translate."""
        if not self._started:
            await self.start()
        return await self.dispatcher.exchange(request, outcome or Outcome(), prefer=prefer)

    def open_exchange(
        self,
        request: ProtocolRequest,
        *,
        prefer: str | None = None,
        outcome: Outcome | None = None,
    ) -> ManagedStream[Batch]:
        """A stream in another protocol: native events from a provider that speaks it, else
        chat chunks to translate; failover happens until the first content."""
        outcome = outcome or Outcome()

        async def open_stream() -> UpstreamStream[Batch]:
            if not self._started:
                await self.start()
            return await self.dispatcher.open_exchange(request, outcome, prefer=prefer)

        return ManagedStream(open_stream, outcome)

    async def list_models(self) -> list[Model]:
        """Every model the manager can route, aliases included."""
        await self.start()
        created = int(self._clock.time())
        return [
            Model(id=name, created=created, owned_by=",".join(providers) or "leapasgi")
            for name, providers in sorted(self.routes.models().items())
        ]


def _reason(exc: BaseException) -> str:
    return exc.message if isinstance(exc, LeapError) else type(exc).__name__
