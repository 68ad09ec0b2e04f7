from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from leapasgi import Gateway
from leapasgi.config import GatewayConfig, HealthConfig, ProviderConfig, ServerConfig
from leapasgi.providers.mock import Fault, MockProvider
from tests.fake_upstream import Behavior, FakeUpstream, text_stream

pytestmark = pytest.mark.anyio

CHAT = "/v1/chat/completions"
BODY = {"model": "mock-chat", "messages": [{"role": "user", "content": "hi"}]}


def gateway(*providers: ProviderConfig, **server: Any) -> Gateway:
    config = GatewayConfig(
        providers=list(providers) or [ProviderConfig(name="mock", type="mock")],
        health=HealthConfig(interval=0),
        server=ServerConfig(**server),
    )
    return Gateway(config=config)


async def client_for(gw: Gateway) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=gw.app), base_url="http://gw")


@pytest.fixture
async def gw() -> AsyncIterator[Gateway]:
    async with gateway() as g:
        yield g


@pytest.fixture
async def client(gw: Gateway) -> AsyncIterator[httpx.AsyncClient]:
    async with await client_for(gw) as c:
        yield c


def error_of(response: httpx.Response) -> dict[str, Any]:
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    return dict(body["error"])


async def test_a_completion_with_routing_headers(client: httpx.AsyncClient) -> None:
    response = await client.post(CHAT, json=BODY)
    assert response.status_code == 200
    assert response.json()["choices"][0]["message"]["content"] == "You said: hi"
    assert response.headers["x-leap-provider"] == "mock"
    assert response.headers["x-leap-attempts"] == "1"
    assert float(response.headers["x-leap-overhead-ms"]) >= 0


async def test_streaming_is_decided_by_the_body_not_the_accept_header(
    client: httpx.AsyncClient,
) -> None:
    response = await client.post(
        CHAT, json={**BODY, "stream": True}, headers={"Accept": "application/json"}
    )
    assert response.headers["content-type"].startswith("text/event-stream")
    events = [line for line in response.text.split("\n\n") if line]
    assert events[-1] == "data: [DONE]"
    chunks = [json.loads(e.removeprefix("data: ")) for e in events[:-1]]
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks) == "You said: hi"


async def test_the_usage_chunk_comes_when_asked(client: httpx.AsyncClient) -> None:
    body = {**BODY, "stream": True, "stream_options": {"include_usage": True}}
    response = await client.post(CHAT, json=body)
    events = [e for e in response.text.split("\n\n") if e and e != "data: [DONE]"]
    last = json.loads(events[-1].removeprefix("data: "))
    assert last["choices"] == []
    assert last["usage"]["total_tokens"] > 0


@pytest.mark.parametrize(
    ("content", "status", "param", "code"),
    [
        (b"{not json", 400, None, "invalid_json"),
        (json.dumps({**BODY, "temperature": 5}).encode(), 400, "temperature", "invalid_value"),
        (json.dumps({"model": "m"}).encode(), 400, "messages", "invalid_value"),
        (json.dumps({**BODY, "model": "gpt-9"}).encode(), 404, "model", "model_not_found"),
        (
            json.dumps({**BODY, "model": "gpt-9", "stream": True}).encode(),
            404,
            "model",
            "model_not_found",
        ),
    ],
)
async def test_bad_requests_get_openai_errors_before_any_stream_byte(
    client: httpx.AsyncClient, content: bytes, status: int, param: str | None, code: str
) -> None:
    response = await client.post(CHAT, content=content)
    assert response.status_code == status
    assert response.headers["content-type"] == "application/json"
    error = error_of(response)
    assert (error["param"], error["code"]) == (param, code)


async def test_a_body_over_the_limit_is_refused_while_reading() -> None:
    async with gateway(max_body_bytes=2048) as gw, await client_for(gw) as client:
        big = {**BODY, "messages": [{"role": "user", "content": "x" * 5000}]}
        declared = await client.post(CHAT, json=big)

        async def chunked() -> AsyncIterator[bytes]:
            for _ in range(10):
                yield b" " * 1000

        streamed = await client.post(CHAT, content=chunked())
    for response in (declared, streamed):
        assert response.status_code == 413
        assert error_of(response)["code"] == "request_too_large"


async def test_gateway_auth_in_constant_time_and_no_upstream_call(upstream: FakeUpstream) -> None:
    provider = ProviderConfig(
        name="up", base_url=upstream.base_url, api_key=SecretStr("sk-provider-key"), models=["m1"]
    )
    async with (
        gateway(provider, api_keys=[SecretStr("client-key")]) as gw,
        await client_for(gw) as client,
    ):
        body = {**BODY, "model": "m1"}
        missing = await client.post(CHAT, json=body)
        wrong = await client.post(CHAT, json=body, headers={"Authorization": "Bearer nope"})
        assert upstream.chat_requests == []
        ok = await client.post(CHAT, json=body, headers={"Authorization": "Bearer client-key"})
        models = await client.get("/v1/models")
    assert missing.status_code == wrong.status_code == 401
    assert missing.headers["www-authenticate"] == wrong.headers["www-authenticate"] == "Bearer"
    assert error_of(wrong)["code"] == "invalid_api_key"
    assert "nope" not in wrong.text
    assert ok.status_code == 200
    assert models.status_code == 401
    # The client's key never goes upstream; the provider's own key does.
    assert upstream.chat_requests[0].headers["Authorization"] == "Bearer sk-provider-key"


