"""Rows 39-43: where the gateway's edges must hold whatever a name resolves to, whatever a key
holder asks for, and however the gateway is mounted."""

from __future__ import annotations

import socket
from typing import Any

import httpx
import pytest
from aiohttp.abc import AbstractResolver, ResolveResult
from pydantic import SecretStr
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from leapasgi import (
    Gateway,
    LeapMiddleware,
    OpenAICompatibleProvider,
    ProviderSettings,
    RouteSettings,
)
from leapasgi.config import GatewayConfig, HealthConfig, ProviderConfig, ServerConfig
from leapmcp import build_http_app
from tests.fake_upstream import FakeUpstream
from tests.mcp.support import http_session, served, text
from tests.reliability.harness import Figures, reliability_gateway

pytestmark = pytest.mark.anyio

CHAT = "/v1/chat/completions"
BODY: dict[str, Any] = {"model": "m1", "messages": [{"role": "user", "content": "hi"}]}
API_KEY = "sk-gw-bound-1a2b3c4d5e"
ADMIN_KEY = "sk-adm-bound-9f8e7d6c5b"


class _Names(AbstractResolver):
    """A resolver that knows a few names (no DNS leaves the machine)."""

    def __init__(self, names: dict[str, str]) -> None:
        self._names = names

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        address = self._names[host]
        return [
            ResolveResult(
                hostname=host,
                host=address,
                port=port,
                family=socket.AF_INET,
                proto=0,
                flags=socket.AI_NUMERICHOST,
            )
        ]

    async def close(self) -> None:
        return None


