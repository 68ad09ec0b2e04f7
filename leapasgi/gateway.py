"""The Gateway: a manager built from config, its lifetime, and the ASGI app that serves it."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Protocol

from ._logging import AccessLog
from .asgi.auth import KeyChecker
from .config import GatewayConfig, load_config
from .exceptions import LeapError
from .manager import ProviderManager
from .prometheus import GatewayMetrics
from .providers.base import Provider
from .trail import RoutingTrail

if TYPE_CHECKING:
    from .asgi.app import GatewayApp
from .types import ChatCompletionRequest

__all__ = ["Gateway", "Service"]

logger = AccessLog(logging.getLogger("leapasgi.access"))
_NO_PROVIDER = "none"


class Service(Protocol):
    """Something that starts and stops with a gateway, such as the MCP endpoint at /mcp."""

    async def start(self) -> None: ...

    async def aclose(self) -> None: ...


class Gateway:
    """One gateway: ``.app`` is its Starlette app; ``async with gateway`` runs its lifetime.

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
    ) -> None:
        self.config = config or GatewayConfig()
        self.manager = manager or ProviderManager.from_config(self.config, env=env)
        for provider in providers or ():
            self.manager.register_provider(provider)
        server = self.config.server
        self.auth = KeyChecker(server.api_keys)
        self.admin = KeyChecker([server.admin_key]) if server.admin_key is not None else None
        self.metrics = GatewayMetrics()
        self._app: GatewayApp | None = None
        self._services: list[Service] = []

    @classmethod
    def from_config(
        cls, config: str | Path | GatewayConfig, *, env: Mapping[str, str] | None = None
    ) -> Gateway:
        """A gateway from a TOML file (or a loaded config)."""
        if not isinstance(config, GatewayConfig):
            config = load_config(config, env=env)
        return cls(config=config, env=env)

    @property
    def app(self) -> GatewayApp:
        """The ASGI app, built once."""
        if self._app is None:
            from .asgi.app import build_app

            self._app = build_app(self)
        return self._app

    def add_service(self, service: Service) -> None:
        """Start ``service`` with the gateway and stop it first when the gateway closes."""
        self._services.append(service)

    async def start(self) -> None:
        """Start the manager (model discovery, health checks) and the services; safe to call
        twice."""
        await self.manager.start()
        for service in self._services:
            await service.start()

    async def aclose(self) -> None:
        """Stop the services and health checks, and close every provider's connections."""
        try:
            for service in reversed(self._services):
                await service.aclose()
        finally:
            await self.manager.aclose()
            logger.flush()  # every request has been logged by now

    async def __aenter__(self) -> Gateway:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def trail_headers(self, trail: RoutingTrail, started: float) -> list[tuple[bytes, bytes]]:
        """Which provider served, how many attempts it took, and the gateway's own time."""
        headers = [(b"x-leap-attempts", str(trail.tries).encode())]
        served = trail.served_by
        if served is not None:
            headers.append((b"x-leap-provider", served.provider.encode()))
        upstream = trail.upstream_seconds
        overhead = max(0.0, time.perf_counter() - started - upstream)
        headers.append((b"x-leap-overhead-ms", f"{overhead * 1000:.2f}".encode()))
        return headers

    def record_success(
        self,
        request: ChatCompletionRequest,
        trail: RoutingTrail,
        *,
        started: float,
        ttft: float | None = None,
        prompt_tokens: int = 0,
        completion_tokens: int = 0,
    ) -> None:
        """Count a served request in the metrics and the access log (no prompt, no key)."""
        latency = time.perf_counter() - started
        served = trail.served_by
        provider = served.provider if served is not None else _NO_PROVIDER
        upstream = trail.upstream_seconds
        self.metrics.record(
            provider=provider,
            model=request.model,
            status=200,
            latency=latency,
            overhead=max(0.0, latency - upstream) if ttft is None else max(0.0, ttft - upstream),
            ttft=ttft,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            stream=bool(request.stream),
        )
        logger.info(
            "chat model=%s provider=%s status=200 attempts=%d ms=%.1f",
            request.model,
            provider,
            trail.tries,
            latency * 1000,
        )

    def record_failure(
        self, error: LeapError, *, started: float, request: ChatCompletionRequest | None
    ) -> None:
        """Count a failed request."""
        latency = time.perf_counter() - started
        provider = error.provider or _NO_PROVIDER
        model = request.model if request is not None else ""
        # Metric labels only for models the gateway routes: a client sending made-up names
        # must not grow /metrics without bound (the access log still names them).
        label = model if model and self.manager.routes.knows(model) else ""
        self.metrics.record_error(provider=provider, kind=type(error).__name__)
        self.metrics.record(
            provider=provider,
            model=label,
            status=error.http_status,
            latency=latency,
            overhead=latency,
            stream=bool(request and request.stream),
        )
        logger.info(
            "chat model=%s provider=%s status=%d error=%s attempts=%d ms=%.1f",
            model or "-",
            provider,
            error.http_status,
            type(error).__name__,
            error.attempts,
            latency * 1000,
        )

    def record_gone(self, request: ChatCompletionRequest, *, started: float) -> None:
        """Count a request whose client disconnected before the end."""
        latency = time.perf_counter() - started
        self.metrics.record(
            provider=_NO_PROVIDER,
            model=request.model,
            status=499,
            latency=latency,
            overhead=0.0,
            stream=bool(request.stream),
        )
        logger.info(
            "chat model=%s status=499 client went away ms=%.1f", request.model, latency * 1000
        )