async def test_no_provider_available_is_a_503_with_retry_after(gw: Gateway) -> None:
    gw.manager.registry.set_status("mock", "maintenance", cause="test")
    async with await client_for(gw) as client:
        response = await client.post(CHAT, json=BODY)
        ready = await client.get("/health/ready")
    assert response.status_code == 503
    assert int(response.headers["retry-after"]) >= 1
    assert error_of(response)["code"] == "no_provider_available"
    assert ready.status_code == 503


async def test_a_failure_after_the_stream_began_is_one_error_event() -> None:
    mock = MockProvider(name="mock", chunks=4)
    mock.inject(Fault.cut(2))
    config = GatewayConfig(health=HealthConfig(interval=0))
    async with Gateway(config=config, providers=[mock]) as gw, await client_for(gw) as client:
        response = await client.post(CHAT, json={**BODY, "stream": True})
    events = [e for e in response.text.split("\n\n") if e]
    assert response.status_code == 200
    assert "data: [DONE]" not in events
    errors = [e for e in events if '"error"' in e]
    assert len(errors) == 1
    assert errors[0] == events[-1]
    assert json.loads(errors[0].removeprefix("data: "))["error"]["code"] == "stream_interrupted"


async def test_keep_alive_comments_while_the_upstream_is_silent(upstream: FakeUpstream) -> None:
    upstream.default = Behavior(events=text_stream(["late"]), before=0.35)
    provider = ProviderConfig(name="up", base_url=upstream.base_url, models=["m1"], timeout=2)
    async with gateway(provider, keepalive_interval=0.1) as gw, await client_for(gw) as client:
        response = await client.post(CHAT, json={**BODY, "model": "m1", "stream": True})
    assert response.text.startswith(": ping\n\n")
    assert "late" in response.text
    assert response.text.endswith("data: [DONE]\n\n")


async def test_models_routes_include_aliases_and_ids_with_slashes() -> None:
    provider = ProviderConfig(name="mock", type="mock", models=["org/model-a"])
    async with gateway(provider) as gw, await client_for(gw) as client:
        listing = await client.get("/v1/models")
        one = await client.get("/v1/models/org/model-a")
        missing = await client.get("/v1/models/nope")
    assert listing.json()["object"] == "list"
    assert [m["id"] for m in listing.json()["data"]] == ["org/model-a"]
    assert one.json()["id"] == "org/model-a"
    assert missing.status_code == 404
    assert error_of(missing)["code"] == "model_not_found"


async def test_unknown_routes_and_methods_are_openai_errors(client: httpx.AsyncClient) -> None:
    missing = await client.get("/v1/nothing")
    wrong_method = await client.get(CHAT)
    assert missing.status_code == 404
    assert wrong_method.status_code == 405
    error_of(missing)
    error_of(wrong_method)


async def test_health_and_metrics(client: httpx.AsyncClient) -> None:
    await client.post(CHAT, json=BODY)
    await client.post(CHAT, json={**BODY, "model": "nope"})
    live = await client.get("/health")
    ready = await client.get("/health/ready")
    metrics = await client.get("/metrics")
    assert live.json() == {"status": "ok"}
    assert ready.json()["providers"][0]["name"] == "mock"
    text = metrics.text
    assert metrics.headers["content-type"].startswith("text/plain; version=0.0.4")
    assert 'leap_requests_total{provider="mock",model="mock-chat",status="200"' in text
    assert 'kind="ModelNotFoundError"' in text
    assert "leap_gateway_overhead_seconds_count" in text
    assert 'leap_provider_breaker_state{provider="mock",state="closed"} 1' in text


async def test_admin_routes_need_their_own_key() -> None:
    async with gateway() as gw, await client_for(gw) as client:
        absent = await client.get("/v1/providers")
    assert absent.status_code == 404
    admin = {"Authorization": "Bearer admin-secret"}
    async with gateway(admin_key=SecretStr("admin-secret")) as gw, await client_for(gw) as client:
        wrong = await client.get("/v1/providers", headers={"Authorization": "Bearer x"})
        listing = await client.get("/v1/providers", headers=admin)
        drained = await client.put(
            "/v1/providers/mock/status", json={"status": "maintenance"}, headers=admin
        )
        bogus = await client.put(
            "/v1/providers/mock/status", json={"status": "unhealthy"}, headers=admin
        )
        unknown = await client.put(
            "/v1/providers/ghost/status", json={"status": "active"}, headers=admin
        )
        checks = await client.post("/v1/providers/health", headers=admin)
    assert wrong.status_code == 401
    assert listing.json()["data"][0]["name"] == "mock"
    assert "admin-secret" not in listing.text
    assert drained.json()["status"] == "maintenance"
    assert bogus.status_code == 400
    assert unknown.status_code == 404
    assert checks.json()["data"][0]["ok"] is True


