"""State shared between replicas through Redis or Valkey, falling back to this process's memory.

Every operation runs under ``op_timeout``. The first failure (a timeout, a refused or reset
connection, an error reply) makes the backend degraded: it says so once, and from then on
every call is served by its in-process fallback without touching Redis, limits divided by
``replicas``. A background task pings Redis every ``recover_interval`` and shares state
again once it answers; while shared, it syncs breaker events every ``sync_interval``.

Check-and-change steps are Lua scripts (``state/_lua.py``), atomic on the server. The URL
carries credentials: it is only ever handed to the client, never logged or shown.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import hashlib
import json
import logging
import os
import sys
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from functools import partial
from typing import Any, TypeVar, cast

from pydantic import SecretStr
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError, ResponseError
from redis.typing import EncodableT

from ..clock import Clock, SystemClock
from ..conversations import MemoryResponseStore, StoredResponse
from ..exceptions import ConfigurationError
from . import _lua
from .base import RATE_WINDOW, BreakerEvent, Bucket, Reservation, StateStatus
from .memory import (
    DEFAULT_CACHE_MAX_BYTES,
    DEFAULT_CACHE_MAX_ENTRIES,
    MemoryCacheStore,
    MemoryLimiter,
    MemorySticky,
)

__all__ = [
    "RedisBoard",
    "RedisCacheStore",
    "RedisLimiter",
    "RedisLock",
    "RedisResponseStore",
    "RedisState",
    "RedisSticky",
]

logger = logging.getLogger("leapasgi.state")

# Connections per process; callers beyond wait for one (within op_timeout). Redis runs one
# command at a time, so more only add handshakes to a cold start (a burst of 160 reserves
# on a cold pool: about 20 ms with 8-16 connections, 50 ms with 64).
MAX_CONNECTIONS = 16
# Settlements sent in one script call, carried by one reserve, and kept while Redis is away
# (the oldest dropped first: an unsettled reservation still ends with its window).
SETTLE_BATCH = 256
SETTLE_CARRIED = 16
MAX_PENDING_SETTLES = 10_000
# Seconds a settlement waits for a reserve to carry it before it is sent on its own.
SETTLE_DELAY = 0.02
# Providers whose breaker events wait for the next sync.
MAX_QUEUED_EVENTS = 1024

# redis-py bounds sends with asyncio.wait_for, which on Python 3.11 can swallow a cancel
# (the cancelled call returns normally) and costs a task per command; op_timeout bounds
# every operation anyway, so the socket timeout is only set where wait_for is safe.
_SOCKET_TIMEOUT = sys.version_info >= (3, 12)

T = TypeVar("T")


class _Down(enum.Enum):
    DOWN = "down"


DOWN = _Down.DOWN


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


def _reason(exc: BaseException) -> str:
    """A failure in a few words, never its message (which may name the server)."""
    if isinstance(exc, ResponseError):
        code = str(exc).split(" ", 1)[0]
        return f"server replied {code[:20]}" if code.isalpha() else "server replied an error"
    if isinstance(exc, TimeoutError) or type(exc).__name__ == "TimeoutError":
        return "timed out"
    return type(exc).__name__


class _Script:
    """A Lua script run by its SHA1, and loaded again when the server lacks it (restarted)."""

    def __init__(self, client: Redis, source: str) -> None:
        self._client = client
        self._source = source
        self._sha = hashlib.sha1(source.encode()).hexdigest()

    async def __call__(self, keys: Sequence[str], args: Sequence[EncodableT]) -> Any:
        try:
            return await self._client.evalsha(self._sha, len(keys), *keys, *args)
        except NoScriptError:
            await self._client.script_load(self._source)
            return await self._client.evalsha(self._sha, len(keys), *keys, *args)


class _Link:
    """The client, and whether Redis may be used now."""

    def __init__(self, client: Redis, *, op_timeout: float, clock: Clock) -> None:
        self.client = client
        self.op_timeout = op_timeout
        self._clock = clock
        self.up = True
        self.since: float | None = None
        self.detail: str | None = None
        self.errors = 0

    async def call(self, make: Callable[[], Awaitable[T]]) -> T | _Down:
        """``make()``'s result; DOWN at once while degraded, or once it failed."""
        if not self.up:
            return DOWN
        try:
            async with asyncio.timeout(self.op_timeout):
                return await make()
        except Exception as exc:  # whatever the failure, the answer is local state
            self.fail(exc, "failed")
            return DOWN

    async def reachable(self) -> bool:
        """Whether Redis answers a ping within ``op_timeout`` (whatever the mode)."""
        try:
            async with asyncio.timeout(self.op_timeout):
                await self.client.ping()
        except Exception:
            return False
        return True

    def fail(self, exc: BaseException, what: str) -> None:
        self.errors += 1
        if not self.up:
            return
        self.up = False
        self.since = self._clock.time()
        self.detail = _reason(exc)
        logger.warning(
            "state: Redis %s (%s); running on local state until it is back", what, self.detail
        )

    def restore(self) -> None:
        self.up = True
        self.since = self.detail = None
        logger.warning("state: Redis is back; state is shared again")

    def close(self) -> None:
        """Serve any later call locally: the client is closing."""
        if self.up:
            self.up = False
            self.since = self._clock.time()
            self.detail = "closed"


