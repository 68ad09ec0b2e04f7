"""Where tenancy keeps keys, usage and spend: a SQLite file (or memory) in one host, Redis for
several. ``TenantStores`` is what the gateway and the CLI open."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ._sqlite import SqliteFile
from .base import KeyStore, UsageStore

if TYPE_CHECKING:
    from ..config import GatewayConfig
    from ..state import StateBackend

__all__ = ["TenantStores", "build_stores", "open_stores"]


@dataclass(slots=True)
class TenantStores:
    """The stores of one gateway: virtual keys, usage, and (memory backend) the SQLite file
    spend is kept in; ``shared`` is True when every replica sees the same."""

    keys: KeyStore
    usage: UsageStore
    database: SqliteFile | None
    shared: bool

    async def aclose(self) -> None:
        try:
            await self.keys.aclose()
            await self.usage.aclose()
        finally:
            if self.database is not None:
                self.database.close()


def build_stores(config: GatewayConfig, state: StateBackend) -> TenantStores:
    """The stores for ``config``: in Redis with the Redis backend, else in the SQLite file
    ``[tenants] database`` (in memory without one)."""
    if state.kind == "redis":
        from ..state.redis import RedisState
        from ._redis_keys import RedisKeyStore
        from ._redis_usage import RedisUsageStore

        assert isinstance(state, RedisState)
        retention = config.tenants.retention_days
        return TenantStores(
            keys=RedisKeyStore(state.link, state.prefix),
            usage=RedisUsageStore(state.link, state.prefix, retention_days=retention),
            database=None,
            shared=True,
        )
    from .keys import SqliteKeyStore
    from .usage import SqliteUsageStore

    database = SqliteFile(config.tenants.database)
    return TenantStores(
        keys=SqliteKeyStore(database),
        usage=SqliteUsageStore(database),
        database=database,
        shared=False,
    )


@asynccontextmanager
async def open_stores(
    config: GatewayConfig, *, env: Mapping[str, str] | None = None
) -> AsyncIterator[TenantStores]:
    """The stores ``config`` names, outside a running gateway (the CLI): closed on exit."""
    from ..state import build_state

    # An admin's command may cross a network: a second per operation, not the hot path's 0.1.
    patient = config.state.model_copy(update={"op_timeout": max(config.state.op_timeout, 2.0)})
    state = build_state(patient, config.cache, env=env)
    stores = build_stores(config, state)
    try:
        yield stores
    finally:
        try:
            await stores.aclose()
        finally:
            await state.aclose()
