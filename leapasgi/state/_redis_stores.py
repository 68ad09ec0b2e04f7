"""What RedisState keeps under keys: cache entries and their claims, conversations, sticky
sessions and the prober's lock. Each answers from its in-process fallback while degraded.

The cache and conversations are bounded stores of entries (``_Namespace``): one script per
put evicts the least recently used past the entries and bytes allowed.
"""

from __future__ import annotations

import json
from typing import cast

from ..conversations import MemoryResponseStore, StoredResponse
from . import _lua
from ._redis_link import DOWN, Link, ms
from ._resp import RedisClient, Script
from .memory import MemoryCacheStore, MemorySticky

__all__ = ["RedisCacheStore", "RedisLock", "RedisResponseStore", "RedisSticky"]

_PUT = Script(_lua.CACHE_PUT)
_PUT_RELEASE = Script(_lua.CACHE_PUT_RELEASE)
_GET = Script(_lua.CACHE_GET)
_GET_OR_CLAIM = Script(_lua.CACHE_GET_OR_CLAIM)
_DELETE = Script(_lua.CACHE_DELETE)
_CLEAR = Script(_lua.CACHE_CLEAR)
_CLAIM_RELEASE = Script(_lua.CLAIM_RELEASE)
_LOCK_ACQUIRE = Script(_lua.LOCK_ACQUIRE)


class _Namespace:
    """The keys of one bounded store of entries (the cache, conversations)."""

    def __init__(self, base: str) -> None:
        self.prefix = f"{base}:e:"
        self._index = [f"{base}:idx", f"{base}:exp", f"{base}:size", f"{base}:bytes"]
        self._seq = f"{base}:seq"

    def keys(self, member: str) -> list[str]:
        """The keys of CACHE_PUT, CACHE_DELETE and CACHE_CLEAR."""
        return [self.prefix + member, *self._index, self._seq]

    def used_keys(self, member: str) -> list[str]:
        """The keys of CACHE_GET: the entry, the index and the use counter."""
        return [self.prefix + member, self._index[0], self._seq]

    async def usage(self, client: RedisClient) -> tuple[int, int]:
        entries = await client.execute(b"ZCARD", self._index[0])
        total = await client.execute(b"GET", self._index[3])
        return int(entries), int(total or 0)


class RedisCacheStore:
    """Cache entries in Redis, the least recently used evicted first past the bounds (one
    script per put); claims are ``SET NX`` with this process's token."""

    def __init__(
        self,
        link: Link,
        prefix: str,
        *,
        token: str,
        max_entries: int,
        max_bytes: int,
        fallback: MemoryCacheStore,
    ) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._link = link
        self._ns = _Namespace(f"{prefix}:c")
        self._claims = f"{prefix}:c:claim:"
        self._token = token
        self._fallback = fallback
        self._usage = (0, 0)
        self.evictions = 0

    async def get(self, key: str) -> bytes | None:
        value = await self._link.run(_GET, self._ns.used_keys(key), (key,))
        if value is DOWN:
            return self._fallback.get_now(key)
        return cast("bytes | None", value)

    async def lookup(self, key: str, *, claim: float | None = None) -> bytes | bool:
        if claim is None:
            return await self.get(key) or False
        keys = [*self._ns.used_keys(key), self._claims + key]
        found = await self._link.run(_GET_OR_CLAIM, keys, (key, self._token, ms(claim)))
        if found is DOWN:
            return await self._fallback.lookup(key, claim=claim)
        return found if isinstance(found, bytes) else found == 1

    async def put(self, key: str, value: bytes, ttl: float, *, release: bool = False) -> None:
        if len(value) > self.max_bytes or ttl <= 0:
            if release:
                await self.release(key)
            return
        ns = self._ns
        args: tuple[str | bytes | int, ...] = (
            key,
            ns.prefix,
            value,
            ms(ttl),
            self.max_entries,
            self.max_bytes,
        )
        if release:
            await self._fallback.release(key)
            keys = [*ns.keys(key), self._claims + key]
            evicted = await self._link.run(_PUT_RELEASE, keys, (*args, self._token))
        else:
            evicted = await self._link.run(_PUT, ns.keys(key), args)
        if evicted is DOWN:
            self._fallback.put_now(key, value, ttl)
        else:
            self.evictions += int(evicted)

    async def delete(self, key: str) -> bool:
        ns = self._ns
        existed = await self._link.run(_DELETE, ns.keys(key), (key, ns.prefix))
        local = await self._fallback.delete(key)
        return local if existed is DOWN else bool(existed) or local

    async def clear(self) -> int:
        ns = self._ns
        count = await self._link.run(_CLEAR, ns.keys(""), ("", ns.prefix))
        local = await self._fallback.clear()
        if count is DOWN:
            return local
        self._usage = (0, 0)
        return int(count)

    async def claim(self, key: str, ttl: float) -> bool:
        taken = await self._link.execute(
            b"SET", self._claims + key, self._token, b"NX", b"PX", ms(ttl)
        )
        if taken is DOWN:
            return await self._fallback.claim(key, ttl)
        return taken is not None

    async def claimed(self, key: str) -> bool:
        count = await self._link.execute(b"EXISTS", self._claims + key)
        if count is DOWN:
            return await self._fallback.claimed(key)
        return bool(count)

    async def release(self, key: str) -> None:
        await self._fallback.release(key)
        await self._link.run(_CLAIM_RELEASE, (self._claims + key,), (self._token,))

    def usage(self) -> tuple[int, int]:
        return self._usage if self._link.up else self._fallback.usage()

    async def refresh(self) -> None:
        """Learn the shared store's size (for ``usage``)."""
        self._usage = await self._ns.usage(self._link.client)

    async def forget_local(self) -> None:
        """Drop the fallback's entries (shared state is back: they would only go stale)."""
        await self._fallback.clear()


