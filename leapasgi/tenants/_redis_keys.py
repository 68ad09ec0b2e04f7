"""Virtual keys in Redis, shared by every replica.

    <prefix>:vk:digest:<digest>    the key's JSON (``key_to_json``): a lookup is one GET
    <prefix>:vk:id:<id>            the key's digest
    <prefix>:vk:ids                the set of every key id

Keys are never served from local state: without Redis there is no telling whether a key was
revoked, so every call that does not reach Redis raises ``StoreUnavailableError``.
"""

from __future__ import annotations

from typing import Any

from ..exceptions import ConflictError, StoreUnavailableError
from ..state._redis_link import DOWN, Link
from ..state._resp import Script
from .base import VirtualKey
from .keys import key_from_json, key_to_json, missing, unreadable

__all__ = ["RedisKeyStore"]

# KEYS: digest key, id key, ids set; ARGV: JSON, id, digest. A new key is written whole or
# not at all.
_ADD = Script(
    """
if redis.call('SET', KEYS[1], ARGV[1], 'NX') == false then return 0 end
redis.call('SET', KEYS[2], ARGV[3])
redis.call('SADD', KEYS[3], ARGV[2])
return 1
"""
)

# KEYS: id key, digest key; ARGV: JSON, digest. Only the key with this id and digest changes.
_PUT = Script(
    """
if redis.call('GET', KEYS[1]) ~= ARGV[2] then return 0 end
redis.call('SET', KEYS[2], ARGV[1])
return 1
"""
)


# (digest, JSON or None) of every key in the index.
_Records = list[tuple[str, bytes | None]]


def _unreachable(link: Link) -> StoreUnavailableError:
    """The error for a call Redis did not answer, with why (never an address or a secret)."""
    detail = f" ({link.detail})" if link.detail else ""
    return StoreUnavailableError(f"Redis is unreachable{detail}")


class RedisKeyStore:
    """Virtual keys in Redis (see the module docstring for the layout)."""

    def __init__(self, link: Link, prefix: str) -> None:
        self._link = link
        self._digests = f"{prefix}:vk:digest:"
        self._ids = f"{prefix}:vk:id:"
        self._index = f"{prefix}:vk:ids"

    async def _execute(self, *args: str) -> Any:
        reply = await self._link.execute(*args)
        if reply is DOWN:
            raise _unreachable(self._link)
        return reply

    async def add(self, key: VirtualKey) -> None:
        keys = (self._digests + key.digest, self._ids + key.id, self._index)
        added = await self._link.run(_ADD, keys, (key_to_json(key), key.id, key.digest))
        if added is DOWN:
            raise _unreachable(self._link)
        if not added:
            raise ConflictError("A virtual key with this digest exists")

    async def find(self, digest: str) -> VirtualKey | None:
        record = await self._execute("GET", self._digests + digest)
        return None if record is None else _read(digest, record)

    async def get(self, key_id: str) -> VirtualKey | None:
        digest = await self._execute("GET", self._ids + key_id)
        if digest is None:
            return None
        record = await self._execute("GET", self._digests + digest.decode())
        return None if record is None else _read(key_id, record)

    async def list(self) -> list[VirtualKey]:
        replies = await self._link.call(self._fetch_all)
        if replies is DOWN:
            raise _unreachable(self._link)
        keys = [_read(digest, record) for digest, record in replies if record is not None]
        return sorted(keys, key=lambda key: (key.created_at, key.id))

    async def _fetch_all(self) -> _Records:
        client = self._link.client
        ids = await client.execute("SMEMBERS", self._index)
        if not ids:
            return []
        digests = await client.execute("MGET", *(self._ids + i.decode() for i in ids))
        found = [d.decode() for d in digests if d is not None]
        if not found:
            return []
        records = await client.execute("MGET", *(self._digests + d for d in found))
        return list(zip(found, records, strict=True))

    async def put(self, key: VirtualKey) -> None:
        """Replace the key with ``key.id`` (its digest never changes); NotFoundError when
        there is none."""
        keys = (self._ids + key.id, self._digests + key.digest)
        replaced = await self._link.run(_PUT, keys, (key_to_json(key), key.digest))
        if replaced is DOWN:
            raise _unreachable(self._link)
        if not replaced:
            raise missing(key.id)

    async def aclose(self) -> None:
        """Nothing to do: the link belongs to the state backend."""


def _read(name: str, record: bytes) -> VirtualKey:
    try:
        return key_from_json(record)
    except ValueError:
        raise unreadable(name) from None
