"""The same assertions against MemoryState and RedisState: both backends keep one contract."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from leapasgi.conversations import StoredResponse
from leapasgi.state import MemoryState, StateBackend
from leapasgi.state.base import BreakerEvent, Bucket, Reservation
from leapasgi.state.redis import RedisState
from tests.redis_server import RedisServer

from .conftest import replica

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["memory", "redis"])
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[StateBackend]:
    state: StateBackend
    if request.param == "memory":
        state = MemoryState(cache_max_entries=2, cache_max_bytes=1000)
    else:
        server: RedisServer = request.getfixturevalue("redis_server")
        state = replica(server.url, cache_max_entries=2, cache_max_bytes=1000)
    await state.start(lambda event: None)
    try:
        yield state
    finally:
        await state.aclose()


async def settled(state: StateBackend) -> None:
    """Settlements are immediate in memory, in the background with Redis: wait for them."""
    if isinstance(state, RedisState):
        await state.limiter.flush()


async def test_limits(backend: StateBackend) -> None:
    rpm = (Bucket("p:a", rpm=3),)
    taken = [await backend.limiter.reserve(rpm, 0) for _ in range(3)]
    assert all(isinstance(r, Reservation) for r in taken)
    wait = await backend.limiter.reserve(rpm, 0)
    assert isinstance(wait, float)
    assert 0 < wait <= 60
    first = taken[0]
    assert isinstance(first, Reservation)
    backend.limiter.settle(first, None)
    backend.limiter.settle(first, None)
    await settled(backend)
    assert isinstance(await backend.limiter.reserve(rpm, 0), Reservation)

    tpm = (Bucket("p:b", tpm=100), Bucket("m:b:x", rpm=10))
    estimate = await backend.limiter.reserve(tpm, 60)
    assert isinstance(estimate, Reservation)
    assert not isinstance(await backend.limiter.reserve(tpm, 50), Reservation)
    backend.limiter.settle(estimate, 10)
    await settled(backend)
    assert isinstance(await backend.limiter.reserve(tpm, 50), Reservation)
    assert await backend.limiter.reserve(tpm, 101) == 60.0


async def test_cache(backend: StateBackend) -> None:
    cache = backend.cache
    await cache.put("a", b"1", 10)
    await cache.put("b", b"2", 10)
    assert await cache.get("a") == b"1"
    await cache.put("c", b"3", 10)  # "b" was used least recently
    assert [await cache.get(k) for k in "abc"] == [b"1", None, b"3"]
    await cache.put("big", b"x" * 1001, 10)
    assert await cache.get("big") is None
    assert await cache.delete("a")
    assert not await cache.delete("a")
    await cache.put("brief", b"v", 0.05)
    await asyncio.sleep(0.1)
    assert await cache.get("brief") is None
    await cache.put("d", b"4", 10)
    assert await cache.clear() >= 1
    assert await cache.get("d") is None

    assert await cache.claim("k", 10)
    assert not await cache.claim("k", 10)
    assert await cache.claimed("k")
    await cache.release("k")
    assert not await cache.claimed("k")


async def test_a_lookup_claims_a_miss_and_a_put_gives_the_claim_back(
    backend: StateBackend,
) -> None:
    cache = backend.cache

    assert await cache.lookup("q") is False  # no claim asked for
    assert await cache.lookup("q", claim=10) is True
    assert await cache.lookup("q", claim=10) is False  # someone fills it already
    assert await cache.claimed("q")
    await cache.put("q", b"answer", 10, release=True)

    assert not await cache.claimed("q")
    assert await cache.lookup("q", claim=10) == b"answer"
    assert not await cache.claimed("q")  # a hit claims nothing


async def test_sticky_lock_board_and_status(backend: StateBackend) -> None:
    await backend.sticky.set("s", "openai", 10)
    assert await backend.sticky.get("s") == "openai"
    assert await backend.sticky.get("nobody") is None
    assert await backend.lock.acquire("prober", 10)
    assert await backend.lock.acquire("prober", 10)
    backend.board.publish(BreakerEvent("openai", at=1.0))
    status = backend.status()
    assert status.backend == backend.kind
    assert not status.degraded
    assert status.errors == 0
    assert status.shared == (backend.kind == "redis")


async def test_responses(backend: StateBackend) -> None:
    store = backend.responses(ttl=10, max_entries=10, max_bytes=10**6)
    response = {"id": "r1", "output": [{"type": "message"}]}
    await store.put(StoredResponse("r1", response, ({"role": "user"},), None, "alice"))
    got = await store.get("r1", owner="alice")
    assert got is not None
    assert (got.response, got.input, got.previous) == (response, ({"role": "user"},), None)
    assert await store.get("r1", owner="bob") is None
    assert not await store.delete("r1", owner="bob")
    assert await store.delete("r1", owner="alice")
    assert await store.get("r1", owner="alice") is None
    assert not await store.delete("r1", owner="alice")
