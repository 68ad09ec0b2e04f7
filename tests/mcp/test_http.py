"""Streamable HTTP on 127.0.0.1: the SDK's HTTP client, DNS-rebinding checks, keys, mounting."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest
from mcp import MCPError
from pydantic import SecretStr
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Mount, Route
from starlette.types import ASGIApp

from leapasgi import Gateway
from leapmcp import build_http_app, transport_security
from tests.mcp.support import (
    ACCEPT,
    INITIALIZE,
    http_client,
    http_session,
    make_gateway,
    mock_config,
    served,
    structured,
    text,
)

pytestmark = pytest.mark.anyio

CHAT = {"model": "mock-chat", "prompt": "hi"}
KEY = "k-0123456789"
ADMIN = "adm-0123456789"
REFUSED = {
    "error": {
        "message": "Invalid or missing API key",
        "type": "invalid_request_error",
        "param": None,
        "code": "invalid_api_key",
    }
}


async def post_initialize(url: str, *, key: str | None = None, **headers: str) -> Any:
    async with http_client(key=key) as http:
        return await http.post(url, json=INITIALIZE, headers={**ACCEPT, **headers})


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_the_sdk_http_client_uses_every_tool(mode: str) -> None:
    gateway = make_gateway(mock_config(chunks=12), admin_key=SecretStr(ADMIN))
    reports: list[float] = []
    both = anyio.Event()

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        reports.append(progress)
        if len(reports) == 2:
            both.set()

    with served(lambda: build_http_app(gateway, admin_tools=False)) as base:
        async with http_session(f"{base}/mcp", key=ADMIN, mode=mode) as client:
            names = {tool.name for tool in (await client.list_tools()).tools}
            answer = structured(await client.call_tool("chat", CHAT, progress_callback=on_progress))
            models = structured(await client.call_tool("list_models", {}))
            checks = structured(await client.call_tool("health_check", {}))
            unknown = await client.call_tool("chat", {"model": "nope", "prompt": "hi"})
            with anyio.fail_after(5):  # notifications may trail the result they belong to
                await both.wait()
    assert names == {"chat", "list_providers", "list_models", "health_check", "provider_stats"}
    assert answer["reply"] == "You said: hi"
    assert reports == [1, 8]
    assert models["models"][0]["name"] == "mock-chat"
    assert checks["healthy"] == 1
    assert unknown.is_error
    assert "does not exist" in text(unknown)


async def test_a_foreign_host_header_is_refused() -> None:
    gateway = make_gateway()
    security = transport_security(allowed_hosts=["gw.example.com"])
    with served(lambda: build_http_app(gateway, security=security)) as base:
        foreign = await post_initialize(f"{base}/mcp", host="evil.example")
        rebound = await post_initialize(f"{base}/mcp", host="evil.example:8765")
        allowed = await post_initialize(f"{base}/mcp", host="gw.example.com")
        loopback = await post_initialize(f"{base}/mcp")
    assert (foreign.status_code, foreign.text) == (421, "Invalid Host header")
    assert rebound.status_code == 421
    assert allowed.status_code == 200
    assert loopback.status_code == 200
    assert loopback.headers["content-type"].startswith("text/event-stream")
    assert "mcp-session-id" not in loopback.headers  # stateless: any worker can answer


async def test_the_endpoint_takes_post_only() -> None:
    gateway = make_gateway()
    with served(lambda: build_http_app(gateway)) as base:
        async with http_client() as http:
            stream = await http.get(f"{base}/mcp", headers={"accept": "text/event-stream"})
            delete = await http.delete(f"{base}/mcp")
    for response in (stream, delete):
        assert response.status_code == 405
        assert response.headers["allow"] == "POST"
        assert response.json()["error"]["code"] == "method_not_allowed"


async def test_a_foreign_origin_is_refused() -> None:
    gateway = make_gateway()
    with served(lambda: build_http_app(gateway)) as base:
        foreign = await post_initialize(f"{base}/mcp", origin="http://evil.example")
        local = await post_initialize(f"{base}/mcp", origin="http://localhost:5173")
    assert (foreign.status_code, foreign.text) == (403, "Invalid Origin header")
    assert local.status_code == 200


async def test_a_missing_or_wrong_key_gets_a_401_with_an_openai_error_body() -> None:
    gateway = make_gateway(api_keys=[KEY])
    with served(lambda: build_http_app(gateway)) as base:
        url = f"{base}/mcp"
        missing = await post_initialize(url)
        wrong = await post_initialize(url, key="k-wrong-key")
        with pytest.raises(ExceptionGroup) as refused:
            async with http_session(url, key="k-wrong-key"):
                pass
        async with http_session(url, key=KEY) as client:
            answer = structured(await client.call_tool("chat", CHAT))
    for response in (missing, wrong):
        assert response.status_code == 401
        assert response.json() == REFUSED
        assert response.headers["www-authenticate"] == "Bearer"
    assert refused.group_contains(MCPError)
    assert answer["provider"] == "mock"
    assert mock_requests(gateway) == 1


async def test_set_provider_status_over_http_needs_the_admin_key() -> None:
    gateway = make_gateway(api_keys=[KEY], admin_key=ADMIN)
    arguments = {"provider": "mock", "status": "maintenance"}
    with served(lambda: build_http_app(gateway, admin_tools=True)) as base:
        async with http_session(f"{base}/mcp", key=KEY) as client:
            refused = await client.call_tool("set_provider_status", arguments)
        async with http_session(f"{base}/mcp", key=ADMIN) as client:
            changed = structured(await client.call_tool("set_provider_status", arguments))
    assert refused.is_error
    assert text(refused) == (
        "Error executing tool set_provider_status: Changing a provider's status over HTTP "
        "needs the gateway's admin key"
    )
    assert changed["status"] == "maintenance"


async def test_mounted_at_mcp_in_the_gateway_app_behind_its_keys() -> None:
    gateway = make_gateway(
        api_keys=[KEY],
        admin_key=ADMIN,
        mcp=True,
        mcp_admin_tools=True,
        mcp_allowed_hosts=["gw.example.com"],
    )
    with served(lambda: gateway.app) as base:
        async with http_session(f"{base}/mcp", key=KEY) as client:
            names = {tool.name for tool in (await client.list_tools()).tools}
            answer = structured(await client.call_tool("chat", CHAT))
        async with http_client(key=KEY) as http:
            completion = await http.post(
                f"{base}/v1/chat/completions",
                json={"model": "mock-chat", "messages": [{"role": "user", "content": "hi"}]},
            )
        missing = await post_initialize(f"{base}/mcp")
        named = await post_initialize(f"{base}/mcp", key=KEY, host="gw.example.com")
        foreign = await post_initialize(f"{base}/mcp", key=KEY, host="evil.example")
    assert "set_provider_status" in names
    assert answer["reply"] == "You said: hi"
    assert completion.json()["choices"][0]["message"]["content"] == "You said: hi"
    assert (missing.status_code, missing.json()) == (401, REFUSED)
    assert named.status_code == 200
    assert foreign.status_code == 421


async def test_mounted_in_a_host_app_whose_lifespan_runs_the_gateway() -> None:
    gateway = make_gateway(mcp=True)

    def host() -> ASGIApp:
        @contextlib.asynccontextmanager
        async def lifespan(app: Starlette) -> AsyncIterator[None]:
            async with gateway:
                yield

        return Starlette(
            routes=[Route("/", lambda r: PlainTextResponse("host")), Mount("/llm", gateway.app)],
            lifespan=lifespan,
        )

    with served(host) as base:
        async with http_session(f"{base}/llm/mcp", mode="legacy") as client:
            answer = structured(await client.call_tool("chat", CHAT))
    assert answer["provider"] == "mock"


async def test_mounted_with_no_lifespan_at_all_it_starts_on_first_use() -> None:
    gateway = make_gateway(mcp=True)

    def host() -> ASGIApp:
        return Starlette(routes=[Mount("/llm", gateway.app)])

    with served(host, lifespan="off") as base:
        async with http_session(f"{base}/llm/mcp") as client:
            answer = structured(await client.call_tool("chat", CHAT))
    assert answer["reply"] == "You said: hi"


async def test_the_gateway_restarts_with_a_fresh_mcp_server() -> None:
    gateway = make_gateway(mcp=True)
    replies = []
    for _ in range(2):
        with served(lambda: gateway.app) as base:
            async with http_session(f"{base}/mcp", mode="legacy") as client:
                replies.append(structured(await client.call_tool("chat", CHAT))["reply"])
    assert replies == ["You said: hi", "You said: hi"]


def mock_requests(gateway: Gateway) -> int:
    return gateway.manager.registry.get("mock").stats.requests


@pytest.mark.parametrize("tool", ["list_providers", "health_check", "provider_stats"])
async def test_over_http_an_api_key_may_chat_but_not_inspect_the_providers(tool: str) -> None:
    # The same rule as the HTTP admin routes: an API key gets 403 on GET /v1/providers and
    # POST /v1/providers/health, and these tools (which read the same, or spend upstream
    # calls) the same refusal; the admin key may.
    keys = {"api_keys": [SecretStr("api-key-123")], "admin_key": SecretStr(ADMIN)}
    gateway = make_gateway(**keys)
    with served(lambda: build_http_app(gateway)) as base:
        async with http_session(f"{base}/mcp", key="api-key-123") as client:
            refused = await client.call_tool(tool, {})
            chat = await client.call_tool("chat", {"model": "mock-chat", "prompt": "hi"})
            models = await client.call_tool("list_models", {})
        async with http_session(f"{base}/mcp", key=ADMIN) as client:
            allowed = await client.call_tool(tool, {})
    assert refused.is_error
    assert "needs the gateway's admin key" in text(refused)
    assert not chat.is_error
    assert not models.is_error
    assert not allowed.is_error
