"""The exact response cache: an answer made once is answered again, as the bytes it was sent
as, while its entry lives, without reaching a provider.

**Which requests.** A model route's request is cached when its path is in ``routes``, its
model (or alias, as the client named it) in ``models`` (``"*"``: every model), or it says
``x-leap-cache: on``; ``x-leap-cache: off`` and ``Cache-Control: no-store`` keep it out;
``Cache-Control: no-cache`` skips the lookup but stores the fresh answer. A Responses request
with ``generate: false`` is never cached (nothing to save), nor, in ``global`` scope, one the
gateway stores (``store`` not false): its response id belongs to the key that made it.

**The key** is the SHA-256 hex digest of the route (the protocol), the ``stream`` flag, the
tenant (a digest of the client's key, as ``owner_of`` makes it; nobody in ``global`` scope),
on ``/v1/messages`` the ``anthropic-version`` and ``anthropic-beta`` headers (a native upstream
receives them), and the body as canonical JSON (keys sorted, compact, ASCII), without
``stream`` (the flag stands for it) and without the fields that cannot change the answer:

    /v1/chat/completions   user, metadata, store, safety_identifier, prompt_cache_key
    /v1/messages           metadata
    /v1/embeddings         user
    /v1/responses          none: the response object echoes every one of them

Numbers count as written (``1`` and ``1.0`` are different requests). A body that is not a
JSON object naming a model is not cached; its endpoint refuses it.

**Coalescing.** Identical misses at once make one upstream call: the first is the leader, the
others wait for its entry (an in-process future per key; across replicas, the store's claim,
polled). A leader that fails, or whose answer is not kept, releases them to call on their own;
so does a wait longer than the request timeout. A ``no-cache`` request neither waits nor leads.

An entry is ``_ENTRY`` (format, wall time stored, content type's length), the content type,
then the body as it was sent.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .access import owner_of
from .clock import Clock
from .config import CacheConfig
from .protocols.messages import FORWARDED_HEADERS
from .state.base import CacheStore

__all__ = [
    "BYPASS",
    "HIT",
    "MISS",
    "POLL_INTERVAL",
    "CacheSnapshot",
    "CacheStats",
    "CacheTicket",
    "CachedAnswer",
    "Flight",
    "ResponseCache",
    "is_cache_key",
]

logger = logging.getLogger("leapasgi.cache")

# What the cache did with a request (``Outcome.cache``, the x-leap-cache header).
HIT = "hit"
MISS = "miss"
BYPASS = "bypass"
# Seconds between looks at the store while another replica makes the answer.
POLL_INTERVAL = 0.025

_MESSAGES = "/v1/messages"
_RESPONSES = "/v1/responses"
# Body fields that cannot change the answer, per route (the module docstring says why).
_IRRELEVANT: dict[str, tuple[str, ...]] = {
    "/v1/chat/completions": (
        "user",
        "metadata",
        "store",
        "safety_identifier",
        "prompt_cache_key",
    ),
    _MESSAGES: ("metadata",),
    "/v1/embeddings": ("user",),
}
# Bumped whenever the key's parts or the entry's layout change: old entries are then missed.
_KEY_FORMAT = b"leap-cache-1"
_ENTRY = struct.Struct(">2sdH")
_ENTRY_FORMAT = b"L1"
_KEY = re.compile(r"[0-9a-f]{64}")


def is_cache_key(text: str) -> bool:
    """Whether ``text`` is a key as the x-leap-cache-key header shows one."""
    return _KEY.fullmatch(text) is not None


@dataclass(frozen=True, slots=True)
class CacheTicket:
    """A request the cache takes part in: its key, and whether a stored answer may serve it
    (False for ``Cache-Control: no-cache``: answered fresh, then stored)."""

    key: str
    model: str
    stream: bool
    read: bool = True


@dataclass(frozen=True, slots=True)
class CachedAnswer:
    """A stored answer: its content type, the bytes to send, and its age in seconds."""

    content_type: bytes
    body: bytes
    age: int


@dataclass(slots=True)
class CacheStats:
    """What the cache did, since the gateway started."""

    coalesced: int = 0  # requests that waited for an identical request's answer
    stored: int = 0
    too_large: int = 0  # complete answers over max_entry_bytes, not kept
    store_errors: int = 0  # store calls that raised (the answer went out all the same)


@dataclass(frozen=True, slots=True)
class CacheSnapshot:
    """The cache's counters and the store's size in this process, for /metrics."""

    entries: int
    bytes: int
    coalesced: int
    stored: int
    too_large: int
    store_errors: int


class Flight:
    """A miss being answered: identical requests wait for the entry it makes."""

    __slots__ = ("claimed", "future", "key")

    def __init__(self, key: str, future: asyncio.Future[bytes | None]) -> None:
        self.key = key
        self.future = future
        self.claimed = False  # holds the store's claim on the key


class ResponseCache:
    """Decides which requests are cached and under what key, finds stored answers, keeps
    new ones and coalesces identical misses. Knows nothing of HTTP beyond reading a request's
    headers; ``asgi/_cache.py`` replays and records the bytes."""

    def __init__(self, config: CacheConfig, store: CacheStore, *, clock: Clock) -> None:
        self.config = config
        self.store = store
        self._clock = clock
        self._ttl = config.ttl
        self._routes = frozenset(config.routes)
        self._models = frozenset(config.models)
        self._every_model = "*" in self._models
        self._tenant = config.scope == "tenant"
        self.max_entry_bytes = config.max_entry_bytes
        self.coalescing = config.coalesce
        self.stats = CacheStats()
        self._flights: dict[str, Flight] = {}

    def plan(self, route: str, scope: Mapping[str, Any], body: bytes) -> CacheTicket | None:
        """The ticket of a request to ``route`` (``scope``: its ASGI scope, ``body``: the raw
        body); None when the cache leaves it alone."""
        switch: bytes | None = None
        read = True
        forwarded: list[bytes] = []
        for name, value in scope["headers"]:
            if name == b"x-leap-cache":
                switch = bytes(value).strip().lower()
            elif name == b"cache-control":
                directives = {d.strip().split(b"=", 1)[0].lower() for d in bytes(value).split(b",")}
                if b"no-store" in directives:
                    return None
                if b"no-cache" in directives:
                    read = False
            elif name in FORWARDED_HEADERS:
                forwarded.append(name + b":" + bytes(value))
        if switch == b"off":
            return None
        chosen = switch == b"on" or route in self._routes or self._every_model
        if not chosen and not self._models:
            return None
        data = _json_object(body)
        if data is None:
            return None
        model = data.get("model")
        if not isinstance(model, str) or not (chosen or model in self._models):
            return None
        if route == _RESPONSES and (
            data.get("generate") is False or (not self._tenant and data.get("store") is not False)
        ):
            return None
        stream = data.pop("stream", None) is True
        for field in _IRRELEVANT.get(route, ()):
            data.pop(field, None)
        try:
            canonical = json.dumps(data, sort_keys=True, separators=(",", ":")).encode()
        except (ValueError, RecursionError):
            return None
        tenant = (owner_of(scope) or "") if self._tenant else ""
        parts = [_KEY_FORMAT, route.encode(), b"1" if stream else b"0", tenant.encode()]
        if route == _MESSAGES:
            parts.append(b"\n".join(sorted(forwarded)))
        parts.append(canonical)
        key = hashlib.sha256(b"\0".join(parts)).hexdigest()
        return CacheTicket(key, model, stream, read)

    async def lookup(self, ticket: CacheTicket) -> CachedAnswer | None:
        """The stored answer for ``ticket``, if one lives."""
        try:
            entry = await self.store.get(ticket.key)
        except Exception as exc:  # the store should degrade, not raise; a miss if it does
            self._failed("get", exc)
            return None
        return None if entry is None else self._answer(entry)

    async def join(self, ticket: CacheTicket, *, wait: float) -> CachedAnswer | Flight | None:
        """The stored answer, or the one an identical request in flight made (waited for up
        to ``wait`` seconds); else a Flight, when this request is the one to make it (end it
        with ``end``); None when it should go on alone (the other one failed, or the wait ran
        out). The store is asked once: its entry, else its claim. Cancelling the wait leaves
        the others as they were."""
        key = ticket.key
        flight = self._flights.get(key)
        if flight is not None:
            self.stats.coalesced += 1
            done, _ = await asyncio.wait((flight.future,), timeout=wait)
            entry = flight.future.result() if done else None
            return None if entry is None else self._answer(entry)
        flight = self._flights[key] = Flight(key, asyncio.get_running_loop().create_future())
        try:
            try:
                found = await self.store.lookup(key, claim=wait)
            except Exception as exc:
                self._failed("lookup", exc)
                return flight  # lead here; another replica may be making it too
            if found is True:
                flight.claimed = True
                return flight
            entry = found or await self._made_elsewhere(key, wait)
        except BaseException:
            self._drop(flight)
            raise
        if entry is not None and (answer := self._answer(entry)) is not None:
            flight.future.set_result(entry)  # for the requests waiting here too
            self._drop(flight)
            return answer
        return flight  # its maker failed, or the wait ran out: make it here

    async def keep(
        self, ticket: CacheTicket, flight: Flight | None, content_type: bytes, body: list[bytes]
    ) -> None:
        """Store a complete, successful answer (its body as the parts sent), and hand it to the
        requests waiting for it."""
        head = _ENTRY.pack(_ENTRY_FORMAT, self._clock.time(), len(content_type))
        entry = b"".join([head, content_type, *body])
        if flight is not None and not flight.future.done():
            flight.future.set_result(entry)
        release = flight is not None and flight.claimed
        try:
            # The claim goes with the same trip.
            await self.store.put(ticket.key, entry, self._ttl, release=release)
        except Exception as exc:
            self._failed("put", exc)
            return
        if flight is not None:
            flight.claimed = False
        self.stats.stored += 1

    def too_large(self) -> None:
        """Note a complete answer that was too large to keep."""
        self.stats.too_large += 1

    async def end(self, flight: Flight) -> None:
        """The leader of ``flight`` is done: whoever waits and got no entry goes on alone, and
        the claim is released."""
        self._drop(flight)
        if flight.claimed:
            flight.claimed = False
            try:
                await self.store.release(flight.key)
            except Exception as exc:
                self._failed("release", exc)

    async def clear(self) -> int:
        """Forget every entry; how many there were."""
        return await self.store.clear()

    async def forget(self, key: str) -> bool:
        """Forget the entry under ``key``; whether there was one."""
        return await self.store.delete(key)

    def snapshot(self) -> CacheSnapshot:
        """The counters, and the entries and bytes the store keeps in this process."""
        entries, size = self.store.usage()
        stats = self.stats
        return CacheSnapshot(
            entries, size, stats.coalesced, stats.stored, stats.too_large, stats.store_errors
        )

    async def _made_elsewhere(self, key: str, wait: float) -> bytes | None:
        """Another replica holds the claim: its entry once stored, or None when its claim
        ends without one or ``wait`` seconds pass."""
        self.stats.coalesced += 1
        clock, store = self._clock, self.store
        until = clock.monotonic() + wait
        while clock.monotonic() < until:
            await clock.sleep(POLL_INTERVAL)
            try:
                entry = await store.get(key)
                if entry is not None:
                    return entry
                if not await store.claimed(key):
                    return None
            except Exception as exc:
                self._failed("poll", exc)
                return None
        return None

    def _answer(self, entry: bytes) -> CachedAnswer | None:
        if len(entry) < _ENTRY.size:
            return None
        kind, stored_at, type_length = _ENTRY.unpack_from(entry)
        if kind != _ENTRY_FORMAT:
            return None
        age = self._clock.time() - stored_at
        if age >= self._ttl:
            return None
        start = _ENTRY.size + type_length
        return CachedAnswer(entry[_ENTRY.size : start], entry[start:], max(0, int(age)))

    def _drop(self, flight: Flight) -> None:
        if not flight.future.done():
            flight.future.set_result(None)
        if self._flights.get(flight.key) is flight:
            del self._flights[flight.key]

    def _failed(self, operation: str, exc: Exception) -> None:
        self.stats.store_errors += 1
        logger.warning("response cache: store %s failed: %s", operation, type(exc).__name__)

    def __repr__(self) -> str:
        return f"ResponseCache(scope={self.config.scope!r}, ttl={self._ttl})"


def _json_object(body: bytes) -> dict[str, Any] | None:
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        return None
    return data if isinstance(data, dict) else None
