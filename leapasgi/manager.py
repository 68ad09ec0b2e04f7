"""The provider manager: route, pick, attempt, retry, fail over; and the health-check worker.

Many providers behave like one: ``await manager.chat(request)`` and
``async for chunk in manager.stream(request)``. Retries and failovers share one deadline and
one attempt budget per request; providers registered here have their own retries switched off,
so attempts never multiply across layers.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import logging
import os
import random
from collections.abc import AsyncIterator, Awaitable, Iterable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import TypeVar

from pydantic import SecretStr

from ._redact import public_url
from .attempts import BUSY_RETRY_AFTER, RequestAttempts
from .balancing import Candidate, Strategy, order
from .clock import Clock, SystemClock
from .config import GatewayConfig, HealthConfig, ProviderConfig, RoutingConfig
from .deadline import REQUEST_DEADLINE
from .exceptions import (
    DeadlineExceededError,
    FirstByteTimeoutError,
    LeapError,
    ProviderBusyError,
    StreamInterruptedError,
    UpstreamUnavailableError,
)
from .health import BreakerPolicy
from .managed_stream import ManagedStream, for_route
from .providers.base import Provider
from .providers.compatible import OpenAICompatibleProvider
from .providers.presets import PRESETS
from .registry import ProviderEntry, ProviderStatus, Registry, RouteSettings
from .retry import RetryPolicy
from .routing import Alias, Route, RouteTable
from .streaming import ChunkBatch
from .trail import RoutingTrail
from .types import ChatCompletion, ChatCompletionRequest, Model, Usage

__all__ = ["HealthResult", "ManagedStream", "ProviderManager"]

logger = logging.getLogger("leapasgi.manager")

_T = TypeVar("_T")
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
    """Routes requests over the registry's providers, with failover, breakers and health checks."""

    def __init__(
        self,
        *,
        registry: Registry | None = None,
        routing: RoutingConfig | None = None,
        health: HealthConfig | None = None,
        clock: Clock | None = None,
        rng: random.Random | None = None,
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
                name: Alias(tuple(alias.targets), alias.strategy)
                for name, alias in self.routing.aliases.items()
            },
        )
        self._rng = rng or random.Random()
        self._cursors: dict[str, itertools.count[int]] = {}
        self._policies: dict[int, RetryPolicy] = {}
        self._worker: asyncio.Task[None] | None = None
        self._started = False
        self._start_lock: asyncio.Lock | None = None

    @classmethod
    def from_config(
        cls,
        config: GatewayConfig,
        *,
        clock: Clock | None = None,
        rng: random.Random | None = None,
        env: Mapping[str, str] | None = None,
    ) -> ProviderManager:
        """A manager with every enabled provider of ``config`` registered."""
        manager = cls(routing=config.routing, health=config.health, clock=clock, rng=rng)
        for provider in config.enabled_providers(env=env):
            manager.register(provider, env=env)
        return manager

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
            honors_deadline=_honors_deadline(provider),
            max_in_flight=config.max_in_flight,
            max_waiting=config.max_waiting,
        )
        return self.registry.register(provider, settings, replace=True)

    def register_provider(
        self, provider: Provider, settings: RouteSettings | None = None
    ) -> ProviderEntry:
        """Register a provider object built elsewhere (replacing one of the same name)."""
        settings = settings or RouteSettings()
        if not settings.honors_deadline and _honors_deadline(provider):
            settings = dataclasses.replace(settings, honors_deadline=True)
        return self.registry.register(provider, settings, replace=True)

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
        """Unregister a provider and close it."""
        entry = self.registry.remove(name)
        await entry.provider.aclose()

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

    async def start(self) -> None:
        """Discover model lists and start the health-check worker; safe to call twice."""
        if self._started:
            return
        if self._start_lock is None:
            self._start_lock = asyncio.Lock()
        async with self._start_lock:
            if self._started:
                return
            await self.discover_models()
            if self.health.interval > 0 and self._worker is None:
                self._worker = asyncio.create_task(self._health_loop(), name="leapasgi-health")
            self._started = True

    async def aclose(self) -> None:
        """Stop the worker and close every provider."""
        worker, self._worker = self._worker, None
        if worker is not None:
            worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await worker
        self._started = False
        await asyncio.gather(*(entry.provider.aclose() for entry in self.registry))

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
            logger.warning("model discovery failed for %s: %s", entry.name, _reason(exc))
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
        while True:
            try:
                await self.check_health()
            except Exception:  # the worker must outlive any one bad round
                logger.exception("health-check round failed")
            await self._clock.sleep(self.health.interval)

    # Serving

    async def chat(self, request: ChatCompletionRequest) -> ChatCompletion:
        """One completion from the best provider that can serve it."""
        completion, _ = await self.chat_with_trail(request)
        return completion

    async def chat_with_trail(
        self, request: ChatCompletionRequest
    ) -> tuple[ChatCompletion, RoutingTrail]:
        """``chat``, with the routing trail of the request."""
        await self.start()
        attempts = self._plan(request, RoutingTrail())
        token = REQUEST_DEADLINE.set((self._clock, attempts.deadline))
        try:
            while (route := await attempts.next()) is not None:
                entry = self.registry.get(route.provider)
                if entry.limit is not None and not await self._take_slot(entry, route, attempts):
                    continue
                started = self._clock.monotonic()
                try:
                    result = await self._attempt_chat(entry, route, request, attempts.deadline)
                except LeapError as exc:
                    attempts.failed(route, entry, exc, started)
                    continue
                attempts.succeeded(route, self._clock.monotonic() - started)
                return result, attempts.trail
        finally:
            REQUEST_DEADLINE.reset(token)
        raise attempts.exhausted()

    def stream(self, request: ChatCompletionRequest) -> ManagedStream:
        """A streamed completion; failover happens only before the first chunk is handed on."""
        return ManagedStream(self, request)

    async def list_models(self) -> list[Model]:
        """Every model the manager can route, aliases included."""
        await self.start()
        created = int(self._clock.time())
        return [
            Model(id=name, created=created, owned_by=",".join(providers) or "leapasgi")
            for name, providers in sorted(self.routes.models().items())
        ]

    # Attempts

    async def _take_slot(
        self, entry: ProviderEntry, route: Route, attempts: RequestAttempts
    ) -> bool:
        """Hold one of ``entry``'s slots, waiting in its line within the request's deadline;
        False, with the skip in the trail, when the provider is full."""
        limit = entry.limit
        assert limit is not None
        if limit.try_acquire():
            return True
        remaining = attempts.deadline - self._clock.monotonic()
        # With a place in line, a refusal means the wait used up the request's time.
        in_line = remaining > 0 and limit.waiting < limit.max_waiting
        if await limit.acquire(remaining):
            return True
        attempts.overflowed(
            route,
            ProviderBusyError(
                f"Provider {entry.name!r} is at its concurrency limit "
                f"({limit.max_in_flight} in flight, {limit.max_waiting} waiting)",
                provider=entry.name,
                retry_after=BUSY_RETRY_AFTER,
            ),
            out_of_time=in_line,
        )
        return False

    async def _attempt_chat(
        self,
        entry: ProviderEntry,
        route: Route,
        request: ChatCompletionRequest,
        deadline: float,
    ) -> ChatCompletion:
        started = self._clock.monotonic()
        entry.begin()
        try:
            result = await self._bounded(
                entry.provider.chat(for_route(route, request)), entry, deadline
            )
        except LeapError:
            raise
        except BaseException:
            entry.abandoned()
            raise
        finally:
            entry.end()
        usage = result.usage or Usage()
        entry.succeeded(
            self._clock.monotonic() - started,
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens,
        )
        return result

    async def _first_batch(
        self, batches: AsyncIterator[ChunkBatch], entry: ProviderEntry, deadline: float
    ) -> ChunkBatch:
        limit = self.routing.first_token_timeout
        remaining = deadline - self._clock.monotonic()
        try:
            while True:
                if limit and limit < remaining:
                    try:
                        async with asyncio.timeout(limit):
                            batch = await self._bounded(anext(batches), entry, None)
                    except TimeoutError:
                        raise FirstByteTimeoutError(
                            f"Provider {entry.name!r} sent no first token within {limit:g} s",
                            provider=entry.name,
                        ) from None
                else:
                    batch = await self._bounded(anext(batches), entry, deadline)
                if batch.chunks:
                    return batch
        except StopAsyncIteration:
            raise StreamInterruptedError(
                f"Provider {entry.name!r} ended the stream before its first chunk",
                provider=entry.name,
            ) from None

    async def _bounded(
        self, call: Awaitable[_T], entry: ProviderEntry, deadline: float | None
    ) -> _T:
        """Await ``call`` within the request deadline; foreign errors become LeapErrors."""
        try:
            if deadline is None:
                return await call
            if entry.settings.honors_deadline:
                return await call  # it stops at REQUEST_DEADLINE by itself
            remaining = deadline - self._clock.monotonic()
            async with asyncio.timeout(max(remaining, 0.0)):
                return await call
        except TimeoutError:
            raise DeadlineExceededError(
                f"The request did not finish within {self.routing.request_timeout:g} s",
                provider=entry.name,
                retryable=False,
            ) from None
        except (LeapError, StopAsyncIteration, asyncio.CancelledError):
            raise
        except Exception as exc:
            raise UpstreamUnavailableError(
                f"Provider {entry.name!r} failed unexpectedly ({type(exc).__name__})",
                provider=entry.name,
            ) from exc

    # Planning, failover and recording

    def _plan(self, request: ChatCompletionRequest, trail: RoutingTrail) -> RequestAttempts:
        routes = self.routes.routes(request)
        now = self._clock.monotonic()
        if len(routes) == 1:
            # One candidate: nothing to balance (the common case of a model one provider serves).
            status = self.registry.get(routes[0].provider).status
            off = status in (ProviderStatus.INACTIVE, ProviderStatus.MAINTENANCE)
            return self._attempts([] if off else routes, now, trail)
        alias = self.routes.aliases.get(request.model)
        strategy = Strategy(
            alias.strategy if alias is not None and alias.strategy else self.routing.strategy
        )
        # Least-latency probes a provider without a latency sample for as long as an ejection
        # lasts, so one that looked slow once is found again when it recovers.
        probe_after = self.health.base_ejection if strategy is Strategy.LEAST_LATENCY else None
        usable: dict[str, Route] = {}
        candidates = []
        for position, route in enumerate(routes):
            entry = self.registry.get(route.provider)
            if entry.status in (ProviderStatus.INACTIVE, ProviderStatus.MAINTENANCE):
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
        cursor = next(self._cursors.setdefault(request.model, itertools.count()))
        ordered = order(strategy, candidates, rng=self._rng, cursor=cursor)
        return self._attempts([usable[c.name] for c in ordered], now, trail)

    def _attempts(self, routes: list[Route], now: float, trail: RoutingTrail) -> RequestAttempts:
        return RequestAttempts(
            routes,
            registry=self.registry,
            clock=self._clock,
            rng=self._rng,
            policy=self._policy,
            max_attempts=self.routing.max_attempts,
            deadline=now + self.routing.request_timeout,
            trail=trail,
        )

    def _policy(self, max_retries: int) -> RetryPolicy:
        policy = self._policies.get(max_retries)
        if policy is None:
            routing = self.routing
            policy = self._policies[max_retries] = RetryPolicy(
                max_retries=max_retries,
                initial_delay=routing.retry_initial_delay,
                max_delay=routing.retry_max_delay,
                max_retry_after=routing.max_retry_after,
            )
        return policy


def _honors_deadline(provider: Provider) -> bool:
    return isinstance(provider, OpenAICompatibleProvider)


def _reason(exc: BaseException) -> str:
    return exc.message if isinstance(exc, LeapError) else type(exc).__name__
