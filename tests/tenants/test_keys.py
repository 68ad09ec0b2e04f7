"""Virtual keys: new_key, their JSON form, and the key stores (SQLite in memory and in a file,
Redis on a real server)."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from types import MappingProxyType

import pytest
from pydantic import SecretStr

from leapasgi.exceptions import ConflictError, NotFoundError, StoreUnavailableError
from leapasgi.state.redis import RedisState
from leapasgi.tenants._redis_keys import RedisKeyStore
from leapasgi.tenants._sqlite import SqliteFile
from leapasgi.tenants.base import KEY_PREFIX, KeyStore, VirtualKey, key_digest
from leapasgi.tenants.keys import (
    SqliteKeyStore,
    key_from_json,
    key_to_json,
    new_key,
    policy_from_json,
)
from leapasgi.tenants.policy import Budget, Period, TenantPolicy
from tests.redis_server import RedisServer, redis_server

__all__ = ["redis_server"]

pytestmark = pytest.mark.anyio

NOW = 1_800_000_000.0
POLICY = TenantPolicy(
    models=frozenset({"gpt-4o", "fast"}),
    rpm=60,
    tpm=10_000,
    max_in_flight=4,
    budget=Budget(25.0, Period.DAY, 0.8),
)


def make(tenant: str | None = "team-a", *, now: float = NOW) -> tuple[VirtualKey, str]:
    return new_key(
        tenant=tenant,
        name="ci",
        policy=POLICY,
        expires_at=now + 3600,
        tags=["ci", "eu"],
        metadata={"owner": "ops", "n": 3},
        now=now,
    )


def test_new_key_has_a_long_random_secret_and_keeps_only_its_digest() -> None:
    key, secret = make()
    assert re.fullmatch(re.escape(KEY_PREFIX) + r"[A-Za-z0-9_-]{43}", secret)
    assert re.fullmatch(r"key_[0-9a-f]{16}", key.id)
    assert key.digest == key_digest(secret)
    assert key.hint == secret[:7]
    assert key.tenant == "team-a"
    assert key.created_at == NOW
    assert key.expires_at == NOW + 3600
    assert key.tags == ("ci", "eu")
    assert dict(key.metadata) == {"owner": "ops", "n": 3}
    assert secret not in key_to_json(key)
    other, other_secret = make()
    assert (other.id, other_secret) != (key.id, secret)


def test_a_key_without_a_tenant_is_its_own_tenant() -> None:
    key, _ = make(tenant=None)
    assert key.tenant == key.id


def test_policies_and_keys_survive_their_json() -> None:
    for policy in (POLICY, TenantPolicy(), TenantPolicy(models=frozenset(), rpm=1)):
        assert policy_from_json(json.loads(json.dumps(policy.to_json()))) == policy
    key, _ = make()
    key = replace(key, revoked_at=NOW + 5)
    assert key_from_json(key_to_json(key)) == key
    assert key_from_json(key_to_json(key).encode()) == key


@pytest.mark.parametrize(
    "text",
    [
        "not json",
        "[]",
        '{"id": "key_1"}',
        '{"id": "k", "digest": "d", "hint": "h", "tenant": "t", "policy": {"rpm": "60"}}',
        '{"id": "k", "digest": "d", "hint": "h", "tenant": "t", "policy": {"budget": {"usd": 0}}}',
        '{"id": "k", "digest": "d", "hint": "h", "tenant": "t", "metadata": [1]}',
    ],
)
def test_key_from_json_refuses_what_is_not_a_key(text: str) -> None:
    with pytest.raises(ValueError, match=r"."):
        key_from_json(text)


@pytest.fixture(params=["memory", "file", "redis"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[KeyStore]:
    if request.param == "redis":
        server: RedisServer = request.getfixturevalue("redis_server")
        state = RedisState(SecretStr(server.url), op_timeout=1.0)
        try:
            yield RedisKeyStore(state.link, "test")
        finally:
            await state.aclose()
        return
    database = SqliteFile(tmp_path / "t.sqlite3" if request.param == "file" else None)
    try:
        yield SqliteKeyStore(database)
    finally:
        database.close()


async def test_a_store_finds_keys_by_digest_and_id(store: KeyStore) -> None:
    key, secret = make()
    await store.add(key)
    assert await store.find(key_digest(secret)) == key
    assert await store.get(key.id) == key
    assert await store.find(key_digest(secret + "x")) is None
    assert await store.get("key_0000000000000000") is None


async def test_a_store_lists_every_key_oldest_first(store: KeyStore) -> None:
    assert await store.list() == []
    made = [make(now=NOW + offset)[0] for offset in (30, 10, 20)]
    for key in made:
        await store.add(key)
    assert await store.list() == sorted(made, key=lambda k: k.created_at)


async def test_a_store_replaces_a_key_and_keeps_its_digest(store: KeyStore) -> None:
    key, secret = make()
    await store.add(key)
    changed = replace(
        key, name="renamed", policy=TenantPolicy(rpm=5), metadata=MappingProxyType({})
    )
    await store.put(changed)
    revoked = changed.revoked(NOW + 1)
    await store.put(revoked)
    assert await store.get(key.id) == revoked
    assert await store.find(key_digest(secret)) == revoked
    assert await store.list() == [revoked]


async def test_a_store_refuses_to_put_an_unknown_key_or_add_one_twice(store: KeyStore) -> None:
    key, _ = make()
    with pytest.raises(NotFoundError):
        await store.put(key)
    await store.add(key)
    with pytest.raises(ConflictError):
        await store.add(key)
    with pytest.raises(NotFoundError):
        await store.put(replace(key, digest=key_digest("another secret")))
    assert await store.list() == [key]


async def test_two_databases_on_one_file_see_each_others_writes(tmp_path: Path) -> None:
    path = tmp_path / "shared.sqlite3"
    first, second = SqliteFile(path), SqliteFile(path)
    try:
        one, two = SqliteKeyStore(first), SqliteKeyStore(second)
        key, secret = make()
        await one.add(key)
        assert await two.find(key_digest(secret)) == key
        await two.put(key.revoked(NOW + 1))
        found = await one.get(key.id)
        assert found is not None
        assert found.revoked_at == NOW + 1
    finally:
        first.close()
        second.close()


async def test_an_unreadable_stored_key_is_a_store_error_not_a_crash(tmp_path: Path) -> None:
    database = SqliteFile(tmp_path / "t.sqlite3")
    try:
        store = SqliteKeyStore(database)
        key, _ = make()
        await store.add(key)
        await database.run(lambda c: c.execute("UPDATE virtual_keys SET record = 'garbage'"))
        with pytest.raises(StoreUnavailableError, match="unreadable"):
            await store.get(key.id)
    finally:
        database.close()


async def test_redis_keys_are_one_get_away_by_digest(redis_server: RedisServer) -> None:
    state = RedisState(SecretStr(redis_server.url), op_timeout=1.0)
    try:
        store = RedisKeyStore(state.link, "lp")
        key, secret = make()
        await store.add(key)
        client = state.link.client
        stored = await client.execute("GET", f"lp:vk:digest:{key_digest(secret)}")
        assert key_from_json(stored) == key
        assert await client.execute("GET", f"lp:vk:id:{key.id}") == key.digest.encode()
        assert await client.execute("SMEMBERS", "lp:vk:ids") == [key.id.encode()]
    finally:
        await state.aclose()


async def test_redis_keys_raise_store_unavailable_when_redis_is_gone(
    redis_server: RedisServer,
) -> None:
    state = RedisState(SecretStr(redis_server.url), op_timeout=0.5)
    try:
        store = RedisKeyStore(state.link, "lp")
        key, secret = make()
        await store.add(key)
        redis_server.kill()
        calls = [
            store.find(key_digest(secret)),
            store.get(key.id),
            store.list(),
            store.put(key.revoked(NOW)),
            store.add(make()[0]),
        ]
        for call in calls:
            with pytest.raises(StoreUnavailableError, match="Redis is unreachable"):
                await call
    finally:
        await state.aclose()
