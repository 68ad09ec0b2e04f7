"""The admin API of virtual keys and usage (/v1/keys, /v1/usage), behind the admin key."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from pydantic import SecretStr
from starlette.applications import Starlette

from leapasgi.asgi.admin_tenants import tenant_routes
from leapasgi.clock import FakeClock
from leapasgi.config import GatewayConfig, ServerConfig
from leapasgi.exceptions import AuthenticationError, StoreUnavailableError
from leapasgi.gateway import GatewayCore
from leapasgi.manager import ProviderManager
from leapasgi.tenants._sqlite import SqliteFile
from leapasgi.tenants.base import UsageRow, VirtualKey
from leapasgi.tenants.keys import SqliteKeyStore
from leapasgi.tenants.policy import Tenant
from leapasgi.tenants.tenancy import Tenancy

pytestmark = pytest.mark.anyio

ADMIN = {"Authorization": "Bearer admin-secret"}
USER = {"Authorization": "Bearer user-secret"}
WALL = 1_800_000_000.0  # 2027-01-15 08:00 UTC


@dataclass
class Admin:
    client: httpx.AsyncClient
    gateway: GatewayCore
    clock: FakeClock

    @property
    def tenancy(self) -> Tenancy:
        return self.gateway.tenancy

    async def create(self, **body: Any) -> dict[str, Any]:
        response = await self.client.post("/v1/keys", json=body, headers=ADMIN)
        assert response.status_code == 201, response.text
        created: dict[str, Any] = response.json()
        return created

    async def identify(self, secret: str) -> Tenant:
        """The tenant the gateway sees behind ``secret`` (its lookup cache included)."""
        scope = {"type": "http", "headers": [(b"authorization", f"Bearer {secret}".encode())]}
        return await self.tenancy.identity.identify(scope)


@pytest.fixture
async def admin() -> AsyncIterator[Admin]:
    clock = FakeClock(wall=WALL)
    server = ServerConfig(admin_key=SecretStr("admin-secret"), api_keys=[SecretStr("user-secret")])
    gateway = GatewayCore(ProviderManager(clock=clock), config=GatewayConfig(server=server))
    app = Starlette(routes=tenant_routes(gateway))
    transport = httpx.ASGITransport(app=app)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
            yield Admin(client, gateway, clock)
    finally:
        await gateway.aclose()


def error_of(response: httpx.Response) -> dict[str, Any]:
    error: dict[str, Any] = response.json()["error"]
    return error


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/v1/keys"),
        ("GET", "/v1/keys"),
        ("GET", "/v1/keys/key_0123456789abcdef"),
        ("PATCH", "/v1/keys/key_0123456789abcdef"),
        ("DELETE", "/v1/keys/key_0123456789abcdef"),
        ("POST", "/v1/keys/key_0123456789abcdef/revoke"),
        ("GET", "/v1/usage"),
    ],
)
async def test_every_route_needs_the_admin_key(admin: Admin, method: str, path: str) -> None:
    for headers in ({}, USER, {"Authorization": "Bearer wrong"}):
        response = await admin.client.request(method, path, headers=headers, json={})
        assert response.status_code in (401, 403)
        assert error_of(response)["message"]
    assert await admin.tenancy.keys.list() == []


@pytest.mark.parametrize(
    ("path", "allowed"),
    [
        ("/v1/keys", {"GET", "HEAD", "POST"}),
        ("/v1/keys/key_0123456789abcdef", {"GET", "HEAD", "PATCH", "DELETE"}),
        ("/v1/keys/key_0123456789abcdef/revoke", {"POST"}),
        ("/v1/usage", {"GET", "HEAD"}),
    ],
)
async def test_a_405_allows_every_method_of_the_path(
    admin: Admin, path: str, allowed: set[str]
) -> None:
    # Found by schemathesis: with a route per method, Allow named only the first route's.
    response = await admin.client.request("PUT", path, headers=ADMIN)
    assert response.status_code == 405
    assert set(response.headers["allow"].replace(" ", "").split(",")) == allowed


async def test_a_new_key_shows_its_secret_once(admin: Admin) -> None:
    response = await admin.client.post(
        "/v1/keys",
        headers=ADMIN,
        json={
            "tenant": "team-a",
            "name": "ci",
            "models": ["gpt-4o", "fast"],
            "rpm": 60,
            "tpm": 10000,
            "max_in_flight": 4,
            "budget": {"usd": 25, "period": "day", "alert_at": 0.8},
            "expires_in": 3600,
            "tags": ["ci", "eu"],
            "metadata": {"owner": "ops", "nested": {"n": [1, 2]}},
        },
    )
    assert response.status_code == 201
    assert response.headers["cache-control"] == "no-store"
    created = response.json()
    secret = created.pop("secret")
    assert secret.startswith("lk-")
    assert created["hint"] == secret[:7]
    assert created == {
        "id": created["id"],
        "object": "virtual_key",
        "hint": secret[:7],
        "tenant": "team-a",
        "name": "ci",
        "models": ["fast", "gpt-4o"],
        "rpm": 60,
        "tpm": 10000,
        "max_in_flight": 4,
        "budget": {"usd": 25.0, "period": "day", "alert_at": 0.8},
        "hedge": True,
        "priority": 0,
        "max_priority": None,
        "created_at": WALL,
        "expires_at": WALL + 3600,
        "revoked_at": None,
        "tags": ["ci", "eu"],
        "metadata": {"owner": "ops", "nested": {"n": [1, 2]}},
    }
    key_id = created["id"]
    later = [
        await admin.client.get("/v1/keys", headers=ADMIN),
        await admin.client.get(f"/v1/keys/{key_id}", headers=ADMIN),
        await admin.client.patch(f"/v1/keys/{key_id}", json={"rpm": 5}, headers=ADMIN),
        await admin.client.post(f"/v1/keys/{key_id}/revoke", headers=ADMIN),
    ]
    for response in later:
        assert response.status_code == 200
        assert secret not in response.text
        assert "secret" not in response.json()


async def test_a_key_without_a_tenant_is_its_own(admin: Admin) -> None:
    created = await admin.create()
    assert created["tenant"] == created["id"]
    assert created["models"] is None
    assert created["budget"] is None
    assert created["expires_at"] is None


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"rpm": "60"}, "rpm"),
        ({"rpm": 0}, "rpm"),
        ({"rpm": True}, "rpm"),
        ({"tpm": 1.5}, "tpm"),
        ({"max_in_flight": -1}, "max_in_flight"),
        ({"models": "gpt-4o"}, "models"),
        ({"models": [""]}, "models"),
        ({"models": ["m"] * 257}, "models"),
        ({"budget": {"usd": 0}}, "budget.usd"),
        ({"budget": {"usd": 5, "period": "week"}}, "budget.period"),
        ({"budget": {"usd": 5, "alert_at": 1.5}}, "budget.alert_at"),
        ({"budget": {"usd": 5, "extra": 1}}, "budget.extra"),
        ({"budget": 5}, "budget"),
        ({"expires_at": WALL - 1}, "expires_at"),
        ({"expires_in": 0}, "expires_in"),
        ({"expires_in": "1d"}, "expires_in"),
        ({"expires_at": WALL + 10, "expires_in": 10}, "expires_in"),
        # Integers past a float's range were a 500 (OverflowError).
        ({"expires_in": 10**400}, "expires_in"),
        ({"expires_at": -(10**400)}, "expires_at"),
        ({"tenant": ""}, "tenant"),
        ({"tenant": "a\nb"}, "tenant"),
        ({"tenant": "t" * 129}, "tenant"),
        ({"name": 5}, "name"),
        ({"name": False}, "name"),
        ({"tags": "ci"}, "tags"),
        ({"tags": [f"t{i}" for i in range(17)]}, "tags"),
        ({"tags": ["x" * 65]}, "tags"),
        ({"tags": ["a\x00"]}, "tags"),
        ({"metadata": [1]}, "metadata"),
        ({"metadata": {f"k{i}": i for i in range(33)}}, "metadata"),
        ({"metadata": {"k" * 65: 1}}, "metadata"),
        ({"metadata": {"big": "x" * 4100}}, "metadata"),
        ({"metadata": {"deep": [[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]}}, "metadata"),
        ({"secret": "lk-mine"}, "secret"),
        ({"id": "key_0123456789abcdef"}, "id"),
    ],
)
async def test_a_bad_field_is_a_400_naming_it(
    admin: Admin, body: dict[str, Any], param: str
) -> None:
    response = await admin.client.post("/v1/keys", json=body, headers=ADMIN)
    assert response.status_code == 400, response.text
    error = error_of(response)
    assert error["param"] == param
    assert error["message"].startswith(f"{param}: ")
    assert error["type"] == "invalid_request_error"
    assert await admin.tenancy.keys.list() == []


@pytest.mark.parametrize("raw", [b"[1, 2]", b"{", b'{"rpm": NaN}', b'{"expires_in": Infinity}'])
async def test_a_body_that_is_not_a_json_object_is_a_400(admin: Admin, raw: bytes) -> None:
    response = await admin.client.post("/v1/keys", content=raw, headers=ADMIN)
    assert response.status_code == 400
    assert error_of(response)["message"]


@pytest.mark.parametrize(
    ("raw", "param"),
    [(b'{"metadata": {"k": "\\ud800"}}', "metadata"), (b'{"\\ud800": 1}', "\\ud800")],
)
async def test_a_lone_surrogate_is_a_400_not_a_500(admin: Admin, raw: bytes, param: str) -> None:
    # JSON can escape one; UTF-8 cannot carry it: the size check and the error body failed.
    key = await admin.create()
    for method, path in (("POST", "/v1/keys"), ("PATCH", f"/v1/keys/{key['id']}")):
        response = await admin.client.request(method, path, content=raw, headers=ADMIN)
        assert response.status_code == 400, response.text
        assert error_of(response)["param"] == param


async def test_keys_are_listed_oldest_first_and_by_tenant(admin: Admin) -> None:
    first = await admin.create(tenant="team-a")
    admin.clock.advance(1)
    second = await admin.create(tenant="team-b")
    admin.clock.advance(1)
    third = await admin.create(tenant="team-a")
    everything = (await admin.client.get("/v1/keys", headers=ADMIN)).json()
    assert everything["object"] == "list"
    assert [k["id"] for k in everything["data"]] == [first["id"], second["id"], third["id"]]
    team_a = await admin.client.get("/v1/keys", params={"tenant": "team-a"}, headers=ADMIN)
    assert [k["id"] for k in team_a.json()["data"]] == [first["id"], third["id"]]


async def test_an_unknown_key_id_is_a_404(admin: Admin) -> None:
    for method in ("GET", "PATCH", "DELETE"):
        response = await admin.client.request(
            method, "/v1/keys/key_0123456789abcdef", json={}, headers=ADMIN
        )
        assert response.status_code == 404
        assert "key_0123456789abcdef" in error_of(response)["message"]
    response = await admin.client.post("/v1/keys/key_0123456789abcdef/revoke", headers=ADMIN)
    assert response.status_code == 404


async def test_an_update_changes_what_it_names_and_null_clears(admin: Admin) -> None:
    created = await admin.create(
        tenant="team-a", rpm=60, tpm=1000, budget={"usd": 10}, expires_in=60, tags=["a"]
    )
    assert (await admin.identify(created["secret"])).policy.rpm == 60  # now cached
    path = f"/v1/keys/{created['id']}"
    response = await admin.client.patch(
        path,
        json={"rpm": None, "budget": {"usd": 20, "period": "total"}, "metadata": {"k": "v"}},
        headers=ADMIN,
    )
    assert response.status_code == 200, response.text
    updated = response.json()
    assert updated["rpm"] is None
    assert updated["tpm"] == 1000
    assert updated["budget"] == {"usd": 20.0, "period": "total", "alert_at": None}
    assert updated["metadata"] == {"k": "v"}
    assert updated["tags"] == ["a"]
    assert updated["expires_at"] == WALL + 60
    # This replica sees the change at once, not after key_cache_ttl.
    tenant = await admin.identify(created["secret"])
    assert tenant.policy.rpm is None
    assert dict(tenant.metadata) == {"k": "v"}
    cleared = await admin.client.patch(
        path,
        json={"budget": None, "expires_at": None, "tags": None, "models": ["m"], "name": "n"},
        headers=ADMIN,
    )
    body = cleared.json()
    assert (body["budget"], body["expires_at"], body["tags"]) == (None, None, [])
    assert (body["models"], body["name"]) == (["m"], "n")
    assert (await admin.client.get(path, headers=ADMIN)).json() == body


async def test_an_update_cannot_move_a_key_or_break_its_limits(admin: Admin) -> None:
    created = await admin.create(tenant="team-a", rpm=60)
    path = f"/v1/keys/{created['id']}"
    for body, param in (({"tenant": "team-b"}, "tenant"), ({"rpm": 0}, "rpm")):
        response = await admin.client.patch(path, json=body, headers=ADMIN)
        assert response.status_code == 400
        assert error_of(response)["param"] == param
        assert ("fixed" in error_of(response)["message"]) == (param == "tenant")
    assert (await admin.client.get(path, headers=ADMIN)).json() == {
        k: v for k, v in created.items() if k != "secret"
    }


async def test_revoking_keeps_the_record_and_is_idempotent(admin: Admin) -> None:
    created = await admin.create(tenant="team-a")
    assert (await admin.identify(created["secret"])).key_id == created["id"]
    path = f"/v1/keys/{created['id']}"
    admin.clock.advance(5)
    revoked = await admin.client.delete(path, headers=ADMIN)
    assert revoked.status_code == 200
    assert revoked.json()["revoked_at"] == WALL + 5
    with pytest.raises(AuthenticationError) as refused:
        await admin.identify(created["secret"])
    assert refused.value.code == "key_revoked"
    admin.clock.advance(5)
    again = await admin.client.post(f"{path}/revoke", headers=ADMIN)
    assert again.json()["revoked_at"] == WALL + 5
    listed = (await admin.client.get("/v1/keys", headers=ADMIN)).json()["data"]
    assert [k["revoked_at"] for k in listed] == [WALL + 5]


async def test_a_store_that_cannot_be_reached_is_a_503(admin: Admin) -> None:
    class Unreachable(SqliteKeyStore):
        async def list(self) -> list[VirtualKey]:
            raise StoreUnavailableError("Redis is unreachable")

    database = SqliteFile(None)
    admin.tenancy.keys = Unreachable(database)
    try:
        response = await admin.client.get("/v1/keys", headers=ADMIN)
    finally:
        database.close()
    assert response.status_code == 503
    assert error_of(response)["code"] == "store_unavailable"


async def test_usage_is_flushed_then_reported_with_a_total(admin: Admin) -> None:
    await admin.tenancy.usage.add(
        [
            UsageRow("2027-01-14", "team-a", "gpt-4o", "openai", requests=3, errors=1,
                     prompt_tokens=30, completion_tokens=12, cached_tokens=4, cost_usd=0.1,
                     estimated=1),
        ]
    )  # fmt: skip
    # Counted by this replica and not written yet: the report flushes it first.
    admin.tenancy.buffer.record(
        wall=WALL, tenant="team-b", model="fast", provider="groq", error=False,
        prompt_tokens=5, completion_tokens=0, cached_tokens=0, cost_usd=0.2, estimated=False,
    )  # fmt: skip
    response = await admin.client.get("/v1/usage", headers=ADMIN)
    assert response.status_code == 200
    body = response.json()
    today = dt.datetime.fromtimestamp(WALL, dt.UTC).date()
    assert (body["since"], body["until"]) == (
        (today - dt.timedelta(days=30)).isoformat(),
        today.isoformat(),
    )
    assert body["group_by"] == ["day", "tenant", "model"]
    assert body["data"][0] == {
        "day": "2027-01-14",
        "tenant": "team-a",
        "model": "gpt-4o",
        "provider": "",
        "requests": 3,
        "errors": 1,
        "prompt_tokens": 30,
        "completion_tokens": 12,
        "cached_tokens": 4,
        "cost_usd": 0.1,
        "estimated": 1,
    }
    assert [(r["day"], r["tenant"]) for r in body["data"]] == [
        ("2027-01-14", "team-a"),
        (today.isoformat(), "team-b"),
    ]
    assert body["total"] == {
        "requests": 4,
        "errors": 1,
        "prompt_tokens": 35,
        "completion_tokens": 12,
        "cached_tokens": 4,
        "cost_usd": pytest.approx(0.3),
        "estimated": 1,
    }


async def test_usage_is_reported_for_the_days_tenant_and_grouping_asked(admin: Admin) -> None:
    await admin.tenancy.usage.add(
        [
            UsageRow("2027-01-01", "team-a", "gpt-4o", "openai", requests=1, cost_usd=1.0),
            UsageRow("2027-01-02", "team-a", "gpt-4o", "azure", requests=2, cost_usd=2.0),
            UsageRow("2027-01-02", "team-a", "fast", "groq", requests=4, cost_usd=4.0),
            UsageRow("2027-01-02", "team-b", "gpt-4o", "openai", requests=8, cost_usd=8.0),
            UsageRow("2027-01-11", "team-a", "gpt-4o", "openai", requests=16, cost_usd=16.0),
        ]
    )
    params = {
        "since": "2027-01-01",
        "until": "2027-01-10",
        "tenant": "team-a",
        "group_by": "model, provider",
    }
    response = await admin.client.get("/v1/usage", params=params, headers=ADMIN)
    assert response.status_code == 200
    body = response.json()
    assert (body["since"], body["until"], body["tenant"]) == ("2027-01-01", "2027-01-10", "team-a")
    assert body["group_by"] == ["model", "provider"]
    found = [(r["model"], r["provider"], r["requests"], r["day"]) for r in body["data"]]
    assert found == [
        ("fast", "groq", 4, ""),
        ("gpt-4o", "azure", 2, ""),
        ("gpt-4o", "openai", 1, ""),
    ]
    assert body["total"]["requests"] == 7
    assert body["total"]["cost_usd"] == pytest.approx(7.0)


async def test_a_usage_report_ending_near_the_first_day_starts_on_it(admin: Admin) -> None:
    # 30 days before 0001-01-01 is no date: the default since was a 500 (OverflowError).
    response = await admin.client.get("/v1/usage", params={"until": "0001-01-10"}, headers=ADMIN)
    assert response.status_code == 200, response.text
    assert (response.json()["since"], response.json()["until"]) == ("0001-01-01", "0001-01-10")


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"since": "2027-1-1"}, "since"),
        ({"since": "20270101"}, "since"),
        ({"until": "2027-02-30"}, "until"),
        ({"since": "2027-01-10", "until": "2027-01-01"}, "since"),
        ({"group_by": "day,week"}, "group_by"),
        ({"tenant": "x" * 200}, "tenant"),
    ],
)
async def test_a_bad_usage_query_is_a_400(admin: Admin, params: dict[str, str], param: str) -> None:
    response = await admin.client.get("/v1/usage", params=params, headers=ADMIN)
    assert response.status_code == 400
    assert error_of(response)["param"] == param