class RedisResponseStore:
    """Responses as JSON in Redis, each for ``ttl``, the oldest evicted first past the
    bounds; what was kept while degraded is still found in the fallback."""

    def __init__(
        self,
        link: Link,
        prefix: str,
        *,
        ttl: float,
        max_entries: int,
        max_bytes: int,
        fallback: MemoryResponseStore,
    ) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._link = link
        self._ns = _Namespace(f"{prefix}:r")
        self._fallback = fallback

    async def get(self, response_id: str, *, owner: str | None) -> StoredResponse | None:
        stored = await self._fetch(response_id)
        if stored is None:
            return await self._fallback.get(response_id, owner=owner)
        return stored if stored.owner == owner else None

    async def put(self, stored: StoredResponse) -> None:
        payload = json.dumps(
            {"r": stored.response, "i": stored.input, "p": stored.previous, "o": stored.owner},
            separators=(",", ":"),
        ).encode()
        if len(payload) > self.max_bytes:
            return  # larger than the whole store: never kept
        ns = self._ns
        key = stored.id
        args = (key, ns.prefix, payload, ms(self.ttl), self.max_entries, self.max_bytes)
        done = await self._link.run(_PUT, ns.keys(key), args)
        if done is DOWN:
            await self._fallback.put(stored)

    async def delete(self, response_id: str, *, owner: str | None) -> bool:
        local = await self._fallback.delete(response_id, owner=owner)
        stored = await self._fetch(response_id)
        if stored is None or stored.owner != owner:
            return local
        ns = self._ns
        done = await self._link.run(_DELETE, ns.keys(response_id), (response_id, ns.prefix))
        return local or (done is not DOWN and bool(done))

    async def _fetch(self, response_id: str) -> StoredResponse | None:
        raw = await self._link.execute(b"GET", self._ns.prefix + response_id)
        if raw is DOWN or raw is None:
            return None
        try:
            data = json.loads(cast(bytes, raw))
            return StoredResponse(
                response_id, data["r"], tuple(data["i"]), data["p"], data["o"], len(raw)
            )
        except (ValueError, KeyError, TypeError):
            return None


class RedisSticky:
    """Sessions and their providers in Redis, each for its ttl."""

    def __init__(self, link: Link, prefix: str, *, fallback: MemorySticky) -> None:
        self._link = link
        self._prefix = f"{prefix}:s:"
        self._fallback = fallback

    async def get(self, session: str) -> str | None:
        value = await self._link.execute(b"GET", self._prefix + session)
        if value is DOWN:
            return self._fallback.get_now(session)
        return None if value is None else cast(bytes, value).decode()

    async def set(self, session: str, provider: str, ttl: float) -> None:
        done = await self._link.execute(b"SET", self._prefix + session, provider, b"PX", ms(ttl))
        if done is DOWN:
            self._fallback.set_now(session, provider, ttl)


class RedisLock:
    """Named locks with a lease, held by one replica at a time; while degraded every replica
    holds them (each probes for itself rather than none doing it)."""

    def __init__(self, link: Link, prefix: str, *, token: str) -> None:
        self._link = link
        self._prefix = f"{prefix}:lock:"
        self._token = token

    async def acquire(self, name: str, ttl: float) -> bool:
        held = await self._link.run(_LOCK_ACQUIRE, (self._prefix + name,), (self._token, ms(ttl)))
        return True if held is DOWN else bool(held)
