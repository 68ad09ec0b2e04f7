"""The Responses conversation store: bounds, time to live, owners, and history rebuilt from a
chain of stored responses."""

from __future__ import annotations

from typing import Any

import pytest

from leapasgi import FakeClock
from leapasgi.conversations import MemoryResponseStore, StoredResponse, history_of
from leapasgi.exceptions import InvalidRequestError, NotFoundError

pytestmark = pytest.mark.anyio


def user(text: str) -> dict[str, Any]:
    return {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}


def said(text: str) -> dict[str, Any]:
    return {
        "type": "message",
        "role": "assistant",
        "content": [{"type": "output_text", "text": text, "annotations": []}],
    }


def stored(
    rid: str, text: str, *, previous: str | None = None, owner: str | None = None
) -> StoredResponse:
    response = {"id": rid, "object": "response", "output": [said(f"re: {text}")]}
    return StoredResponse(rid, response, (user(text),), previous, owner)


async def test_a_chain_comes_back_as_every_input_and_output_in_order() -> None:
    store = MemoryResponseStore()
    await store.put(stored("r1", "one"))
    await store.put(stored("r2", "two", previous="r1"))
    await store.put(stored("r3", "three", previous="r2"))
    items = await history_of("r3", [store], owner=None)
    assert items == [
        user("one"),
        said("re: one"),
        user("two"),
        said("re: two"),
        user("three"),
        said("re: three"),
    ]


async def test_a_missing_link_is_a_404_naming_it() -> None:
    store = MemoryResponseStore()
    await store.put(stored("r2", "two", previous="r1"))
    with pytest.raises(NotFoundError) as caught:
        await history_of("r2", [store], owner=None)
    assert caught.value.code == "previous_response_not_found"
    assert caught.value.param == "previous_response_id"
    assert "r1" in caught.value.message


async def test_another_owners_responses_are_not_found() -> None:
    store = MemoryResponseStore()
    await store.put(stored("r1", "one", owner="alice"))
    assert await store.get("r1", owner="bob") is None
    assert not await store.delete("r1", owner="bob")
    with pytest.raises(NotFoundError):
        await history_of("r1", [store], owner="bob")
    assert (await store.get("r1", owner="alice")) is not None
    assert await store.delete("r1", owner="alice")
    assert await store.get("r1", owner="alice") is None


async def test_stores_are_searched_in_order_the_connections_own_first() -> None:
    local, shared = MemoryResponseStore(), MemoryResponseStore()
    await shared.put(stored("r1", "one"))
    await local.put(stored("r2", "two", previous="r1"))
    assert len(await history_of("r2", [local, shared], owner=None)) == 4


async def test_entries_expire_after_their_time_to_live() -> None:
    clock = FakeClock()
    store = MemoryResponseStore(ttl=60, clock=clock)
    await store.put(stored("r1", "one"))
    clock.advance(59)
    assert await store.get("r1", owner=None) is not None
    clock.advance(1)
    assert await store.get("r1", owner=None) is None
    assert len(store) == 0
    assert store.bytes == 0


async def test_the_oldest_go_first_past_the_entry_bound() -> None:
    store = MemoryResponseStore(max_entries=2)
    for rid in ("r1", "r2", "r3"):
        await store.put(stored(rid, rid))
    assert await store.get("r1", owner=None) is None
    assert [await store.get(r, owner=None) is not None for r in ("r2", "r3")] == [True, True]


async def test_the_byte_bound_holds_and_an_oversized_entry_is_never_kept() -> None:
    one = stored("r0", "x" * 1000)
    store = MemoryResponseStore(max_bytes=one.size() * 3)
    for i in range(10):
        await store.put(stored(f"r{i}", "x" * 1000))
        assert store.bytes <= store.max_bytes
    assert len(store) == 3
    await store.put(stored("huge", "x" * one.size() * 4))
    assert await store.get("huge", owner=None) is None
    assert len(store) == 3


async def test_a_cycle_or_endless_chain_is_refused_not_walked_forever() -> None:
    store = MemoryResponseStore()
    await store.put(stored("a", "one", previous="b"))
    await store.put(stored("b", "two", previous="a"))
    with pytest.raises(InvalidRequestError):
        await history_of("a", [store], owner=None)


async def test_a_size_the_caller_knows_is_what_the_bound_counts() -> None:
    store = MemoryResponseStore(max_bytes=10_000)
    known = StoredResponse("r1", {"id": "r1", "output": []}, (user("one"),), nbytes=4_000)
    await store.put(known)
    assert store.bytes == 4_000
    await store.put(StoredResponse("r2", {"id": "r2", "output": []}, (), nbytes=7_000))
    assert await store.get("r1", owner=None) is None  # 11,000 > 10,000: the oldest went
    assert store.bytes == 7_000
