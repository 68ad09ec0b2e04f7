"""McpEndpoint's lifetime in process: it starts on first use or with the gateway, and stops."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from starlette.applications import Starlette
from starlette.routing import Route

from leapmcp import McpEndpoint
from tests.mcp.support import ACCEPT, INITIALIZE, make_gateway

pytestmark = pytest.mark.anyio

HEADERS = ACCEPT


def sessions() -> list[asyncio.Task[object]]:
    return [t for t in asyncio.all_tasks() if t.get_name() == "leapmcp-sessions" and not t.done()]


async def initialize(app: Starlette) -> httpx.Response:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8000") as http:
        return await http.post("/mcp", json=INITIALIZE, headers=HEADERS)


async def test_it_starts_on_first_use_and_stops_with_the_gateway() -> None:
    gateway = make_gateway()
    endpoint = McpEndpoint(gateway)
    gateway.add_service(endpoint)
    app = Starlette(routes=[Route("/mcp", endpoint)])
    assert sessions() == []
    response = await initialize(app)
    assert response.status_code == 200
    assert '"serverInfo":{"name":"leapasgi"' in response.text
    assert len(sessions()) == 1
    await gateway.aclose()
    assert sessions() == []


async def test_it_runs_with_each_lifetime_of_the_gateway() -> None:
    gateway = make_gateway()
    endpoint = McpEndpoint(gateway)
    gateway.add_service(endpoint)
    app = Starlette(routes=[Route("/mcp", endpoint)])
    for _ in range(2):
        async with gateway:
            [running] = sessions()
            assert (await initialize(app)).status_code == 200
            assert sessions() == [running]
        assert sessions() == []
        assert running.done()
