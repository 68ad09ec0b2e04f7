"""Tenancy in one process: who a caller is, what its key allows, when it expires, and spend
that survives a restart."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import httpx2
import pytest
from pydantic import SecretStr

from leapasgi import Gateway, ProviderManager
from leapasgi.clock import FakeClock
from leapasgi.config import (
    CacheConfig,
    GatewayConfig,
    HealthConfig,
    PolicyConfig,
    PriceConfig,
    ProviderConfig,
    ServerConfig,
    TenantsConfig,
)
from leapasgi.tenants.base import UsageRow
from leapasgi.tenants.keys import new_key
from leapasgi.tenants.policy import Budget, Period, Tenant, TenantPolicy
from leapasgi.tenants.spend import save_spend

pytestmark = pytest.mark.anyio

ADMIN = "admin-key-0123456789"
STATIC = "sk-static-0123456789"
HI = [{"role": "user", "content": "hi"}]
PRICES = {"mock-chat": PriceConfig(input=1000, output=2000)}
COST = 0.007  # the mock's 1 prompt and 3 completion tokens at these prices


def config(**options: Any) -> GatewayConfig:
    options.setdefault("server", ServerConfig(admin_key=SecretStr(ADMIN)))
    return GatewayConfig(
        providers=[ProviderConfig(name="mock", type="mock", models=["mock-chat"])],
        prices=PRICES,
        health=HealthConfig(interval=0),  # no health loop moving the fake clock
        **options,
    )


@pytest.fixture
async def clock() -> FakeClock:
    return FakeClock(wall=1_796_558_400.0)  # 2026-12-06 12:00 UTC


async def open_gateway(cfg: GatewayConfig, clock: FakeClock | None = None) -> Gateway:
    manager = ProviderManager.from_config(cfg, clock=clock) if clock is not None else None
    gateway = Gateway(manager, config=cfg)
    await gateway.start()
    return gateway


def http(gateway: Gateway, key: str | None = None) -> httpx.AsyncClient:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=gateway.app), base_url="http://127.0.0.1", headers=headers
    )


async def chat(client: httpx.AsyncClient, **fields: Any) -> httpx.Response:
    return await client.post(
        "/v1/chat/completions", json={"model": "mock-chat", "messages": HI, **fields}
    )


async def add_key(gateway: Gateway, **fields: Any) -> str:
    key, secret = new_key(now=gateway.tenancy.clock.time(), **fields)
    await gateway.tenancy.keys.add(key)
    return secret


@pytest.fixture
async def gateway(clock: FakeClock) -> AsyncIterator[Gateway]:
    gw = await open_gateway(config(tenants=TenantsConfig(require_key=True)), clock)
    try:
        yield gw
    finally:
        await gw.aclose()


async def test_an_expired_key_is_refused_when_it_expires(
    gateway: Gateway, clock: FakeClock
) -> None:
    secret = await add_key(
        gateway,
        tenant="t",
        policy=TenantPolicy(),
        expires_at=clock.time() + 60,
        tags=(),
        metadata={},
    )
    async with http(gateway, secret) as client:
        assert (await chat(client)).status_code == 200
        clock.advance(61)
        refused = await chat(client)
    assert refused.status_code == 401
    assert refused.json()["error"]["code"] == "key_expired"
    assert secret not in refused.text


async def test_static_keys_and_no_key_are_tenants_too(clock: FakeClock) -> None:
    cfg = config(
        server=ServerConfig(api_keys=[SecretStr(STATIC)], admin_key=SecretStr(ADMIN)),
        tenants=TenantsConfig(policy=PolicyConfig(models=["mock-chat"], rpm=1)),
    )
    gateway = await open_gateway(cfg, clock)
    try:
        async with http(gateway, STATIC) as client:
            answer = await chat(client)
            assert answer.status_code == 200
            assert float(answer.headers["x-leap-cost-usd"]) == pytest.approx(COST)
            # The default policy applies to static keys: one request a minute.
            limited = await chat(client)
            assert limited.status_code == 429
            assert limited.json()["error"]["code"] == "tenant_rate_limit_exceeded"
        async with http(gateway) as anonymous:
            assert (await chat(anonymous)).status_code == 401  # a static key is configured
        await gateway.tenancy.flush_usage()
        rows = await gateway.tenancy.usage.report(
            since="2026-12-01", until="2026-12-31", group_by=("tenant",)
        )
        assert [row.tenant.startswith("key:") for row in rows] == [True]
        assert STATIC not in json.dumps([row.tenant for row in rows])
    finally:
        await gateway.aclose()


async def test_anthropic_clients_get_a_spent_budget_in_anthropics_shape(
    gateway: Gateway,
) -> None:
    secret = await add_key(
        gateway,
        tenant="t",
        policy=TenantPolicy(budget=Budget(COST, Period.DAY)),
        expires_at=None,
        tags=(),
        metadata={},
    )
    client = anthropic.AsyncAnthropic(
        api_key=secret,
        base_url="http://127.0.0.1",
        max_retries=0,
        http_client=httpx2.AsyncClient(transport=httpx2.ASGITransport(app=gateway.app)),
    )
    async with client:
        await client.messages.create(model="mock-chat", max_tokens=5, messages=HI)  # type: ignore[arg-type]
        with pytest.raises(anthropic.RateLimitError) as caught:
            await client.messages.create(model="mock-chat", max_tokens=5, messages=HI)  # type: ignore[arg-type]
    assert caught.value.body["type"] == "error"  # type: ignore[index]
    assert "budget" in caught.value.message


async def test_spend_survives_a_restart(tmp_path: Path, clock: FakeClock) -> None:
    cfg = config(tenants=TenantsConfig(require_key=True, database=tmp_path / "leap.sqlite3"))
    first = await open_gateway(cfg, clock)
    secret = await add_key(
        first,
        tenant="t",
        policy=TenantPolicy(budget=Budget(3 * COST, Period.MONTH)),
        expires_at=None,
        tags=(),
        metadata={},
    )
    async with http(first, secret) as client:
        for _ in range(2):
            assert (await chat(client, max_tokens=5)).status_code == 200
    await first.aclose()

    second = await open_gateway(cfg, clock)
    try:
        async with http(second, secret) as client:
            assert (await chat(client, max_tokens=5)).status_code == 200
            refused = await chat(client, max_tokens=5)
        assert refused.status_code == 429
        assert refused.json()["error"]["code"] == "budget_exceeded"
        await second.tenancy.flush_usage()
        rows = await second.tenancy.usage.report(
            since="2026-12-01", until="2026-12-31", group_by=("tenant",)
        )
        assert [(row.tenant, row.requests, row.errors) for row in rows] == [("t", 4, 1)]
        assert rows[0].cost_usd == pytest.approx(3 * COST)
    finally:
        await second.aclose()


async def test_the_host_apps_hook_decides_who_calls(clock: FakeClock) -> None:
    users = {"cookie-alice": Tenant("alice", TenantPolicy(models=frozenset({"mock-chat"})))}

    async def authenticate(request: Any) -> Tenant | None:
        return users.get(request.cookies.get("session", ""))

    cfg = config()
    manager = ProviderManager.from_config(cfg, clock=clock)
    gateway = Gateway(manager, config=cfg, authenticate=authenticate)
    try:
        async with http(gateway) as client:
            client.cookies.set("session", "cookie-alice")
            assert (await chat(client)).status_code == 200
            assert (await chat(client, model="other")).status_code == 403
        async with http(gateway) as stranger:
            assert (await chat(stranger)).status_code == 401
        await gateway.tenancy.flush_usage()
        rows = await gateway.tenancy.usage.report(
            since="2026-12-01", until="2026-12-31", group_by=("tenant",)
        )
        # The refused request is alice's too: counted, as an error.
        assert [(row.tenant, row.requests, row.errors) for row in rows] == [("alice", 2, 1)]
    finally:
        await gateway.aclose()


async def test_cached_answers_are_counted_and_never_cross_a_model_list(clock: FakeClock) -> None:
    cfg = config(
        tenants=TenantsConfig(require_key=True),
        cache=CacheConfig(enabled=True, models=["mock-chat"], scope="global"),
    )
    gateway = await open_gateway(cfg, clock)
    try:
        allowed = await add_key(
            gateway, tenant="a", policy=TenantPolicy(), expires_at=None, tags=(), metadata={}
        )
        other = await add_key(
            gateway,
            tenant="b",
            policy=TenantPolicy(models=frozenset({"another"})),
            expires_at=None,
            tags=(),
            metadata={},
        )
        async with http(gateway, allowed) as a, http(gateway, other) as b:
            assert (await chat(a)).headers["x-leap-cache"] == "miss"
            refused = await chat(b)  # the same body: a hit for anyone allowed, not for b
            assert refused.status_code == 403
            assert refused.json()["error"]["code"] == "model_not_allowed"
            hit = await chat(a)
            assert hit.headers["x-leap-cache"] == "hit"
        await gateway.tenancy.flush_usage()
        rows = await gateway.tenancy.usage.report(
            since="2026-12-01", until="2026-12-31", group_by=("tenant", "provider")
        )
        found = {(r.tenant, r.provider): (r.requests, r.errors, r.cost_usd) for r in rows}
        assert found[("a", "mock")] == (1, 0, pytest.approx(COST))
        assert found[("a", "cache")] == (1, 0, 0.0)  # a hit: counted, and free
        assert found[("b", "")] == (1, 1, 0.0)
    finally:
        await gateway.aclose()


async def test_usage_and_spend_past_their_retention_are_pruned(
    tmp_path: Path, clock: FakeClock
) -> None:
    cfg = config(tenants=TenantsConfig(database=tmp_path / "leap.sqlite3", retention_days=30))
    gateway = await open_gateway(cfg, clock)
    try:
        tenancy = gateway.tenancy
        database = tenancy.stores.database
        assert database is not None
        old, recent = "2026-10-01", "2026-12-01"
        await tenancy.usage.add(
            [
                UsageRow(day=day, tenant="t", model="m", provider="p", requests=1)
                for day in (old, recent)
            ]
        )
        await save_spend(
            database,
            [
                ("k:a", old, 1.0),
                ("k:a", "2026-10", 1.0),
                ("k:a", recent, 2.0),
                ("k:a", "total", 3.0),
            ],
        )
        await tenancy.prune()
        rows = await tenancy.usage.report(since="2026-01-01", until="2026-12-31", group_by=("day",))
        assert [row.day for row in rows] == [recent]
        kept = await database.query("SELECT period, usd FROM spend ORDER BY period")
        assert kept == [(recent, 2.0), ("total", 3.0)]
    finally:
        await gateway.aclose()
