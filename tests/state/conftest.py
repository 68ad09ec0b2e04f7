"""Fixtures for the state backends: a real redis-server, and RedisStates on it as replicas."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from pydantic import SecretStr

from leapasgi.state._resp import Arg, RedisClient
from leapasgi.state.base import BreakerEvent
from leapasgi.state.redis import RedisState
from tests.redis_server import RedisServer, redis_server

__all__ = ["Replicas", "eventually", "raw", "redis_server", "replica"]

# Short intervals so recovery and sync show within a test's patience. The op_timeout is the
# product's 0.1 s times five: a busy CI machine can stall a process longer than 0.1 s, and
# these tests are about shared state (the timeout's own tests set theirs).
FAST = {"op_timeout": 0.5, "sync_interval": 0.05, "recover_interval": 0.1}


def replica(url: str, **options: Any) -> RedisState:
    """A RedisState with the tests' fast intervals (``options`` override them)."""
    return RedisState(SecretStr(url), **{**FAST, **options})


async def raw(url: str, *command: Arg) -> Any:
    """The reply to ``command``, sent on a connection of its own (to look behind a state)."""
    client = RedisClient(SecretStr(url), connect_timeout=5)
    try:
        return await client.execute(*command)
    finally:
        await client.aclose()


async def eventually(check: Callable[[], bool], *, within: float = 5.0) -> float:
    """Seconds until ``check()`` held; fails the test once ``within`` has passed."""
    began = time.monotonic()
    while not check():
        if time.monotonic() - began > within:
            raise AssertionError(f"not within {within} s")
        await asyncio.sleep(0.01)
    return time.monotonic() - began


class Replicas:
    """Started RedisStates sharing one server, each recording the breaker events it applies."""

    def __init__(self, server: RedisServer) -> None:
        self.server = server
        self.states: list[RedisState] = []
        self.applied: list[list[BreakerEvent]] = []

    async def start(
        self,
        url: str | None = None,
        *,
        on_event: Callable[[BreakerEvent], None] | None = None,
        **options: Any,
    ) -> RedisState:
        """Start one more replica (on ``url``, by default the server's)."""
        state = replica(url or self.server.url, **options)
        applied: list[BreakerEvent] = []
        self.states.append(state)
        self.applied.append(applied)
        await state.start(on_event or applied.append)
        return state

    async def aclose(self) -> None:
        self.server.thaw()
        for state in self.states:
            await state.aclose()


@pytest.fixture
async def replicas(redis_server: RedisServer) -> AsyncIterator[Replicas]:
    group = Replicas(redis_server)
    try:
        yield group
    finally:
        await group.aclose()