@pytest.mark.parametrize("stream", [False, True])
async def test_a_client_that_goes_away_cancels_the_upstream_call(
    upstream: FakeUpstream, stream: bool
) -> None:
    upstream.default = Behavior(hang_now=True)
    provider = ProviderConfig(name="up", base_url=upstream.base_url, models=["m1"], timeout=30)
    payload = json.dumps({**BODY, "model": "m1", "stream": stream}).encode()
    messages: list[dict[str, Any]] = [{"type": "http.request", "body": payload}]
    gone = asyncio.Event()
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        if messages:
            return messages.pop(0)
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "POST",
        "path": CHAT,
        "headers": [(b"content-type", b"application/json")],
        "query_string": b"",
    }
    async with gateway(provider) as gw:
        call = asyncio.create_task(gw.app(scope, receive, send))
        for _ in range(200):
            if upstream.chat_requests:
                break
            await asyncio.sleep(0.005)
        gone.set()
        await asyncio.wait_for(call, 2)
        for _ in range(200):  # the upstream notices the closed connection soon after
            if upstream.chat_requests[0].client_went_away:
                break
            await asyncio.sleep(0.01)
        assert upstream.chat_requests[0].client_went_away
        assert gw.manager.registry.snapshot("up").in_flight == 0
    assert not any(m["type"] == "http.response.start" for m in sent)


async def test_a_clean_upstream_stream_is_relayed_byte_for_byte(upstream: FakeUpstream) -> None:
    events = text_stream(["Hel", "lo"])
    upstream.default = Behavior(events=[b"".join(events)])
    provider = ProviderConfig(name="up", base_url=upstream.base_url, models=["m1"], timeout=2)
    async with gateway(provider) as gw, await client_for(gw) as client:
        response = await client.post(CHAT, json={**BODY, "model": "m1", "stream": True})
    # The upstream's separators and key order survive: nothing was parsed and re-serialized.
    assert response.content == b"".join(events)


async def test_with_auth_on_metrics_need_a_key_and_readiness_hides_providers() -> None:
    keys = {"api_keys": [SecretStr("client-key")], "admin_key": SecretStr("admin-secret")}
    async with gateway(**keys) as gw, await client_for(gw) as client:
        metrics = await client.get("/metrics")
        metrics_ok = await client.get("/metrics", headers={"Authorization": "Bearer client-key"})
        live = await client.get("/health")
        ready = await client.get("/health/ready")
        ready_key = await client.get(
            "/health/ready", headers={"Authorization": "Bearer client-key"}
        )
    assert metrics.status_code == 401
    assert error_of(metrics)["code"] == "invalid_api_key"
    assert metrics_ok.status_code == 200
    assert live.json() == {"status": "ok"}
    assert ready.json() == {"status": "ready"}
    assert ready_key.json()["providers"][0]["name"] == "mock"


async def test_an_api_key_on_an_admin_route_is_a_403_and_a_wrong_key_a_401() -> None:
    keys = {"api_keys": [SecretStr("client-key")], "admin_key": SecretStr("admin-secret")}
    async with gateway(**keys) as gw, await client_for(gw) as client:
        client_key = await client.get(
            "/v1/providers", headers={"Authorization": "Bearer client-key"}
        )
        wrong = await client.put("/v1/providers/mock/status", headers={"Authorization": "Bearer x"})
        missing = await client.post("/v1/providers/health")
        admin = await client.get("/v1/providers", headers={"Authorization": "Bearer admin-secret"})
    assert client_key.status_code == 403
    assert error_of(client_key)["code"] == "permission_denied"
    assert wrong.status_code == missing.status_code == 401
    assert admin.status_code == 200


async def test_an_admin_body_is_capped_and_bad_json_is_a_400() -> None:
    admin = {"Authorization": "Bearer admin-secret"}
    async with (
        gateway(admin_key=SecretStr("admin-secret"), max_body_bytes=1024) as gw,
        await client_for(gw) as client,
    ):
        url = "/v1/providers/mock/status"
        large = await client.put(url, content=b"{" + b" " * 2048 + b"}", headers=admin)
        deep = await client.put(url, content=b"[" * 1000, headers=admin)
    assert large.status_code == 413
    assert deep.status_code == 400
    error_of(deep)


async def test_made_up_model_names_do_not_become_metric_labels(client: httpx.AsyncClient) -> None:
    for n in range(5):
        response = await client.post(CHAT, json={**BODY, "model": f"made-up-{n}"})
        assert response.status_code == 404
    await client.post(CHAT, json=BODY)
    metrics = (await client.get("/metrics")).text
    assert "made-up" not in metrics
    assert 'model="mock-chat"' in metrics