class RedisLimiter:
    """Sliding windows per bucket in Redis, exact across replicas: one script checks and
    reserves every bucket at once. Settlements wait in this process and ride along with the
    next reserve (applied first, atomically); a background task sends those left when no
    reserve comes within ``SETTLE_DELAY``."""

    def __init__(
        self,
        link: _Link,
        prefix: str,
        *,
        window: float,
        fallback: MemoryLimiter,
        spawn: Callable[[Coroutine[Any, Any, None]], asyncio.Task[None]],
    ) -> None:
        self._link = link
        self._prefix = f"{prefix}:rl:"
        self._window_ms = _ms(window)
        self._fallback = fallback
        self._spawn = spawn
        self._reserve = _Script(link.client, _lua.LIMIT_RESERVE)
        self._settle = _Script(link.client, _lua.LIMIT_SETTLE)
        # (reservation id, bucket keys, tokens used or -1 to release)
        self._pending: deque[_Settlement] = deque(maxlen=MAX_PENDING_SETTLES)
        self._flusher: asyncio.Task[None] | None = None

    async def reserve(self, buckets: tuple[Bucket, ...], tokens: int) -> Reservation | float:
        if not self._link.up:
            return self._fallback.reserve_now(buckets, tokens)
        rid = os.urandom(8).hex()
        keys = self._keys(buckets)
        if not keys:
            return Reservation(rid, buckets, tokens)
        carried = self._take(SETTLE_CARRIED)
        batch_keys, words = _settle_words(carried)
        words += (str(self._window_ms), rid, str(tokens))
        for bucket in buckets:
            if bucket.rpm is not None or bucket.tpm is not None:
                words.append("-1" if bucket.rpm is None else str(bucket.rpm))
                words.append("-1" if bucket.tpm is None else str(bucket.tpm))
        batch_keys += keys
        args = (" ".join(words),)
        try:
            wait = await self._link.call(lambda: self._reserve(batch_keys, args))
        except asyncio.CancelledError:
            # The script may have run: give back what it took, send what it carried again.
            self._pending.extendleft(reversed(carried))
            self._queue((rid, keys, -1))
            raise
        if wait is DOWN:
            self._pending.extendleft(reversed(carried))
            self._queue((rid, keys, -1))
            return self._fallback.reserve_now(buckets, tokens)
        if wait:
            return max(int(wait) / 1000, 0.001)
        return Reservation(rid, buckets, tokens)

    def settle(self, reservation: Reservation, tokens: int | None) -> None:
        if reservation.settled:
            return
        if reservation.id.startswith("m"):  # made by the fallback while degraded
            self._fallback.settle(reservation, tokens)
            return
        reservation.settled = True
        if tokens is not None and not any(b.tpm is not None for b in reservation.buckets):
            return  # no bucket counts tokens: nothing to correct
        keys = self._keys(reservation.buckets)
        if keys:
            self._queue((reservation.id, keys, -1 if tokens is None else tokens))

    async def flush(self) -> None:
        """Send the settlements made so far now, and wait until they reached Redis (or it
        failed)."""
        await self._send()
        while (flusher := self._flusher) is not None:
            await asyncio.wait({flusher})

    def kick(self, delay: float = 0.0) -> None:
        """Have pending settlements sent, unless that is under way or Redis is away."""
        if self._pending and self._flusher is None and self._link.up:
            self._flusher = self._spawn(self._flush(delay))

    def pending(self) -> int:
        return len(self._pending)

    def _keys(self, buckets: tuple[Bucket, ...]) -> list[str]:
        keys: list[str] = []
        for bucket in buckets:
            if bucket.rpm is not None or bucket.tpm is not None:
                base = self._prefix + bucket.key
                keys += (base + ":z", base + ":h")
        return keys

    def _queue(self, settlement: _Settlement) -> None:
        self._pending.append(settlement)
        self.kick(SETTLE_DELAY)

    def _take(self, most: int) -> list[_Settlement]:
        pending = self._pending
        return [pending.popleft() for _ in range(min(len(pending), most))]

    async def _flush(self, delay: float) -> None:
        try:
            if delay:
                await asyncio.sleep(delay)
            await self._send()
        finally:
            self._flusher = None

    async def _send(self) -> None:
        while self._pending and self._link.up:
            batch = self._take(SETTLE_BATCH)
            keys, words = _settle_words(batch)
            done: object = DOWN
            try:
                done = await self._link.call(partial(self._settle, keys, (" ".join(words),)))
            finally:
                if done is DOWN:  # failed or cancelled: sent again once Redis is back
                    self._pending.extendleft(reversed(batch))
            if done is DOWN:
                return


