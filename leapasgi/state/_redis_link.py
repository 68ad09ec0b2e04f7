"""The way to Redis and whether to take it: every operation under ``op_timeout``, and the
first failure switching the backend to its local state (degraded) until Redis answers again.

Failures are described in a few words (``timed out``, ``ConnectionError``, ``server replied
WRONGPASS``), never by their message, which may name the server.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from ..clock import Clock
from ._resp import Arg, RedisClient, RedisError, ReplyError, Script

__all__ = ["DOWN", "Down", "Link", "ms"]

logger = logging.getLogger("leapasgi.state")

T = TypeVar("T")


class Down(enum.Enum):
    """The answer of an operation that did not reach Redis: serve it locally."""

    DOWN = "down"


DOWN = Down.DOWN


def ms(seconds: float) -> int:
    """``seconds`` in whole milliseconds, at least one (Redis's PX and PEXPIRE)."""
    return max(1, round(seconds * 1000))


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ReplyError):
        code = exc.code
        return f"server replied {code[:20]}" if code.isalpha() else "server replied an error"
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, RedisError):
        return "ConnectionError"
    return type(exc).__name__


class Link:
    """The client, and whether Redis may be used now."""

    def __init__(self, client: RedisClient, *, op_timeout: float, clock: Clock) -> None:
        self.client = client
        self.op_timeout = op_timeout
        self._clock = clock
        self.up = True
        self.since: float | None = None
        self.detail: str | None = None
        self.errors = 0

    async def execute(self, *args: Arg) -> Any:
        """The reply to one command; DOWN at once while degraded, or once it failed."""
        if not self.up:
            return DOWN
        try:
            async with asyncio.timeout(self.op_timeout):
                return await self.client.execute(*args)
        except Exception as exc:  # whatever the failure, the answer is local state
            self.fail(exc, "failed")
            return DOWN

    async def run(self, script: Script, keys: Sequence[Arg], args: Sequence[Arg]) -> Any:
        """What ``script`` returned; DOWN at once while degraded, or once it failed."""
        if not self.up:
            return DOWN
        try:
            async with asyncio.timeout(self.op_timeout):
                return await self.client.run(script, keys, args)
        except Exception as exc:
            self.fail(exc, "failed")
            return DOWN

    async def call(self, make: Callable[[], Awaitable[T]]) -> T | Down:
        """``make()``'s result (several commands, one timeout); DOWN as ``execute``."""
        if not self.up:
            return DOWN
        try:
            async with asyncio.timeout(self.op_timeout):
                return await make()
        except Exception as exc:
            self.fail(exc, "failed")
            return DOWN

    async def reachable(self) -> bool:
        """Whether Redis answers a ping within ``op_timeout`` (whatever the mode)."""
        try:
            async with asyncio.timeout(self.op_timeout):
                await self.client.execute(b"PING")
        except Exception:
            self.client.drop()  # the next ping tries a fresh connection
            return False
        return True

    def fail(self, exc: BaseException, what: str) -> None:
        """Count a failure; the first one while shared starts degraded mode."""
        self.errors += 1
        if not self.up:
            return
        self.up = False
        self.since = self._clock.time()
        self.detail = _reason(exc)
        # The connection may be half-open (the server froze or vanished): it is never used
        # again, and the calls waiting on it end now instead of at their timeouts.
        self.client.drop()
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
