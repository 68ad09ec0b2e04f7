"""Batches across processes: two ``leapasgi serve`` replicas sharing a real redis-server and a
directory, the one running a batch killed with SIGKILL, the other finishing it; and
``--workers 2`` on one SQLite directory resuming a killed gateway's batch once, not twice. A
line whose answer was recorded is never sent again; only the lines in flight at a kill may
go out twice."""

from __future__ import annotations

import io
import json
import signal
from collections import Counter
from pathlib import Path

import anyio
import openai
import pytest

from tests.fake_upstream import Behavior, FakeUpstream, completion
from tests.redis_server import RedisServer, redis_server
from tests.state.conftest import raw
from tests.test_batches_restart import custom_id_of, recorded_lines, serving

__all__ = ["redis_server"]

pytestmark = pytest.mark.anyio

LINES = 200
CONCURRENCY = 4
WAIT = 30.0


def config_text(upstream: FakeUpstream, directory: Path, redis: RedisServer | None) -> str:
    state = "" if redis is None else f'[state]\nbackend = "redis"\nurl = "{redis.url}"\n'
    return f"""
{state}
[health]
interval = 0

[[providers]]
name = "up"
base_url = "{upstream.base_url}"
api_key = "up-key"
models = ["m1"]
timeout = 5

[batches]
enabled = true
directory = "{directory}"
concurrency = {CONCURRENCY}
poll_interval = 0.1
"""


def batch_file() -> bytes:
    lines = [
        {
            "custom_id": f"k{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": "m1", "messages": [{"role": "user", "content": f"id=k{i}"}]},
        }
        for i in range(LINES)
    ]
    return "".join(json.dumps(line) + "\n" for line in lines).encode()


async def start_batch(origin: str) -> str:
    """A batch of LINES lines made through ``origin``, once a quarter of them is answered."""
    async with openai.AsyncOpenAI(base_url=f"{origin}/v1", api_key="k") as client:
        uploaded = await client.files.create(
            file=("k.jsonl", io.BytesIO(batch_file())), purpose="batch"
        )
        batch = await client.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        with anyio.fail_after(WAIT):
            while True:
                seen = await client.batches.retrieve(batch.id)
                assert seen.request_counts is not None
                if seen.request_counts.completed >= LINES // 4:
                    return batch.id
                await anyio.sleep(0.01)


async def finished_output(origin: str, batch_id: str) -> list[str]:
    """The custom_ids of the batch's output file, once it completed (asked of ``origin``)."""
    async with openai.AsyncOpenAI(base_url=f"{origin}/v1", api_key="k") as client:
        with anyio.fail_after(WAIT):
            while True:
                done = await client.batches.retrieve(batch_id)
                if done.status == "completed":
                    break
                assert done.status in ("validating", "in_progress", "finalizing"), done.status
                await anyio.sleep(0.02)
        assert done.request_counts is not None
        assert (done.request_counts.completed, done.request_counts.failed) == (LINES, 0)
        assert done.output_file_id is not None
        content = await client.files.content(done.output_file_id)
    return [json.loads(line)["custom_id"] for line in content.text.splitlines()]


def check_sends(upstream: FakeUpstream, sent_before: int, recorded: set[str]) -> Counter[str]:
    """Every line sent; none recorded before the kill sent again; only lines in flight at the
    kill sent twice. The sends after the kill, per custom_id."""
    before = Counter(custom_id_of(s.body) for s in upstream.chat_requests[:sent_before])
    after = Counter(custom_id_of(s.body) for s in upstream.chat_requests[sent_before:])
    assert not set(after) & recorded, "a line recorded before the kill was sent again"
    assert len(set(after) & set(before)) <= CONCURRENCY
    assert set(before) | set(after) == {f"k{i}" for i in range(LINES)}
    return after


async def test_a_replica_killed_mid_batch_leaves_it_to_another_that_finishes_it(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    upstream = FakeUpstream(default=Behavior(json_body=completion("ok"), before=0.01))
    async with upstream:
        config = tmp_path / "gateway.toml"
        config.write_text(config_text(upstream, tmp_path / "shared", redis_server))
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
        after = check_sends(upstream, sent_before, recorded)
        assert max(after.values()) == 1, "the replica taking over sent each line once"


async def test_two_workers_on_one_directory_resume_a_killed_gateways_batch_once(
    tmp_path: Path,
) -> None:
    upstream = FakeUpstream(default=Behavior(json_body=completion("ok"), before=0.01))
    async with upstream:
        config = tmp_path / "gateway.toml"
        directory = tmp_path / "batches"
        config.write_text(config_text(upstream, directory, None))
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
        after = check_sends(upstream, sent_before, recorded)
        assert max(after.values()) == 1, "no line was sent by both workers"