async def test_row39_the_metadata_guard_holds_on_the_address_connected_to(
    figures: Figures,
) -> None:
    names = {"metadata.nip.example": "169.254.169.254", "vllm.lan.example": "127.0.0.1"}
    async with FakeUpstream() as fake:

        def provider(name: str, host: str) -> OpenAICompatibleProvider:
            url = f"http://{host}:{fake.port}/v1"
            settings = ProviderSettings(name=name, base_url=url, api_key="up-key")
            return OpenAICompatibleProvider(settings, resolver=_Names(names))

        gateway = Gateway(config=GatewayConfig(health=HealthConfig(interval=0)))
        gateway.manager.register_provider(
            provider("sly", "metadata.nip.example"), RouteSettings(models=("sly-model",))
        )
        gateway.manager.register_provider(
            provider("lan", "vllm.lan.example"), RouteSettings(models=("m1",))
        )
        async with gateway:
            transport = httpx.ASGITransport(app=gateway.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://gw") as http:
                refused = await http.post(CHAT, json={**BODY, "model": "sly-model"})
                served_lan = await http.post(CHAT, json=BODY)
    figures.record(
        "39",
        "a name spelled harmlessly that resolves to 169.254.169.254: status, upstream requests",
        f"{refused.status_code}, {len(fake.chat_requests) - 1}",
        passed=refused.status_code >= 500 and len(fake.chat_requests) == 1,
    )
    figures.record(
        "39", "a LAN name resolving to loopback: status", served_lan.status_code, passed=True
    )
    assert refused.status_code >= 500
    assert "link-local or cloud metadata" in refused.json()["error"]["message"]
    assert served_lan.status_code == 200
    assert len(fake.chat_requests) == 1  # only the LAN provider's request was ever sent


def test_row40_made_up_model_names_do_not_grow_metrics(figures: Figures) -> None:
    server = ServerConfig(api_keys=[SecretStr(API_KEY)])
    key = {"Authorization": f"Bearer {API_KEY}"}
    with (
        reliability_gateway(server=server) as live,
        httpx.Client(base_url=f"http://127.0.0.1:{live.port}", timeout=10.0) as http,
    ):
        http.post(CHAT, json=BODY, headers=key)
        before = len(http.get("/metrics", headers=key).content)
        statuses = {
            http.post(
                CHAT, json={**BODY, "model": f"u1/{i:03d}{'x' * 10_000}"}, headers=key
            ).status_code
            for i in range(100)
        }
        after = http.get("/metrics", headers=key)
    grew = len(after.content) - before
    figures.record(
        "40",
        f"/metrics growth after 100 x 10 KB u1/<name> requests (statuses {sorted(statuses)}), B",
        grew,
        passed=grew < 4096,
        target="< 4 KB (was 18 MB)",
    )
    assert statuses == {200}  # u1 served them: a made-up name is still not a label
    assert grew < 4096
    assert 'model="m1"' in after.text


async def test_row41_an_api_key_has_the_same_rights_over_mcp_and_http(figures: Figures) -> None:
    server = ServerConfig(api_keys=[SecretStr(API_KEY)], admin_key=SecretStr(ADMIN_KEY))
    config = GatewayConfig(
        providers=[ProviderConfig(name="mock", type="mock", models=["mock-chat"])],
        health=HealthConfig(interval=0),
        server=server,
    )
    gateway = Gateway(config=config)
    with served(lambda: build_http_app(gateway)) as base:
        async with http_session(f"{base}/mcp", key=API_KEY) as client:
            tools = {
                name: await client.call_tool(name, {})
                for name in ("list_providers", "provider_stats", "health_check", "list_models")
            }
            chat = await client.call_tool("chat", {"model": "mock-chat", "prompt": "hi"})
    async with Gateway(config=config) as http_gateway:
        transport = httpx.ASGITransport(app=http_gateway.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as http:
            key = {"Authorization": f"Bearer {API_KEY}"}
            listing = await http.get("/v1/providers", headers=key)
            checks = await http.post("/v1/providers/health", headers=key)
    refused = sorted(name for name, result in tools.items() if result.is_error)
    figures.record(
        "41",
        "an API key over MCP: tools refused; over HTTP: GET /v1/providers, POST .../health",
        f"{', '.join(refused)}; {listing.status_code}, {checks.status_code}",
        passed=refused == ["health_check", "list_providers", "provider_stats"]
        and listing.status_code == checks.status_code == 403,
    )
    assert refused == ["health_check", "list_providers", "provider_stats"]
    assert all("admin key" in text(tools[name]) for name in refused)
    assert not chat.is_error
    assert listing.status_code == checks.status_code == 403


async def test_row42_leap_middleware_honours_root_path(figures: Figures) -> None:
    reached_host: list[str] = []

    async def host(request: Request) -> Response:
        reached_host.append(request.url.path)
        return PlainTextResponse("host app", status_code=404)

    config = GatewayConfig(
        providers=[ProviderConfig(name="mock", type="mock", models=["m1"])],
        health=HealthConfig(interval=0),
    )
    async with Gateway(config=config) as gateway:
        app = LeapMiddleware(Starlette(routes=[Route("/{rest:path}", host)]), gateway)
        transport = httpx.ASGITransport(app=app, root_path="/api")
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as http:
            answer = await http.post("/api" + CHAT, json=BODY)
            models = await http.get("/api/v1/models")
            page = await http.get("/api/home")
    figures.record(
        "42",
        "under root_path /api: chat and models served by the gateway, requests at the host app",
        f"{answer.status_code}, {models.status_code}, {len(reached_host)}",
        passed=answer.status_code == 200 and reached_host == ["/api/home"],
    )
    assert answer.status_code == 200
    assert answer.json()["choices"][0]["message"]["content"] == "You said: hi"
    assert models.json()["data"][0]["id"] == "m1"
    assert page.text == "host app"
    assert reached_host == ["/api/home"]  # never the gateway's requests, prompts or keys


def test_row43_no_redirect_is_built_from_the_host_header(figures: Figures) -> None:
    # Any Host accepted (a deployment behind a proxy), so the path itself is what answers.
    with (
        reliability_gateway(server=ServerConfig(allowed_hosts=["*"])) as live,
        httpx.Client(base_url=f"http://127.0.0.1:{live.port}", timeout=10.0) as http,
    ):
        answer = http.get("/health/", headers={"Host": "evil.example"})
    location = answer.headers.get("location")
    figures.record(
        "43",
        "GET /health/ with Host: evil.example: status, Location",
        f"{answer.status_code}, {location}",
        passed=location is None and answer.status_code == 404,
    )
    assert location is None
    assert answer.status_code == 404
    assert answer.json()["error"]["code"] == "not_found"
