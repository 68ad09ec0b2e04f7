"""State beyond one request, in this process or shared through Redis: see ``state/base.py``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from .base import (
    BreakerEvent,
    Bucket,
    CacheStore,
    ClusterLock,
    HealthBoard,
    RateLimiter,
    Reservation,
    StateBackend,
    StateStatus,
    StickyTable,
)
from .memory import MemoryState

if TYPE_CHECKING:
    from ..clock import Clock
    from ..config import CacheConfig, StateConfig

__all__ = [
    "BreakerEvent",
    "Bucket",
    "CacheStore",
    "ClusterLock",
    "HealthBoard",
    "MemoryState",
    "RateLimiter",
    "Reservation",
    "StateBackend",
    "StateStatus",
    "StickyTable",
    "build_state",
]


def build_state(
    config: StateConfig,
    cache: CacheConfig,
    *,
    clock: Clock | None = None,
    env: Mapping[str, str] | None = None,
) -> StateBackend:
    """The backend ``config`` names; Redis needs the ``leapasgi[redis]`` extra."""
    if config.backend == "memory":
        return MemoryState(
            clock=clock, cache_max_entries=cache.max_entries, cache_max_bytes=cache.max_bytes
        )
    from .redis import RedisState  # the optional extra, imported only when configured

    return RedisState(
        config.resolve_url(env),
        prefix=config.prefix,
        op_timeout=config.op_timeout,
        replicas=config.replicas,
        sync_interval=config.sync_interval,
        recover_interval=config.recover_interval,
        cache_max_entries=cache.max_entries,
        cache_max_bytes=cache.max_bytes,
        clock=clock,
    )
