"""The response cache on its own: which requests it takes and under what key, entries and their
lifetime (the injected clock), the bounds, coalescing (in this process and across replicas
sharing one store), a failing store; and the gateway's app with the cache on, in process."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterable
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from leapasgi import Gateway
from leapasgi.asgi import messages
from leapasgi.asgi._cache import PINGS
from leapasgi.cache import CachedAnswer, CacheTicket, Flight, ResponseCache, is_cache_key
from leapasgi.clock import FakeClock
from leapasgi.config import CacheConfig, GatewayConfig, HealthConfig, ServerConfig
from leapasgi.manager import ProviderManager
from leapasgi.providers.mock import MockProvider
from leapasgi.sse import PING
from leapasgi.state.memory import MemoryCacheStore

pytestmark = pytest.mark.anyio

CHAT = "/v1/chat/completions"
RESPONSES = "/v1/responses"
MESSAGES = "/v1/messages"
EMBEDDINGS = "/v1/embeddings"
BODY: dict[str, Any] = {
    "model": "m1",
    "messages": [{"role": "user", "content": "hi"}],
    "temperature": 0.5,
}
JSON_TYPE = b"application/json"
WAIT = 5.0


def cache_for(
    clock: FakeClock | None = None, store: MemoryCacheStore | None = None, **options: Any
) -> ResponseCache:
    clock = clock or FakeClock()
    options.setdefault("models", ["*"])
    return ResponseCache(
        CacheConfig(enabled=True, **options),
        store if store is not None else MemoryCacheStore(clock=clock),
        clock=clock,
    )


def scope(key: str | None = "k1", **headers: str) -> dict[str, Any]:
    raw = [(name.replace("_", "-").encode(), value.encode()) for name, value in headers.items()]
    if key is not None:
        raw.append((b"authorization", f"Bearer {key}".encode()))
    return {"type": "http", "headers": raw}


def body(data: Any = None, **changes: Any) -> bytes:
    return json.dumps({**(BODY if data is None else data), **changes}).encode()


def ticket(cache: ResponseCache, route: str = CHAT, raw: bytes | None = None, **sc: Any) -> Any:
    return cache.plan(route, scope(**sc), body() if raw is None else raw)


def key_of(cache: ResponseCache, route: str = CHAT, raw: bytes | None = None, **sc: Any) -> str:
    found = ticket(cache, route, raw, **sc)
    assert isinstance(found, CacheTicket)
    return found.key


# The key


async def test_the_key_is_the_canonical_request_as_a_digest() -> None:
    cache = cache_for()
    key = key_of(cache)
    assert is_cache_key(key)
    reordered = b'{ "temperature": 0.5,\n "messages": [{"content": "hi", "role": "user"}],'
    reordered += b' "model": "m1" }'
    assert key_of(cache, raw=reordered) == key
    assert key_of(cache, raw=body(stream=False)) == key  # false is the default
    # Identifiers and storage hints cannot change a chat answer.
    assert key_of(cache, raw=body(user="u-1", metadata={"a": "b"}, store=True)) == key
    assert key_of(cache, raw=body(temperature=0.6)) != key
    assert key_of(cache, raw=body(model="m2")) != key
    assert key_of(cache, raw=body(stream=True)) != key
    assert key_of(cache, RESPONSES) != key


async def test_the_key_is_the_tenants_unless_global() -> None:
    tenant = cache_for()
    assert key_of(tenant, key="k1") == key_of(tenant, key="k1")
    assert key_of(tenant, key="k1") != key_of(tenant, key="k2")
    assert key_of(tenant, key="k1") != key_of(tenant, key=None)
    shared = cache_for(scope="global")
    assert key_of(shared, key="k1") == key_of(shared, key="k2") == key_of(shared, key=None)


async def test_fields_echoed_in_a_response_object_stay_in_the_key() -> None:
    cache = cache_for()
    data = {"model": "m1", "input": "hi"}
    plain = key_of(cache, RESPONSES, body(data))
    assert key_of(cache, RESPONSES, body(data, user="u-1")) != plain
    assert key_of(cache, RESPONSES, body(data, metadata={"a": "b"})) != plain
    assert key_of(cache, EMBEDDINGS, body(data, user="u-1")) == key_of(
        cache, EMBEDDINGS, body(data)
    )


async def test_the_headers_a_native_messages_upstream_gets_are_in_its_key() -> None:
    cache = cache_for()
    data = {"model": "m1", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}
    raw = body(data)
    plain = key_of(cache, MESSAGES, raw, anthropic_version="2023-06-01")
    assert key_of(cache, MESSAGES, raw, anthropic_version="2023-06-01") == plain
    assert key_of(cache, MESSAGES, raw, anthropic_version="2099-01-01") != plain
    beta = key_of(cache, MESSAGES, raw, anthropic_version="2023-06-01", anthropic_beta="x-1")
    assert beta != plain
    assert (
        key_of(
            cache, MESSAGES, body(data, metadata={"user_id": "u"}), anthropic_version=("2023-06-01")
        )
        == plain
    )


# Which requests


async def test_only_the_configured_models_and_routes_unless_the_request_says() -> None:
    cache = cache_for(models=["m1", "fast"], routes=[EMBEDDINGS])
    assert ticket(cache) is not None
    assert ticket(cache, raw=body(model="fast")) is not None
    assert ticket(cache, raw=body(model="m2")) is None
    assert ticket(cache, raw=body(model="m2"), x_leap_cache="on") is not None
    assert ticket(cache, x_leap_cache="off") is None
    assert ticket(cache, EMBEDDINGS, body(model="m2")) is not None
    nothing = cache_for(models=[])
    assert ticket(nothing) is None
    assert ticket(nothing, x_leap_cache="ON") is not None


async def test_cache_control() -> None:
    cache = cache_for()
    assert ticket(cache, cache_control="no-store") is None
    assert ticket(cache, cache_control="max-age=0, No-Store", x_leap_cache="on") is None
    fresh = ticket(cache, cache_control="no-cache")
    assert fresh is not None
    assert not fresh.read
    assert fresh.key == key_of(cache)
    assert ticket(cache, cache_control="max-age=60").read


async def test_requests_the_cache_leaves_alone() -> None:
    cache = cache_for()
    for raw in (b"not json", b"[1, 2]", b'{"messages": []}', b'{"model": 3}', b"[" * 100_000):
        assert ticket(cache, raw=raw) is None
    data = {"model": "m1", "input": "hi"}
    assert ticket(cache, RESPONSES, body(data, generate=False)) is None
    shared = cache_for(scope="global")
    # Globally, a stored response's id would be one key's: only unstored turns are shared.
    assert ticket(shared, RESPONSES, body(data)) is None
    assert ticket(shared, RESPONSES, body(data, store=False)) is not None


# Entries


async def test_an_entry_lives_for_its_ttl_with_its_age() -> None:
    clock = FakeClock()
    cache = cache_for(clock, ttl=60)
    found = ticket(cache)
    await cache.keep(found, None, JSON_TYPE, [b'{"a":', b"1}"])
    clock.advance(59.5)
    assert await cache.lookup(found) == CachedAnswer(JSON_TYPE, b'{"a":1}', 59)
    clock.advance(0.5)
    assert await cache.lookup(found) is None
    assert cache.snapshot().stored == 1


async def test_the_store_keeps_the_most_recently_used() -> None:
    clock = FakeClock()
    cache = cache_for(clock, store=MemoryCacheStore(max_entries=2, clock=clock))
    first, second, third = (ticket(cache, raw=body(temperature=t)) for t in (0.1, 0.2, 0.3))
    await cache.keep(first, None, JSON_TYPE, [b"1"])
    await cache.keep(second, None, JSON_TYPE, [b"2"])
    assert await cache.lookup(first) is not None  # used: the second is now the oldest
    await cache.keep(third, None, JSON_TYPE, [b"3"])
    assert await cache.lookup(second) is None
    assert await cache.lookup(first) is not None
    assert await cache.lookup(third) is not None
    assert cache.snapshot().entries == 2


async def test_forget_and_clear() -> None:
    cache = cache_for()
    one, two = ticket(cache), ticket(cache, raw=body(temperature=1))
    await cache.keep(one, None, JSON_TYPE, [b"1"])
    await cache.keep(two, None, JSON_TYPE, [b"2"])
    assert await cache.forget(one.key)
    assert not await cache.forget(one.key)
    assert await cache.clear() == 1
    assert await cache.lookup(two) is None


def test_the_keep_alives_left_out_are_the_relays() -> None:
    assert {PING, messages.PING} == PINGS


# Coalescing


async def test_identical_misses_wait_for_one_leader() -> None:
    cache = cache_for()
    found = ticket(cache)
    leader = await cache.join(found, wait=WAIT)
    assert isinstance(leader, Flight)
    followers = [asyncio.create_task(cache.join(found, wait=WAIT)) for _ in range(29)]
    await asyncio.sleep(0)
    assert not any(task.done() for task in followers)
    await cache.keep(found, leader, JSON_TYPE, [b"answer"])
    answers = await asyncio.gather(*followers)
    await cache.end(leader)
    assert all(isinstance(a, CachedAnswer) and a.body == b"answer" for a in answers)
    assert cache.snapshot().coalesced == 29
    assert isinstance(await cache.join(found, wait=WAIT), CachedAnswer)  # kept: the next hits


async def test_a_leader_that_keeps_nothing_releases_its_followers() -> None:
    cache = cache_for()
    found = ticket(cache)
    leader = await cache.join(found, wait=WAIT)
    assert isinstance(leader, Flight)
    followers = [asyncio.create_task(cache.join(found, wait=WAIT)) for _ in range(3)]
    await asyncio.sleep(0)
    await cache.end(leader)
    assert await asyncio.gather(*followers) == [None, None, None]
    assert not await cache.store.claimed(found.key)


async def test_a_follower_gone_leaves_the_others_waiting() -> None:
    cache = cache_for()
    found = ticket(cache)
    leader = await cache.join(found, wait=WAIT)
    assert isinstance(leader, Flight)
    gone = asyncio.create_task(cache.join(found, wait=WAIT))
    staying = asyncio.create_task(cache.join(found, wait=WAIT))
    await asyncio.sleep(0)
    gone.cancel()
    await cache.keep(found, leader, JSON_TYPE, [b"answer"])
    await cache.end(leader)
    answer = await staying
    assert isinstance(answer, CachedAnswer)
    await asyncio.gather(gone, return_exceptions=True)
    assert gone.cancelled()


async def test_a_wait_is_bounded() -> None:
    cache = cache_for()
    found = ticket(cache)
    leader = await cache.join(found, wait=WAIT)
    assert await cache.join(found, wait=0.01) is None
    assert isinstance(leader, Flight)
    await cache.end(leader)


async def test_misses_on_two_replicas_sharing_a_store_make_one_answer() -> None:
    clock = FakeClock()
    store = MemoryCacheStore(clock=clock)
    here, there = cache_for(clock, store), cache_for(clock, store)
    found = ticket(here)
    leader = await there.join(found, wait=WAIT)
    assert isinstance(leader, Flight)
    assert await store.claimed(found.key)
    follower = asyncio.create_task(here.join(found, wait=WAIT))
    local = asyncio.create_task(here.join(found, wait=WAIT))  # waits on the first one here
    await asyncio.sleep(0)
    await there.keep(found, leader, JSON_TYPE, [b"made there"])
    await there.end(leader)
    answers = await asyncio.gather(follower, local)
    assert [a.body for a in answers if isinstance(a, CachedAnswer)] == [b"made there"] * 2
    assert here.snapshot().coalesced == 2


async def test_a_replica_whose_leader_fails_makes_the_answer_itself() -> None:
    clock = FakeClock()
    store = MemoryCacheStore(clock=clock)
    here, there = cache_for(clock, store), cache_for(clock, store)
    found = ticket(here)
    leader = await there.join(found, wait=WAIT)
    assert isinstance(leader, Flight)
    follower = asyncio.create_task(here.join(found, wait=WAIT))
    await asyncio.sleep(0)
    await there.end(leader)
    assert isinstance(await follower, Flight)


class BrokenStore(MemoryCacheStore):
    """A store every call of which raises."""

    async def get(self, key: str) -> bytes | None:
        raise ConnectionError

    async def lookup(self, key: str, *, claim: float | None = None) -> bytes | bool:
        raise ConnectionError

    async def put(self, key: str, value: bytes, ttl: float, *, release: bool = False) -> None:
        raise ConnectionError

    async def claim(self, key: str, ttl: float) -> bool:
        raise ConnectionError

    async def release(self, key: str) -> None:
        raise ConnectionError


async def test_a_failing_store_costs_the_cache_not_the_answer() -> None:
    cache = cache_for(store=BrokenStore())
    found = ticket(cache)
    assert await cache.lookup(found) is None
    leader = await cache.join(found, wait=WAIT)
    assert isinstance(leader, Flight)
    await cache.keep(found, leader, JSON_TYPE, [b"answer"])
    await cache.end(leader)
    snapshot = cache.snapshot()
    assert (snapshot.stored, snapshot.store_errors) == (0, 3)


# The gateway's app, in process


def gateway_with(clock: FakeClock, mock: MockProvider, **cache: Any) -> Gateway:
    cache.setdefault("models", ["*"])
    config = GatewayConfig(
        health=HealthConfig(interval=0), cache=CacheConfig(enabled=True, **cache)
    )
    return Gateway(manager=ProviderManager(clock=clock), config=config, providers=[mock])


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def mock(clock: FakeClock) -> MockProvider:
    return MockProvider(clock=clock)


@pytest.fixture
async def client(clock: FakeClock, mock: MockProvider) -> AsyncIterator[httpx.AsyncClient]:
    async with gateway_with(clock, mock, ttl=30, max_entries=2) as gw:
        transport = httpx.ASGITransport(app=gw.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as c:
            yield c


def chat(text: str = "hi", **extra: Any) -> dict[str, Any]:
    return {"model": "mock-chat", "messages": [{"role": "user", "content": text}], **extra}


async def results(client: httpx.AsyncClient, bodies: Iterable[dict[str, Any]]) -> list[str]:
    return results_of(*[await client.post(CHAT, json=b) for b in bodies])


def results_of(*responses: httpx.Response) -> list[str]:
    return [r.headers["x-leap-cache"] for r in responses]


async def test_entries_expire_on_the_gateways_clock(
    client: httpx.AsyncClient, clock: FakeClock, mock: MockProvider
) -> None:
    first = await client.post(CHAT, json=chat())
    second = await client.post(CHAT, json=chat())
    assert (first.headers["x-leap-cache"], second.headers["x-leap-cache"]) == ("miss", "hit")
    assert second.content == first.content
    assert second.headers["age"] == "0"
    clock.advance(29)
    assert (await client.post(CHAT, json=chat())).headers["age"] == "29"
    clock.advance(1)
    assert await results(client, [chat()]) == ["miss"]
    assert len(mock.requests) == 2


async def test_the_gateway_keeps_the_most_recently_used(
    client: httpx.AsyncClient, mock: MockProvider
) -> None:
    assert await results(client, [chat("a"), chat("b"), chat("a"), chat("c")]) == [
        "miss",
        "miss",
        "hit",
        "miss",
    ]
    assert await results(client, [chat("a"), chat("c"), chat("b")]) == ["hit", "hit", "miss"]
    assert len(mock.requests) == 4


async def test_embeddings_are_cached_too(client: httpx.AsyncClient, mock: MockProvider) -> None:
    body = {"model": "mock-embed", "input": ["a", "b"]}
    first = await client.post(EMBEDDINGS, json=body)
    second = await client.post(EMBEDDINGS, json={**body, "user": "someone"})
    assert results_of(first, second) == ["miss", "hit"]
    assert second.json() == first.json()
    assert len(mock.embedding_requests) == 1


async def test_without_the_cache_there_is_nothing_to_forget() -> None:
    config = GatewayConfig(
        health=HealthConfig(interval=0), server=ServerConfig(admin_key=SecretStr("admin-key"))
    )
    async with Gateway(config=config, providers=[MockProvider()]) as gw:
        assert gw.cache is None
        transport = httpx.ASGITransport(app=gw.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as http:
            admin = {"Authorization": "Bearer admin-key"}
            assert (await http.delete("/v1/cache", headers=admin)).status_code == 404
            assert (await http.delete(f"/v1/cache/{'0' * 64}", headers=admin)).status_code == 404
            answer = await http.post(CHAT, json=chat())
            paths = (await http.get("/openapi.json")).json()["paths"]
            metrics = (await http.get("/metrics")).text
    assert "x-leap-cache" not in answer.headers
    assert "/v1/cache" not in paths
    assert "leap_cache" not in metrics
