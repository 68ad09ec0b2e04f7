"""The exact response cache (being written)."""

from __future__ import annotations

from .clock import Clock
from .config import CacheConfig
from .state.base import CacheStore

__all__ = ["ResponseCache"]


class ResponseCache:
    """Placeholder until the cache lands."""

    def __init__(self, config: CacheConfig, store: CacheStore, *, clock: Clock) -> None:
        self.config = config
        self.store = store
        self._clock = clock
