"""RedisState with Redis up: two instances on one real server act as two replicas sharing
limits, the cache and its claims, sticky sessions, the lock, breaker events and
conversations."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from leapasgi.conversations import StoredResponse
from leapasgi.state._redis_limits import SETTLE_DELAY
from leapasgi.state.base import BreakerEvent, Bucket, Reservation
from leapasgi.state.redis import RedisState

from .conftest import Replicas, eventually, raw

pytestmark = pytest.mark.anyio


async def both(replicas: Replicas, **options: Any) -> tuple[RedisState, RedisState]:
    return await replicas.start(**options), await replicas.start(**options)


def stored(rid: str, *, owner: str | None = "alice", previous: str | None = None) -> StoredResponse:
    response = {"id": rid, "object": "response", "output": [{"type": "message", "text": rid}]}
    return StoredResponse(rid, response, ({"role": "user", "content": rid},), previous, owner)


async def raw_keys(url: str, pattern: str) -> list[str]:
    return sorted(key.decode() for key in await raw(url, "KEYS", pattern))


async def test_rpm_admits_exactly_the_limit_across_two_replicas(replicas: Replicas) -> None:
    # 160 scripts at once may take longer than 0.1 s on a busy test machine:
    # this is about exactness, the timeouts have tests of their own.
    a, b = await both(replicas, op_timeout=1.0)
    buckets = (Bucket("p:openai", rpm=100), Bucket("m:openai:gpt", rpm=1000, tpm=10**9))
    results = await asyncio.gather(
        *(state.limiter.reserve(buckets, 10) for _ in range(80) for state in (a, b))
    )
    admitted = [r for r in results if isinstance(r, Reservation)]
    refused = [r for r in results if not isinstance(r, Reservation)]
    assert len(admitted) == 100
    assert len(refused) == 60
    assert all(0 < wait <= 60 for wait in refused)
    assert len({r.id for r in admitted}) == 100
    assert a.status().shared
    assert b.status().shared
    assert a.status().errors == 0


async def test_tpm_reserves_estimates_reconciles_to_usage_and_releases(replicas: Replicas) -> None:
    a, b = await both(replicas)
    buckets = (Bucket("p:x", tpm=1000),)
    first = await a.limiter.reserve(buckets, 600)
    assert isinstance(first, Reservation)
    assert not isinstance(await b.limiter.reserve(buckets, 600), Reservation)
    a.limiter.settle(first, 300)  # it used less than estimated
    await a.limiter.flush()
    second = await b.limiter.reserve(buckets, 600)
    assert isinstance(second, Reservation)  # 300 + 600
    assert not isinstance(await a.limiter.reserve(buckets, 200), Reservation)  # 1100
    b.limiter.settle(second, None)  # failed: everything back
    await b.limiter.flush()
    assert isinstance(await a.limiter.reserve(buckets, 700), Reservation)  # 300 + 700
    # More tokens than the bucket ever holds: refused for a whole window.
    assert await a.limiter.reserve(buckets, 1001) == 60.0


async def test_tokens_count_only_against_buckets_with_a_tpm(replicas: Replicas) -> None:
    a = await replicas.start()
    only_rpm = (Bucket("p:x", rpm=5),)
    assert isinstance(await a.limiter.reserve(only_rpm, 10**12), Reservation)
    unlimited = (Bucket("p:free"),)
    for _ in range(3):
        assert isinstance(await a.limiter.reserve(unlimited, 10**12), Reservation)
    assert await raw_keys(replicas.server.url, "leap:rl:p:free*") == []


async def test_a_release_frees_room_and_a_second_settle_does_nothing(replicas: Replicas) -> None:
    a, b = await both(replicas)
    buckets = (Bucket("p:x", rpm=2),)
    one, two = await a.limiter.reserve(buckets, 0), await b.limiter.reserve(buckets, 0)
    assert isinstance(one, Reservation)
    assert isinstance(two, Reservation)
    assert not isinstance(await b.limiter.reserve(buckets, 0), Reservation)
    a.limiter.settle(one, None)
    a.limiter.settle(one, None)
    await a.limiter.flush()
    three = await b.limiter.reserve(buckets, 0)
    assert isinstance(three, Reservation)
    assert not isinstance(await a.limiter.reserve(buckets, 0), Reservation)


async def test_an_unsettled_reservation_ends_with_its_window_and_idle_keys_vanish(
    replicas: Replicas,
) -> None:
    a, b = await both(replicas, window=0.3)
    buckets = (Bucket("p:x", rpm=1, tpm=100),)
    began = time.monotonic()
    assert isinstance(await a.limiter.reserve(buckets, 50), Reservation)  # never settled
    wait = await b.limiter.reserve(buckets, 10)
    assert isinstance(wait, float)
    assert 0.2 < wait <= 0.3
    await asyncio.sleep(began + 0.3 - time.monotonic() + 0.02)
    assert isinstance(await b.limiter.reserve(buckets, 100), Reservation)  # tokens back too
    await asyncio.sleep(0.35)
    assert await raw_keys(replicas.server.url, "leap:rl:*") == []


async def test_a_reserve_cancelled_in_flight_is_given_back(replicas: Replicas) -> None:
    a = await replicas.start()
    buckets = (Bucket("p:x", rpm=1000),)
    tasks = [asyncio.create_task(a.limiter.reserve(buckets, 0)) for _ in range(50)]
    await asyncio.sleep(0)  # started, probably sent, then cancelled
    for task in tasks:
        task.cancel()
    for result in await asyncio.gather(*tasks, return_exceptions=True):
        if isinstance(result, Reservation):  # done before the cancel came
            a.limiter.settle(result, None)
    await a.limiter.flush()
    assert await raw(replicas.server.url, "ZCARD", "leap:rl:p:x:z") == 0
    assert a.status().shared
    # The connection is in step: answers go to the calls that asked.
    for i in range(20):
        await a.sticky.set(f"s{i}", f"p{i}", 10)
    assert [await a.sticky.get(f"s{i}") for i in range(20)] == [f"p{i}" for i in range(20)]


async def test_cache_entries_are_shared_and_live_for_their_ttl(replicas: Replicas) -> None:
    a, b = await both(replicas)
    await a.cache.put("k", b"value", 10)
    assert await b.cache.get("k") == b"value"
    assert await b.cache.get("missing") is None
    await a.cache.put("short", b"v", 0.1)
    await asyncio.sleep(0.15)
    assert await b.cache.get("short") is None
    assert await b.cache.delete("k")
    assert not await a.cache.delete("k")
    assert await a.cache.get("k") is None


async def test_cache_evicts_the_least_recently_used_past_its_entries(replicas: Replicas) -> None:
    a, b = await both(replicas, cache_max_entries=3)
    for key in ("a", "b", "c"):
        await a.cache.put(key, key.encode(), 10)
    assert await b.cache.get("a") == b"a"  # now "b" is the least recently used
    await b.cache.put("d", b"d", 10)
    assert [await a.cache.get(k) for k in "abcd"] == [b"a", None, b"c", b"d"]
    await asyncio.sleep(0.1)  # a sync round
    assert a.cache.usage() == (3, 3)
    assert await b.cache.clear() == 3
    assert await a.cache.get("a") is None


async def test_cache_evicts_past_its_bytes_and_never_keeps_an_oversized_value(
    replicas: Replicas,
) -> None:
    a, b = await both(replicas, cache_max_bytes=10)
    await a.cache.put("one", b"1111", 10)
    await a.cache.put("two", b"2222", 10)
    await b.cache.put("three", b"3333", 10)  # 12 bytes: "one" goes
    assert [await b.cache.get(k) for k in ("one", "two", "three")] == [None, b"2222", b"3333"]
    await a.cache.put("huge", b"x" * 11, 10)
    assert await b.cache.get("huge") is None
    assert await b.cache.get("two") == b"2222"
    await a.cache.put("two", b"22", 10)  # replaced: its size counts once
    await asyncio.sleep(0.1)
    assert a.cache.usage() == (2, 6)


async def test_a_claim_by_one_replica_holds_off_the_other_until_released(
    replicas: Replicas,
) -> None:
    a, b = await both(replicas)
    assert await a.cache.claim("k", 10)
    assert not await b.cache.claim("k", 10)
    assert await b.cache.claimed("k")
    await b.cache.release("k")  # not its claim: nothing happens
    assert await a.cache.claimed("k")
    await a.cache.release("k")
    assert not await b.cache.claimed("k")
    assert await b.cache.claim("k", 0.1)
    await asyncio.sleep(0.15)  # never released: it lapses
    assert not await a.cache.claimed("k")
    assert await a.cache.claim("k", 10)


async def test_sticky_sessions_are_shared_and_lapse(replicas: Replicas) -> None:
    a, b = await both(replicas)
    await a.sticky.set("session", "openai", 10)
    assert await b.sticky.get("session") == "openai"
    await b.sticky.set("session", "anthropic", 0.1)
    assert await a.sticky.get("session") == "anthropic"
    await asyncio.sleep(0.15)
    assert await a.sticky.get("session") is None


async def test_the_lock_is_held_by_one_replica_renewed_and_then_passed_on(
    replicas: Replicas,
) -> None:
    a, b = await both(replicas)
    assert await a.lock.acquire("prober", 0.3)
    assert not await b.lock.acquire("prober", 0.3)
    await asyncio.sleep(0.2)
    assert await a.lock.acquire("prober", 0.3)  # renewed: it lasts 0.3 s from now
    await asyncio.sleep(0.2)
    assert not await b.lock.acquire("prober", 0.3)
    assert await a.lock.acquire("other", 0.3)
    await asyncio.sleep(0.35)  # a stopped renewing
    assert await b.lock.acquire("prober", 0.3)
    assert not await a.lock.acquire("prober", 0.3)


async def test_a_breaker_event_of_one_replica_is_applied_by_the_other_within_a_second(
    replicas: Replicas,
) -> None:
    a, b = await both(replicas, sync_interval=0.25)  # the product's default
    now = time.time()
    a.board.publish(BreakerEvent("openai", at=now, open_until=now + 30, times_ejected=1))
    took = await eventually(lambda: len(replicas.applied[1]) == 1, within=1.0)
    assert took < 1.0
    (seen,) = replicas.applied[1]
    assert seen.provider == "openai"
    assert seen.open_until == now + 30
    assert seen.origin == a.origin
    # An older event does not undo a newer one; a newer one from the other side does.
    b.board.publish(BreakerEvent("openai", at=now - 5, hold_until=now + 1))
    b.board.publish(BreakerEvent("anthropic", at=now + 1, hold_until=now + 9, rate_limited=True))
    await eventually(lambda: len(replicas.applied[0]) == 1, within=1.0)
    assert replicas.applied[0][0].provider == "anthropic"
    assert replicas.applied[0][0].rate_limited
    b.board.publish(BreakerEvent("openai", at=now + 2))
    await eventually(lambda: len(replicas.applied[0]) == 2, within=1.0)
    assert replicas.applied[0][1].open_until is None
    await asyncio.sleep(0.15)
    assert len(replicas.applied[1]) == 1  # never its own events


async def test_a_failing_on_event_does_not_stop_the_sync(
    replicas: Replicas, caplog: pytest.LogCaptureFixture
) -> None:
    a = await replicas.start()
    seen: list[str] = []

    def on_event(event: BreakerEvent) -> None:
        seen.append(event.provider)
        if event.provider == "bad":
            raise RuntimeError("boom")

    await replicas.start(on_event=on_event)
    a.board.publish(BreakerEvent("bad", at=time.time()))
    await eventually(lambda: seen == ["bad"], within=1.0)
    a.board.publish(BreakerEvent("good", at=time.time()))
    await eventually(lambda: seen == ["bad", "good"], within=1.0)
    assert "applying a breaker event failed" in caplog.text


async def test_conversations_are_shared_and_only_their_owner_sees_them(
    replicas: Replicas,
) -> None:
    a, b = await both(replicas)
    store_a = a.responses(ttl=10, max_entries=100, max_bytes=10**6)
    store_b = b.responses(ttl=10, max_entries=100, max_bytes=10**6)
    await store_a.put(stored("r1"))
    await store_a.put(stored("r2", previous="r1"))
    got = await store_b.get("r2", owner="alice")
    assert got is not None
    assert got.previous == "r1"
    assert got.response == stored("r2").response
    assert got.input == stored("r2").input
    assert got.owner == "alice"
    assert await store_b.get("r2", owner="mallory") is None
    assert await store_b.get("r2", owner=None) is None
    assert not await store_b.delete("r2", owner="mallory")
    assert await store_b.delete("r2", owner="alice")
    assert await store_a.get("r2", owner="alice") is None
    await store_a.put(stored("anon", owner=None))
    assert await store_b.get("anon", owner=None) is not None


async def test_conversations_are_bounded_and_live_for_their_ttl(replicas: Replicas) -> None:
    a, b = await both(replicas)
    tiny = a.responses(ttl=10, max_entries=2, max_bytes=10**6)
    for rid in ("r1", "r2", "r3"):
        await tiny.put(stored(rid))
    reader = b.responses(ttl=10, max_entries=2, max_bytes=10**6)
    assert [await reader.get(r, owner="alice") is not None for r in ("r1", "r2", "r3")] == [
        False,
        True,
        True,
    ]
    small = a.responses(ttl=10, max_entries=100, max_bytes=50)
    await small.put(stored("big"))  # its JSON is over 50 bytes: never kept
    assert await reader.get("big", owner="alice") is None
    short = a.responses(ttl=0.1, max_entries=100, max_bytes=10**6)
    await short.put(stored("brief"))
    assert await reader.get("brief", owner="alice") is not None
    await asyncio.sleep(0.15)
    assert await reader.get("brief", owner="alice") is None


async def test_keys_live_under_the_prefix(replicas: Replicas) -> None:
    a = await replicas.start(prefix="gw1")
    await a.limiter.reserve((Bucket("p:x", rpm=5, tpm=50),), 1)
    await a.cache.put("k", b"v", 10)
    await a.cache.claim("k", 10)
    await a.sticky.set("s", "p", 10)
    await a.lock.acquire("prober", 10)
    await a.responses(ttl=10, max_entries=5, max_bytes=10**6).put(stored("r"))
    a.board.publish(BreakerEvent("p", at=time.time()))
    await asyncio.sleep(0.1)
    keys = await raw_keys(replicas.server.url, "*")
    assert keys
    assert all(key.startswith("gw1:") for key in keys), keys


async def test_a_settlement_rides_with_the_next_reserve_or_goes_on_its_own(
    replicas: Replicas,
) -> None:
    a, b = await both(replicas)
    buckets = (Bucket("p:x", rpm=1),)
    first = await a.limiter.reserve(buckets, 0)
    assert isinstance(first, Reservation)
    a.limiter.settle(first, None)
    second = await a.limiter.reserve(buckets, 0)  # the release went first, in the same script
    assert isinstance(second, Reservation)
    assert a.status().details["pending_settlements"] == 0
    a.limiter.settle(second, None)  # no reserve follows: sent after SETTLE_DELAY
    await asyncio.sleep(SETTLE_DELAY + 0.05)
    assert isinstance(await b.limiter.reserve(buckets, 0), Reservation)


async def test_scripts_are_loaded_again_when_the_server_lost_them(replicas: Replicas) -> None:
    a = await replicas.start()
    assert isinstance(await a.limiter.reserve((Bucket("p:x", rpm=5),), 0), Reservation)
    await raw(replicas.server.url, "SCRIPT", "FLUSH")
    assert isinstance(await a.limiter.reserve((Bucket("p:x", rpm=5),), 0), Reservation)
    await a.cache.put("k", b"v", 10)
    assert await a.cache.get("k") == b"v"
    assert a.status().errors == 0


async def test_the_wait_given_is_until_the_oldest_request_leaves_the_window(
    replicas: Replicas,
) -> None:
    a = await replicas.start(window=1.0)
    buckets = (Bucket("p:x", rpm=2),)
    began = time.monotonic()
    assert isinstance(await a.limiter.reserve(buckets, 0), Reservation)
    await asyncio.sleep(0.2)
    assert isinstance(await a.limiter.reserve(buckets, 0), Reservation)
    wait = await a.limiter.reserve(buckets, 0)
    assert isinstance(wait, float)
    expected = began + 1.0 - time.monotonic()
    assert abs(wait - expected) < 0.05


async def test_large_windows_prune_and_count_tokens_in_slices(replicas: Replicas) -> None:
    # Over 1000 members pruned at once, and a token count walking past 200 members: the
    # scripts' slices (Lua's unpack has a limit).
    a = await replicas.start(window=2.0, op_timeout=2.0)
    tokens = (Bucket("p:t", tpm=1500),)
    requests = (Bucket("p:r", rpm=1300),)
    began = time.monotonic()
    results = await asyncio.gather(
        *(a.limiter.reserve(tokens, 1) for _ in range(1200)),
        *(a.limiter.reserve(requests, 0) for _ in range(1200)),
    )
    done = time.monotonic()
    assert all(isinstance(r, Reservation) for r in results)
    # 1200 + 700 tokens is 400 over: room once the oldest 400 reservations leave.
    asked = time.monotonic()
    wait = await a.limiter.reserve(tokens, 700)
    assert isinstance(wait, float)
    assert began + 2.0 - asked - 0.01 <= wait <= 2.0
    await asyncio.sleep(done + 2.02 - time.monotonic())
    assert isinstance(await a.limiter.reserve(tokens, 1500), Reservation)  # all pruned
    assert isinstance(await a.limiter.reserve(requests, 0), Reservation)
    assert await raw(replicas.server.url, "ZCARD", "leap:rl:p:r:z") == 1
    assert await raw(replicas.server.url, "HGET", "leap:rl:p:t:h", "#") == b"1500"


async def test_lapsed_cache_entries_leave_the_bounds_at_the_next_put(replicas: Replicas) -> None:
    a = await replicas.start(cache_max_entries=3)
    for key in "abc":
        await a.cache.put(key, b"vv", 0.1)
    await asyncio.sleep(0.15)
    await a.cache.put("d", b"v", 10)
    assert a.cache.evictions == 0  # the lapsed ones were swept, nothing live was evicted
    await asyncio.sleep(0.1)
    assert a.cache.usage() == (1, 1)


async def test_a_foreign_value_on_the_board_is_skipped_and_replaced(replicas: Replicas) -> None:
    url = replicas.server.url
    await raw(url, "HSET", "leap:breakers", "openai", b"not json", "other", b"[1]")
    a, b = await both(replicas)
    a.board.publish(BreakerEvent("openai", at=time.time()))
    await eventually(lambda: [e.provider for e in replicas.applied[1]] == ["openai"])
    assert a.status().shared
    assert b.status().shared
    assert await raw(url, "HGET", "leap:breakers", "other") == b"[1]"
