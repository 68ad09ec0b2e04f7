"""Batches across ``leapasgi serve`` processes, shared by the restart and replica tests: the
config, a gateway served on a free port, a batch started and read back through the openai
SDK, and what the upstream was sent before and after a kill."""

from __future__ import annotations

import io
import json
import sqlite3
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import openai
from anyio.abc import Process

from tests.fake_upstream import FakeUpstream
from tests.redis_server import RedisServer
from tests.test_examples import clean_env, free_port

LINES = 200
CONCURRENCY = 4
WAIT = 30.0


def config_text(
    upstream: FakeUpstream,
    directory: Path,
    redis: RedisServer | None = None,
    *,
    poll_interval: float | None = None,
) -> str:
    """A gateway of one provider ``up`` (model ``m1``) at ``upstream``, batches on."""
    state = "" if redis is None else f'[state]\nbackend = "redis"\nurl = "{redis.url}"\n'
    poll = "" if poll_interval is None else f"poll_interval = {poll_interval}\n"
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
{poll}"""


@asynccontextmanager
async def serving(config: Path, *extra: str) -> AsyncIterator[tuple[str, Process]]:
    """``leapasgi serve --config`` (with ``extra`` options) on a free port, once it answers."""
    port = free_port()
    command = [sys.executable, "-m", "leapasgi", "serve", "--config", str(config), *extra]
    process = await anyio.open_process(
        [*command, "--port", str(port)],
        env=clean_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    origin = f"http://127.0.0.1:{port}"
    async with process:
        try:
            async with httpx.AsyncClient() as http:
                with anyio.fail_after(WAIT):
                    while True:
                        assert process.returncode is None, "the gateway exited"
                        try:
                            if (await http.get(f"{origin}/health")).status_code == 200:
                                break
                        except httpx.TransportError:
                            await anyio.sleep(0.05)
            yield origin, process
        finally:
            if process.returncode is None:
                process.terminate()
                with anyio.fail_after(10):
                    await process.wait()


def batch_file() -> bytes:
    """LINES chat lines ``k0``..., each asking with its own custom_id (``id=k0``)."""
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


def custom_id_of(body: bytes) -> str:
    content: str = json.loads(body)["messages"][-1]["content"]
    return content.removeprefix("id=")


def check_sends(
    upstream: FakeUpstream, sent_before: int, recorded: set[str]
) -> tuple[Counter[str], Counter[str]]:
    """Every line sent; none recorded before the kill sent again; only lines in flight at the
    kill sent twice. The sends before and after the kill, per custom_id."""
    before = Counter(custom_id_of(s.body) for s in upstream.chat_requests[:sent_before])
    after = Counter(custom_id_of(s.body) for s in upstream.chat_requests[sent_before:])
    assert not set(after) & recorded, "a line recorded before the kill was sent again"
    assert len(set(after) & set(before)) <= CONCURRENCY
    assert set(before) | set(after) == {f"k{i}" for i in range(LINES)}
    return before, after


def recorded_lines(database: Path, batch_id: str) -> set[str]:
    """The custom_ids whose answers the killed gateway had recorded."""
    with sqlite3.connect(database) as connection:
        rows: list[Any] = connection.execute(
            "SELECT result FROM batch_lines WHERE batch_id = ?", (batch_id,)
        ).fetchall()
    connection.close()
    return {json.loads(row[0])["custom_id"] for row in rows}
