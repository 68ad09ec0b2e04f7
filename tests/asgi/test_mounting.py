from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Mount, Route

from leapasgi import Gateway
from leapasgi.asgi import LeapMiddleware
from leapasgi.config import GatewayConfig, HealthConfig, ProviderConfig

pytestmark = pytest.mark.anyio

BODY = {"model": "mock-chat", "messages": [{"role": "user", "content": "hi"}]}


def make_gateway(interval: float = 0) -> Gateway:
    config = GatewayConfig(
        providers=[ProviderConfig(name="mock", type="mock")],
        health=HealthConfig(interval=interval),
    )
    return Gateway(config=config)


async def home(request: Request) -> Response:
    return PlainTextResponse("host app")


class Tagging(BaseHTTPMiddleware):
    async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        response = await call_next(request)
        response.headers["x-host"] = "yes"
        return response


def client(app: object) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://host")  # type: ignore[arg-type]


async def test_mounted_in_starlette_it_starts_on_first_use() -> None:
    gateway = make_gateway()
    app = Starlette(
        routes=[Route("/", home), Mount("/llm", app=gateway.app)],
        middleware=[Middleware(Tagging)],
    )
    assert not gateway.manager.started
    async with client(app) as c:
        answer = await c.post("/llm/v1/chat/completions", json=BODY)
        stream = await c.post("/llm/v1/chat/completions", json={**BODY, "stream": True})
        page = await c.get("/")
    assert gateway.manager.started
    assert answer.json()["choices"][0]["message"]["content"] == "You said: hi"
    assert answer.headers["x-host"] == "yes"
    assert stream.text.endswith("data: [DONE]\n\n")
    assert page.text == "host app"
    await gateway.aclose()


async def test_mounted_in_fastapi_with_the_gateway_in_the_host_lifespan() -> None:
    gateway = make_gateway(interval=3600)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with gateway:
            yield

    app = FastAPI(lifespan=lifespan)

    @app.get("/ping")
    async def ping() -> dict[str, str]:
        return {"pong": "yes"}

    app.mount("/llm", gateway.app)
    async with lifespan(app), client(app) as c:
        assert gateway.manager.started
        answer = await c.post("/llm/v1/chat/completions", json=BODY)
        models = await c.get("/llm/v1/models")
        ping_ = await c.get("/ping")
    assert answer.status_code == 200
    assert [m["id"] for m in models.json()["data"]] == ["mock-chat", "mock-embed"]
    assert ping_.json() == {"pong": "yes"}
    assert not gateway.manager.started


async def test_the_middleware_serves_gateway_routes_and_passes_the_rest() -> None:
    gateway = make_gateway()
    host = Starlette(routes=[Route("/", home), Route("/v1-not-ours", home)])
    app = LeapMiddleware(host, gateway, prefix="/v1")
    async with client(app) as c:
        answer = await c.post("/v1/chat/completions", json=BODY)
        page = await c.get("/")
        lookalike = await c.get("/v1-not-ours")
    assert answer.headers["x-leap-provider"] == "mock"
    assert page.text == lookalike.text == "host app"
    await gateway.aclose()


async def test_the_middleware_under_another_prefix() -> None:
    gateway = make_gateway()
    app = LeapMiddleware(Starlette(routes=[Route("/", home)]), gateway, prefix="/api/llm")
    async with client(app) as c:
        answer = await c.post("/api/llm/chat/completions", json=BODY)
        models = await c.get("/api/llm/models")
    assert answer.status_code == 200
    assert models.json()["object"] == "list"
    await gateway.aclose()


async def test_many_gateways_share_nothing_and_leave_nothing_running() -> None:
    before = {t for t in asyncio.all_tasks() if not t.done()}
    gateways = [make_gateway(interval=3600) for _ in range(20)]
    for gateway in gateways:
        async with gateway, client(gateway.app) as c:
            response = await c.post("/v1/chat/completions", json=BODY)
            assert response.status_code == 200
    for first, second in itertools.pairwise(gateways):
        assert first.manager.registry is not second.manager.registry
        assert first.metrics is not second.metrics
    await asyncio.sleep(0)
    leftover = {t for t in asyncio.all_tasks() if not t.done()} - before
    assert leftover <= {asyncio.current_task()}