_Settlement = tuple[str, list[str], int]


def _settle_words(batch: list[_Settlement]) -> tuple[list[str], list[str]]:
    """The keys and words of ``batch`` for the settle part of the limiter's scripts."""
    keys: list[str] = []
    words = [str(len(batch))]
    for rid, bucket_keys, tokens in batch:
        keys += bucket_keys
        words += (rid, str(tokens), str(len(bucket_keys) // 2))
    return keys, words


class _Namespace:
    """The keys and scripts of one bounded store of entries (the cache, conversations)."""

    def __init__(self, client: Redis, base: str) -> None:
        self.prefix = f"{base}:e:"
        self._index = [f"{base}:idx", f"{base}:exp", f"{base}:size", f"{base}:bytes"]
        self._seq = f"{base}:seq"
        self.put = _Script(client, _lua.CACHE_PUT)
        self.get = _Script(client, _lua.CACHE_GET)
        self.delete = _Script(client, _lua.CACHE_DELETE)
        self.clear = _Script(client, _lua.CACHE_CLEAR)

    def keys(self, member: str) -> list[str]:
        return [self.prefix + member, *self._index, self._seq]

    def used_keys(self, member: str) -> list[str]:
        """The keys of CACHE_GET: the entry, the index and the use counter."""
        return [self.prefix + member, self._index[0], self._seq]

    async def usage(self, client: Redis) -> tuple[int, int]:
        entries = await client.zcard(self._index[0])
        total = await client.get(self._index[3])
        return int(entries), int(total or 0)


class RedisCacheStore:
    """Cache entries in Redis, the least recently used evicted first past the bounds (one
    script per put); claims are ``SET NX`` with this process's token."""

    def __init__(
        self,
        link: _Link,
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
        self._ns = _Namespace(link.client, f"{prefix}:c")
        self._claims = f"{prefix}:c:claim:"
        self._token = token
        self._fallback = fallback
        self._release = _Script(link.client, _lua.CLAIM_RELEASE)
        self._usage = (0, 0)
        self.evictions = 0

    async def get(self, key: str) -> bytes | None:
        ns = self._ns
        value = await self._link.call(lambda: ns.get(keys=ns.used_keys(key), args=(key,)))
        if value is DOWN:
            return self._fallback.get_now(key)
        return cast("bytes | None", value)

    async def put(self, key: str, value: bytes, ttl: float) -> None:
        if len(value) > self.max_bytes or ttl <= 0:
            return
        ns = self._ns
        args = (key, ns.prefix, value, _ms(ttl), self.max_entries, self.max_bytes)
        evicted = await self._link.call(lambda: ns.put(keys=ns.keys(key), args=args))
        if evicted is DOWN:
            self._fallback.put_now(key, value, ttl)
        else:
            self.evictions += int(evicted)

    async def delete(self, key: str) -> bool:
        ns = self._ns
        existed = await self._link.call(lambda: ns.delete(keys=ns.keys(key), args=(key, ns.prefix)))
        local = await self._fallback.delete(key)
        return local if existed is DOWN else bool(existed) or local

    async def clear(self) -> int:
        ns = self._ns
        count = await self._link.call(lambda: ns.clear(keys=ns.keys(""), args=("", ns.prefix)))
        local = await self._fallback.clear()
        if count is DOWN:
            return local
        self._usage = (0, 0)
        return int(count)

    async def claim(self, key: str, ttl: float) -> bool:
        client = self._link.client
        taken = await self._link.call(
            lambda: client.set(self._claims + key, self._token, nx=True, px=_ms(ttl))
        )
        if taken is DOWN:
            return await self._fallback.claim(key, ttl)
        return bool(taken)

    async def claimed(self, key: str) -> bool:
        client = self._link.client
        count = await self._link.call(lambda: client.exists(self._claims + key))
        if count is DOWN:
            return await self._fallback.claimed(key)
        return bool(count)

    async def release(self, key: str) -> None:
        await self._fallback.release(key)
        await self._link.call(lambda: self._release(keys=[self._claims + key], args=[self._token]))

    def usage(self) -> tuple[int, int]:
        return self._usage if self._link.up else self._fallback.usage()

    async def refresh(self) -> None:
        """Learn the shared store's size (for ``usage``)."""
        self._usage = await self._ns.usage(self._link.client)

    async def forget_local(self) -> None:
        """Drop the fallback's entries (shared state is back: they would only go stale)."""
        await self._fallback.clear()


class RedisSticky:
    """Sessions and their providers in Redis, each for its ttl."""

    def __init__(self, link: _Link, prefix: str, *, fallback: MemorySticky) -> None:
        self._link = link
        self._prefix = f"{prefix}:s:"
        self._fallback = fallback

    async def get(self, session: str) -> str | None:
        client = self._link.client
        value = await self._link.call(lambda: client.get(self._prefix + session))
        if value is DOWN:
            return self._fallback.get_now(session)
        return None if value is None else cast(bytes, value).decode()

    async def set(self, session: str, provider: str, ttl: float) -> None:
        client = self._link.client
        done = await self._link.call(
            lambda: client.set(self._prefix + session, provider, px=_ms(ttl))
        )
        if done is DOWN:
            self._fallback.set_now(session, provider, ttl)


class RedisLock:
    """Named locks with a lease, held by one replica at a time; while degraded every replica
    holds them (each probes for itself rather than none doing it)."""

    def __init__(self, link: _Link, prefix: str, *, token: str) -> None:
        self._link = link
        self._prefix = f"{prefix}:lock:"
        self._token = token
        self._acquire = _Script(link.client, _lua.LOCK_ACQUIRE)

    async def acquire(self, name: str, ttl: float) -> bool:
        args = (self._token, _ms(ttl))
        held = await self._link.call(lambda: self._acquire(keys=[self._prefix + name], args=args))
        return True if held is DOWN else bool(held)


class RedisBoard:
    """Breaker events in one hash (provider -> the newest event), written and read back by
    each replica's sync loop."""

    def __init__(self, link: _Link, prefix: str, *, origin: str) -> None:
        self.origin = origin
        self._link = link
        self._key = f"{prefix}:breakers"
        self._publish = _Script(link.client, _lua.BOARD_PUBLISH)
        self._queued: dict[str, BreakerEvent] = {}
        self._applied: dict[str, float] = {}  # provider -> the newest event known here
        self._seen: dict[bytes, bytes] = {}  # hash field -> the value last read

    def publish(self, event: BreakerEvent) -> None:
        if not event.origin:
            event = dataclasses.replace(event, origin=self.origin)
        queued = self._queued.get(event.provider)
        if queued is None and len(self._queued) >= MAX_QUEUED_EVENTS:
            logger.warning("state: too many breaker events queued; one was dropped")
            return
        if queued is None or queued.at <= event.at:
            self._queued[event.provider] = event
        # An older event of another replica must not undo this one here.
        self._applied[event.provider] = max(event.at, self._applied.get(event.provider, 0.0))

    async def exchange(self) -> list[BreakerEvent]:
        """Write the queued events, read everyone's back: those to apply here."""
        if self._queued:
            batch, self._queued = self._queued, {}
            args: list[str] = []
            for event in batch.values():
                args += (event.provider, repr(event.at), json.dumps(dataclasses.asdict(event)))
            try:
                await self._publish(keys=[self._key], args=args)
            except BaseException:
                for event in batch.values():
                    queued = self._queued.get(event.provider)
                    if queued is None or queued.at < event.at:
                        self._queued[event.provider] = event
                raise
        raw = await self._link.client.hgetall(self._key)
        events = []
        for field, value in raw.items():
            name, data = bytes(cast(bytes, field)), bytes(cast(bytes, value))
            if self._seen.get(name) == data:
                continue
            self._seen[name] = data
            got = _event_of(data)
            if got is None or got.origin == self.origin:
                continue
            if got.at > self._applied.get(got.provider, float("-inf")):
                self._applied[got.provider] = got.at
                events.append(got)
        return events


def _event_of(data: bytes) -> BreakerEvent | None:
    """The event in ``data``, or None if it is not one (another version wrote it)."""
    try:
        fields = json.loads(data)
        return BreakerEvent(
            provider=str(fields["provider"]),
            at=float(fields["at"]),
            open_until=None if fields.get("open_until") is None else float(fields["open_until"]),
            hold_until=None if fields.get("hold_until") is None else float(fields["hold_until"]),
            rate_limited=bool(fields.get("rate_limited", False)),
            times_ejected=int(fields.get("times_ejected", 0)),
            origin=str(fields.get("origin", "")),
        )
    except (ValueError, KeyError, TypeError):
        return None


class RedisResponseStore:
    """Responses as JSON in Redis, each for ``ttl``, the oldest evicted first past the
    bounds; what was kept while degraded is still found in the fallback."""

    def __init__(
        self,
        link: _Link,
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
        self._ns = _Namespace(link.client, f"{prefix}:r")
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
        args = (key, ns.prefix, payload, _ms(self.ttl), self.max_entries, self.max_bytes)
        done = await self._link.call(lambda: ns.put(keys=ns.keys(key), args=args))
        if done is DOWN:
            await self._fallback.put(stored)

    async def delete(self, response_id: str, *, owner: str | None) -> bool:
        local = await self._fallback.delete(response_id, owner=owner)
        stored = await self._fetch(response_id)
        if stored is None or stored.owner != owner:
            return local
        ns = self._ns
        done = await self._link.call(
            lambda: ns.delete(keys=ns.keys(response_id), args=(response_id, ns.prefix))
        )
        return local or (done is not DOWN and bool(done))

    async def _fetch(self, response_id: str) -> StoredResponse | None:
        client = self._link.client
        raw = await self._link.call(lambda: client.get(self._ns.prefix + response_id))
        if raw is DOWN or raw is None:
            return None
        try:
            data = json.loads(cast(bytes, raw))
            return StoredResponse(
                response_id, data["r"], tuple(data["i"]), data["p"], data["o"], len(raw)
            )
        except (ValueError, KeyError, TypeError):
            return None


class RedisState:
    """Breakers, limits, the cache, sticky sessions, conversations and the prober's lock,
    shared through one Redis or Valkey server; in this process's memory while it is away."""

    kind = "redis"

    def __init__(
        self,
        url: SecretStr,
        *,
        prefix: str = "leap",
        op_timeout: float = 0.1,
        replicas: int = 1,
        sync_interval: float = 0.25,
        recover_interval: float = 1.0,
        cache_max_entries: int = DEFAULT_CACHE_MAX_ENTRIES,
        cache_max_bytes: int = DEFAULT_CACHE_MAX_BYTES,
        clock: Clock | None = None,
        window: float = RATE_WINDOW,
    ) -> None:
        self._clock = clock or SystemClock()
        self._prefix = prefix
        self._replicas = max(1, replicas)
        self._sync_interval = sync_interval
        self._recover_interval = recover_interval
        self.origin = os.urandom(8).hex()
        try:
            self._pool: BlockingConnectionPool = BlockingConnectionPool.from_url(
                url.get_secret_value(),
                max_connections=MAX_CONNECTIONS,
                timeout=None,  # every wait is bounded by op_timeout already
                socket_timeout=op_timeout if _SOCKET_TIMEOUT else None,
                socket_connect_timeout=op_timeout,
                retry=Retry(NoBackoff(), 0),  # a failure means degraded mode, not a retry
            )
        except ValueError:
            raise ConfigurationError("state: the Redis URL is not valid") from None
        client = Redis.from_pool(self._pool)
        self._link = link = _Link(client, op_timeout=op_timeout, clock=self._clock)
        self._tasks: set[asyncio.Task[None]] = set()
        self._task: asyncio.Task[None] | None = None
        self._on_event: Callable[[BreakerEvent], None] | None = None
        self._local_limiter = MemoryLimiter(clock=self._clock, divisor=self._replicas)
        self.limiter = RedisLimiter(
            link, prefix, window=window, fallback=self._local_limiter, spawn=self._spawn
        )
        self.cache = RedisCacheStore(
            link,
            prefix,
            token=self.origin,
            max_entries=cache_max_entries,
            max_bytes=cache_max_bytes,
            fallback=MemoryCacheStore(
                max_entries=cache_max_entries, max_bytes=cache_max_bytes, clock=self._clock
            ),
        )
        self.sticky = RedisSticky(link, prefix, fallback=MemorySticky(clock=self._clock))
        self.lock = RedisLock(link, prefix, token=self.origin)
        self.board = RedisBoard(link, prefix, origin=self.origin)

    def responses(self, *, ttl: float, max_entries: int, max_bytes: int) -> RedisResponseStore:
        fallback = MemoryResponseStore(
            ttl=ttl, max_entries=max_entries, max_bytes=max_bytes, clock=self._clock
        )
        return RedisResponseStore(
            self._link,
            self._prefix,
            ttl=ttl,
            max_entries=max_entries,
            max_bytes=max_bytes,
            fallback=fallback,
        )

    def status(self) -> StateStatus:
        link = self._link
        return StateStatus(
            backend=self.kind,
            shared=link.up,
            degraded=not link.up,
            since=link.since,
            detail=link.detail,
            replicas=self._replicas,
            errors=link.errors,
            details={"pending_settlements": self.limiter.pending()},
        )

    async def start(self, on_event: Callable[[BreakerEvent], None]) -> None:
        self._on_event = on_event
        if self._task is not None:
            return
        try:
            async with asyncio.timeout(self._link.op_timeout):
                await self._link.client.ping()
        except Exception as exc:
            self._link.fail(exc, "unreachable at start")
        self._task = self._spawn(self._run())

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._link.op_timeout):
                await self.limiter.flush()  # the rest end with their window
        self._link.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._link.client.aclose()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _run(self) -> None:
        while True:
            try:
                if self._link.up:
                    await asyncio.sleep(self._sync_interval)
                    await self._sync()
                else:
                    await self._recover()
            except Exception:  # never let one bad round end syncing for good
                logger.exception("state: the sync loop failed; trying again")
                await asyncio.sleep(self._sync_interval)

    async def _sync(self) -> None:
        events = await self._link.call(self._exchange)
        if events is DOWN or self._on_event is None:
            return
        for event in events:
            try:
                self._on_event(event)
            except Exception:
                logger.exception("state: applying a breaker event failed")

    async def _exchange(self) -> list[BreakerEvent]:
        events = await self.board.exchange()
        await self.cache.refresh()
        return events

    async def _recover(self) -> None:
        # Idle connections may be half-open (the server vanished): none is used again.
        with contextlib.suppress(Exception):
            async with asyncio.timeout(self._link.op_timeout):
                await self._pool.disconnect(inuse_connections=False)
        while True:
            await asyncio.sleep(self._recover_interval)
            if await self._link.reachable():
                break
        self._link.restore()
        await self.cache.forget_local()
        self.limiter.kick()
