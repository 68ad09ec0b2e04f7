"""Gateways, MCP clients and a loopback server thread for the leapmcp tests."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.server import MCPServer
from mcp.types import CallToolResult, TextContent
from starlette.types import ASGIApp

from leapasgi import Gateway
from leapasgi.clock import Clock, FakeClock
from leapasgi.config import (
    GatewayConfig,
    HealthConfig,
    ProviderConfig,
    RoutingConfig,
    ServerConfig,
)
from leapasgi.manager import ProviderManager
from leapasgi.providers.mock import MockProvider
from tests.asgi.live_server import Lifespan, Loop, ServerThread

__all__ = [
    "ACCEPT",
    "HOST",
    "INITIALIZE",
    "connect",
    "fast_routing",
    "http_client",
    "http_session",
    "make_gateway",
    "mock_config",
    "mock_of",
    "served",
    "structured",
    "text",
]

HOST = "127.0.0.1"

# A raw 2025-era initialize request, for tests that speak HTTP without the SDK.
INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-11-25",
        "capabilities": {},
        "clientInfo": {"name": "raw", "version": "1"},
    },
}
# The Accept header Streamable HTTP requires.
ACCEPT = {"accept": "application/json, text/event-stream"}


def mock_config(
    name: str = "mock", *, models: tuple[str, ...] = ("mock-chat",), **options: Any
) -> ProviderConfig:
    """The built-in mock provider."""
    return ProviderConfig(name=name, type="mock", models=list(models), **options)


def fast_routing(**options: Any) -> RoutingConfig:
    """Routing whose backoff never waits."""
    return RoutingConfig(retry_initial_delay=0.0, retry_max_delay=0.0, **options)


def make_gateway(
    *providers: ProviderConfig,
    clock: Clock | None = None,
    routing: RoutingConfig | None = None,
    health: HealthConfig | None = None,
    **server: Any,
) -> Gateway:
    """A gateway over ``providers`` (the mock by default), health checks off, fake clock."""
    config = GatewayConfig(
        providers=list(providers) or [mock_config()],
        routing=routing or fast_routing(),
        health=health or HealthConfig(interval=0),
        server=ServerConfig(**server),
    )
    manager = ProviderManager.from_config(config, clock=clock or FakeClock())
    return Gateway(manager, config=config)


def mock_of(gateway: Gateway, name: str = "mock") -> MockProvider:
    """The mock provider registered as ``name``."""
    provider = gateway.manager.registry.get(name).provider
    assert isinstance(provider, MockProvider)
    return provider


@contextlib.asynccontextmanager
async def connect(server: MCPServer, mode: str = "auto") -> AsyncIterator[Client]:
    """An in-process client of ``server`` (``mode="legacy"`` goes through JSON-RPC)."""
    async with Client(server, mode=mode, raise_exceptions=True) as client:
        yield client


def structured(result: CallToolResult) -> dict[str, Any]:
    """A successful result's structured content, checked against its text twin."""
    assert not result.is_error, text(result)
    assert result.structured_content is not None
    assert json.loads(text(result)) == result.structured_content
    return dict(result.structured_content)


def text(result: CallToolResult) -> str:
    """The text of a result's single text block."""
    [block] = result.content
    assert isinstance(block, TextContent)
    return block.text


def http_client(*, key: str | None = None, **headers: str) -> httpx2.AsyncClient:
    """An HTTP client for the SDK's transport, with a bearer key if given; no proxies."""
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    return httpx2.AsyncClient(headers=headers, trust_env=False, timeout=10.0)


@contextlib.asynccontextmanager
async def http_session(
    url: str, *, key: str | None = None, mode: str = "auto"
) -> AsyncIterator[Client]:
    """An SDK client of the Streamable HTTP endpoint at ``url``."""
    async with http_client(key=key) as http:
        transport = streamable_http_client(url, http_client=http)
        async with Client(transport, mode=mode) as client:
            yield client


@contextlib.contextmanager
def served(
    make_app: Callable[[], ASGIApp], *, lifespan: Lifespan = "on", loop: Loop = "uvloop"
) -> Iterator[str]:
    """Serve the app on 127.0.0.1 in a thread, on uvloop as ``leapmcp --http`` runs; yields
    its base URL (``http://127.0.0.1:N``)."""

    async def build(stack: contextlib.AsyncExitStack) -> ASGIApp:
        return make_app()

    thread = ServerThread(build, lifespan=lifespan, loop=loop)
    thread.start()
    try:
        thread.wait_ready()
        yield f"http://{HOST}:{thread.port}"
    finally:
        thread.stop()
