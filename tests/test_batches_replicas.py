"""Batches across processes: two ``leapasgi serve`` replicas sharing a real redis-server and a
directory, the one running a batch killed with SIGKILL, the other finishing it; and
``--workers 2`` on one SQLite directory resuming a killed gateway's batch once, not twice. A
line whose answer was recorded is never sent again; only the lines in flight at a kill may
go out twice."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from tests.batch_processes import (
    LINES,
    check_sends,
    config_text,
    finished_output,
    recorded_lines,
    serving,
    start_batch,
)
from tests.fake_upstream import Behavior, FakeUpstream, completion
from tests.redis_server import RedisServer, redis_server
from tests.state.conftest import raw

__all__ = ["redis_server"]

pytestmark = pytest.mark.anyio


async def test_a_replica_killed_mid_batch_leaves_it_to_another_that_finishes_it(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    upstream = FakeUpstream(default=Behavior(json_body=completion("ok"), before=0.01))
    async with upstream:
        config = tmp_path / "gateway.toml"
        config.write_text(
            config_text(upstream, tmp_path / "shared", redis_server, poll_interval=0.1)
        )
        async with serving(config) as (origin_b, _):
            async with serving(config) as (origin_a, process_a):
                batch_id = await start_batch(origin_a)
                process_a.send_signal(signal.SIGKILL)
                await process_a.wait()
            sent_before = len(upstream.chat_requests)
            kept = await raw(redis_server.url, "HVALS", f"leap:batch:lines:{batch_id}")
            recorded = {json.loads(value[1:])["custom_id"] for value in kept}
            assert LINES // 4 <= len(recorded) < LINES
            output = await finished_output(origin_b, batch_id)
        assert sorted(output) == sorted(f"k{i}" for i in range(LINES))
        _, after = check_sends(upstream, sent_before, recorded)
        assert max(after.values()) == 1, "the replica taking over sent each line once"


async def test_two_workers_on_one_directory_resume_a_killed_gateways_batch_once(
    tmp_path: Path,
) -> None:
    upstream = FakeUpstream(default=Behavior(json_body=completion("ok"), before=0.01))
    async with upstream:
        config = tmp_path / "gateway.toml"
        directory = tmp_path / "batches"
        config.write_text(config_text(upstream, directory, poll_interval=0.1))
        async with serving(config) as (origin, process):
            batch_id = await start_batch(origin)
            process.send_signal(signal.SIGKILL)
            await process.wait()
        sent_before = len(upstream.chat_requests)
        recorded = recorded_lines(directory / "batches.sqlite3", batch_id)
        assert LINES // 4 <= len(recorded) < LINES
        # Both workers start on the directory; one lease, so one of them resumes the batch.
        async with serving(config, "--workers", "2") as (origin, _):
            output = await finished_output(origin, batch_id)
        assert sorted(output) == sorted(f"k{i}" for i in range(LINES))
        _, after = check_sends(upstream, sent_before, recorded)
        assert max(after.values()) == 1, "no line was sent by both workers"
