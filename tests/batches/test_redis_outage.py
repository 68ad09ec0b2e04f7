"""Batches on the Redis state backend, with Redis frozen mid-batch: the API answers 503 in
OpenAI's shape, the runner waits, and once Redis is back the batch completes, each line
answered once in its output (only lines in flight at the outage may have been sent twice)."""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr

from leapasgi import Gateway
from leapasgi.config import (
    BatchesConfig,
    GatewayConfig,
    HealthConfig,
    ProviderConfig,
    StateConfig,
)
from leapasgi.providers.mock import MockProvider
from tests.redis_server import RedisServer, redis_server

from .test_runner import Gate, start_batch, until

__all__ = ["redis_server"]

pytestmark = pytest.mark.anyio

LINES = 12
CONCURRENCY = 2


def settings(redis: RedisServer, directory: Path) -> GatewayConfig:
    return GatewayConfig(
        providers=[ProviderConfig(name="mock", type="mock", models=["mock-chat"])],
        health=HealthConfig(interval=0),
        state=StateConfig(
            backend="redis", url=SecretStr(redis.url), op_timeout=0.2, recover_interval=0.1
        ),
        batches=BatchesConfig(
            enabled=True, directory=directory, poll_interval=0.05, concurrency=CONCURRENCY
        ),
    )


async def test_redis_frozen_mid_batch_answers_503_and_the_batch_completes_once_it_is_back(
    tmp_path: Path, redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="leapasgi.batches")
    gateway = Gateway(config=settings(redis_server, tmp_path / "shared"))
    entry = gateway.manager.registry.get("mock")
    assert isinstance(entry.provider, MockProvider)
    gate = Gate(entry.provider)
    transport = httpx.ASGITransport(app=gateway.app)
    async with gateway, httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
        ids = [f"r{i}" for i in range(LINES)]
        batch_id = await start_batch(client, ids)

        async def in_flight() -> bool:
            return len(gate.order) == CONCURRENCY

        await until(in_flight)
        flying = set(gate.order)
        redis_server.freeze()
        try:
            answer = await client.get(f"/v1/batches/{batch_id}")
            assert answer.status_code == 503
            error = answer.json()["error"]
            assert (error["type"], error["code"]) == ("server_error", "store_unavailable")
            assert str(redis_server.port) not in error["message"]
            gate.open.set()  # the lines in flight are answered while their store is away

            async def waiting_to_record() -> bool:
                return any("not recorded yet" in r.getMessage() for r in caplog.records)

            await until(waiting_to_record)
        finally:
            redis_server.thaw()

        async def completed() -> bool:
            found = await client.get(f"/v1/batches/{batch_id}")
            return found.status_code == 200 and found.json()["status"] == "completed"

        await until(completed)
        batch = (await client.get(f"/v1/batches/{batch_id}")).json()
        output = await client.get(f"/v1/files/{batch['output_file_id']}/content")
    assert batch["request_counts"] == {"total": LINES, "completed": LINES, "failed": 0}
    answered = Counter(json.loads(line)["custom_id"] for line in output.text.splitlines())
    assert answered == Counter(ids), "each line once in the output"
    sends = Counter(gate.order)
    assert set(sends) == set(ids)
    assert {cid for cid, n in sends.items() if n > 1} <= flying
