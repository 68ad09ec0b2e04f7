"""Both batch stores, for tests that hold of every ``BatchStore``: ``SqliteBatchStore`` on a
directory, and ``RedisBatchStore`` on a real redis-server (one per module, a fresh key prefix
per test) and a directory."""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pydantic import SecretStr

from leapasgi.batches import BatchStore, SqliteBatchStore
from leapasgi.batches.redis import RedisBatchStore
from leapasgi.state._resp import RedisClient
from tests.redis_server import RedisServer

__all__ = ["MakeStore", "make_store", "shared_redis"]

# A store on the test's directory; called again, another store on the same records.
MakeStore = Callable[[], BatchStore]


@pytest.fixture(scope="module")
def shared_redis() -> Iterator[RedisServer]:
    server = RedisServer()
    try:
        server.start()
        yield server
    finally:
        server.stop()


def redis_store(server: RedisServer, prefix: str, directory: Path) -> RedisBatchStore:
    client = RedisClient(SecretStr(server.url), connect_timeout=1.0)
    return RedisBatchStore(client, prefix, directory, op_timeout=1.0)


@pytest.fixture(params=["sqlite", "redis"])
def make_store(
    request: pytest.FixtureRequest, tmp_path: Path, shared_redis: RedisServer
) -> MakeStore:
    directory = tmp_path / "batches"
    if request.param == "sqlite":
        return lambda: SqliteBatchStore(directory)
    prefix = "t" + secrets.token_hex(4)
    return lambda: redis_store(shared_redis, prefix, directory)
