"""The live dashboard: off unless enabled, its page public, its data behind the admin key,
and never a prompt or a completion in what it sends."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from pydantic import SecretStr, ValidationError
from starlette.applications import Starlette
from starlette.routing import Mount

from leapasgi import Gateway
from leapasgi.asgi.dashboard import snapshot
from leapasgi.config import GatewayConfig, HealthConfig, ProviderConfig, ServerConfig
from tests.asgi.live_server import live_gateway

CHAT = "/v1/chat/completions"
ADMIN = {"Authorization": "Bearer admin-secret"}
SECRET_PROMPT = "purple-elephant-7731"


def gateway(*, dashboard: bool = True, **server: Any) -> Gateway:
    config = GatewayConfig(
        providers=[ProviderConfig(name="mock", type="mock", models=["mock-chat"])],
        health=HealthConfig(interval=0),
        server=ServerConfig(dashboard=dashboard, admin_key=SecretStr("admin-secret"), **server),
    )
    return Gateway(config=config)


def client_for(gw: Gateway) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=gw.app), base_url="http://gw")


def body(content: str = "hi") -> dict[str, Any]:
    return {"model": "mock-chat", "messages": [{"role": "user", "content": content}]}


@pytest.mark.anyio
async def test_the_dashboard_is_off_unless_enabled() -> None:
    async with gateway(dashboard=False) as gw, client_for(gw) as client:
        for path in ("/dashboard", "/dashboard/", "/dashboard/events", "/dashboard/dashboard.js"):
            assert (await client.get(path, headers=ADMIN)).status_code == 404


def test_the_dashboard_needs_an_admin_key() -> None:
    with pytest.raises(ValidationError, match="dashboard"):
        ServerConfig(dashboard=True)


@pytest.mark.anyio
async def test_the_page_and_its_files_are_served_from_the_package() -> None:
    async with gateway() as gw, client_for(gw) as client:
        home = await client.get("/dashboard")
        page = await client.get("/dashboard/")
        script = await client.get("/dashboard/dashboard.js")
        style = await client.get("/dashboard/dashboard.css")
        other = await client.get("/dashboard/secrets.txt")
    assert home.status_code == 308
    assert home.headers["location"] == "dashboard/"  # relative: any mount prefix works
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert 'src="dashboard.js"' in page.text
    assert 'href="dashboard.css"' in page.text
    assert "http" not in page.text.replace("http://www.w3.org", "")  # no CDN
    assert script.headers["content-type"].startswith("text/javascript")
    assert 'fetch("events"' in script.text
    assert style.headers["content-type"].startswith("text/css")
    assert other.status_code == 404


@pytest.mark.anyio
async def test_the_events_stream_needs_the_admin_key() -> None:
    keys = {"api_keys": [SecretStr("client-key")]}
    async with gateway(**keys) as gw, client_for(gw) as client:
        anonymous = await client.get("/dashboard/events")
        wrong = await client.get("/dashboard/events", headers={"Authorization": "Bearer nope"})
        api = await client.get("/dashboard/events", headers={"Authorization": "Bearer client-key"})
    assert anonymous.status_code == 401
    assert wrong.status_code == 401
    assert api.status_code == 403


@pytest.mark.anyio
async def test_a_snapshot_shows_providers_series_and_trails() -> None:
    async with gateway() as gw, client_for(gw) as client:
        for _ in range(3):
            assert (await client.post(CHAT, json=body())).status_code == 200
        assert (await client.post(CHAT, json={**body(), "model": "nope"})).status_code == 404
        recent = gw.recorder.recent
        assert recent is not None
        snap = snapshot(gw, recent)
    assert set(snap) == {"at", "interval", "providers", "series", "requests", "cache", "spend"}
    (mock,) = snap["providers"]
    assert mock["name"] == "mock"
    assert (mock["status"], mock["health"], mock["breaker"]) == ("active", "healthy", "closed")
    assert mock["requests"] == 3
    rate = snap["series"]["mock"]["rate"]
    assert len(rate) == 60
    assert sum(rate) == 3
    assert snap["series"]["mock"]["p95"][-1] is not None
    assert len(snap["requests"]) == 4
    newest, oldest = snap["requests"][0], snap["requests"][-1]
    assert newest["status"] == 404
    assert newest["attempts"] == []
    assert oldest["status"] == 200
    (attempt,) = oldest["attempts"]
    assert attempt["provider"] == "mock"
    assert attempt["outcome"] == "ok"
    assert snap["cache"] is None
    json.dumps(snap)


def test_the_events_stream_sends_snapshots_without_content() -> None:
    server = ServerConfig(dashboard=True, admin_key=SecretStr("admin-secret"))
    with (
        live_gateway(server=server) as live,
        httpx.Client(base_url=f"http://127.0.0.1:{live.port}", timeout=10.0) as http,
    ):
        sent = http.post(CHAT, json=body(SECRET_PROMPT))
        assert sent.status_code == 200
        assert SECRET_PROMPT in sent.text  # the mock echoes it: it is in the completion
        events = []
        with http.stream("GET", "/dashboard/events", headers=ADMIN) as stream:
            assert stream.headers["content-type"].startswith("text/event-stream")
            text = ""
            for chunk in stream.iter_text():
                text += chunk
                if text.count("\n\n") >= 2:
                    break
        for block in text.split("\n\n")[:2]:
            event, data = block.split("\n")
            assert event == "event: snapshot"
            events.append(json.loads(data.removeprefix("data: ")))
    assert SECRET_PROMPT not in text
    assert [p["name"] for p in events[0]["providers"]] == ["mock"]
    assert events[0]["requests"][0]["attempts"][0]["outcome"] == "ok"
    assert events[1]["at"] > events[0]["at"]


@pytest.mark.anyio
async def test_the_dashboard_works_mounted_under_a_prefix() -> None:
    async with gateway() as gw:
        host = Starlette(routes=[Mount("/llm", app=gw.app)])
        transport = httpx.ASGITransport(app=host)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
            home = await client.get("/llm/dashboard")
            page = await client.get("/llm/dashboard/")
            script = await client.get("/llm/dashboard/dashboard.js")
            events = await client.get("/llm/dashboard/events")
    assert home.headers["location"] == "dashboard/"
    assert page.status_code == 200
    assert script.status_code == 200
    assert "../v1/providers/" in script.text  # the admin API, relative to the page
    assert events.status_code == 401
