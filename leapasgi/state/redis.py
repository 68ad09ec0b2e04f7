"""State shared between replicas through Redis or Valkey, falling back to this process's memory.

Every operation runs under ``op_timeout``. The first failure (a timeout, a refused or reset
connection, an error reply) makes the backend degraded: it says so once, drops the
connection, and from then on every call is served by its in-process fallback without
touching Redis, limits divided by ``replicas``. A background task pings Redis every
``recover_interval`` (on a fresh connection each time) and shares state again once it
answers; while shared, it syncs breaker events every ``sync_interval``.

    RedisState                  this module: the parts, the sync and recovery loop
    ├── Link                    _redis_link.py: the client, op_timeout, degraded mode
    ├── RedisLimiter            _redis_limits.py
    ├── RedisCacheStore, RedisResponseStore, RedisSticky, RedisLock    _redis_stores.py
    └── RedisBoard              _redis_board.py

Commands go out on one pipelined connection (``_resp.py``, on hiredis); check-and-change
steps are Lua scripts (``_lua.py``), atomic on the server. The URL carries credentials: it is
only ever handed to the client, never logged or shown.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable, Coroutine
from typing import Any

from pydantic import SecretStr

from ..clock import Clock, SystemClock
from ..conversations import MemoryResponseStore
from ..exceptions import ConfigurationError
from ._redis_board import RedisBoard
from ._redis_limits import RedisLimiter
from ._redis_link import DOWN, Link
from ._redis_stores import RedisCacheStore, RedisLock, RedisResponseStore, RedisSticky
from ._resp import RedisClient
from .base import RATE_WINDOW, BreakerEvent, StateStatus
from .memory import (
    DEFAULT_CACHE_MAX_BYTES,
    DEFAULT_CACHE_MAX_ENTRIES,
    MemoryCacheStore,
    MemoryLimiter,
    MemorySticky,
)

__all__ = ["RedisState"]

logger = logging.getLogger("leapasgi.state")


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
        self._url = url
        try:
            client = RedisClient(url, connect_timeout=op_timeout)
        except ValueError:
            raise ConfigurationError("state: the Redis URL is not valid") from None
        self._link = link = Link(client, op_timeout=op_timeout, clock=self._clock)
        self._tasks: set[asyncio.Task[None]] = set()
        self._task: asyncio.Task[None] | None = None
        self._on_event: Callable[[BreakerEvent], None] | None = None
        self.limiter = RedisLimiter(
            link,
            prefix,
            window=window,
            fallback=MemoryLimiter(clock=self._clock, divisor=self._replicas),
            spawn=self._spawn,
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

    @property
    def link(self) -> Link:
        """The connection and its degraded mode, for the stores built on this backend
        (tenancy's keys, usage and ledger)."""
        return self._link

    @property
    def prefix(self) -> str:
        return self._prefix

    @property
    def clock(self) -> Clock:
        return self._clock

    def connect(self, *, timeout: float) -> RedisClient:
        """A connection of its own to the same server (connecting within ``timeout``), for a
        store whose traffic should neither wait behind the hot path's commands nor delay
        them; its user closes it."""
        return RedisClient(self._url, connect_timeout=timeout)

    def spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """Run ``coro`` in the background until it ends or the backend closes."""
        return self._spawn(coro)

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
                await self._link.client.execute(b"PING")
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
        while True:
            await asyncio.sleep(self._recover_interval)
            if await self._link.reachable():
                break
        self._link.restore()
        await self.cache.forget_local()
        self.limiter.kick()
