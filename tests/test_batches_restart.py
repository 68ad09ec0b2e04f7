"""A batch survives its gateway: ``leapasgi serve`` killed with SIGKILL mid-batch and started
again on the same ``[batches] directory`` finishes it, and no line whose answer was recorded
before the kill is sent upstream again."""

from __future__ import annotations

import io
import json
import signal
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
import pytest
from anyio.abc import Process

from tests.fake_upstream import Behavior, FakeUpstream, completion
from tests.test_examples import clean_env, free_port

pytestmark = pytest.mark.anyio

LINES = 200
CONCURRENCY = 4
WAIT = 30.0


def config_text(upstream: FakeUpstream, directory: Path) -> str:
    return f"""
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
"""


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


def custom_id_of(body: bytes) -> str:
    content: str = json.loads(body)["messages"][-1]["content"]
    return content.removeprefix("id=")


async def test_a_killed_gateway_resumes_its_batch_without_answering_a_line_twice(
    tmp_path: Path,
) -> None:
    # Each answer takes a little while, so the kill lands mid-batch.
    upstream = FakeUpstream(default=Behavior(json_body=completion("ok"), before=0.01))
    async with upstream:
        config = tmp_path / "gateway.toml"
        directory = tmp_path / "batches"
        config.write_text(config_text(upstream, directory))
        lines = [
            {
                "custom_id": f"k{i}",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {"model": "m1", "messages": [{"role": "user", "content": f"id=k{i}"}]},
            }
            for i in range(LINES)
        ]
        data = "".join(json.dumps(line) + "\n" for line in lines).encode()
        async with serving(config) as (origin, process):
            async with openai.AsyncOpenAI(base_url=f"{origin}/v1", api_key="k") as client:
                uploaded = await client.files.create(
                    file=("k.jsonl", io.BytesIO(data)), purpose="batch"
                )
                batch = await client.batches.create(
                    input_file_id=uploaded.id,
                    endpoint="/v1/chat/completions",
                    completion_window="24h",
                )
                with anyio.fail_after(WAIT):
                    while True:
                        seen = await client.batches.retrieve(batch.id)
                        assert seen.request_counts is not None
                        if seen.request_counts.completed >= LINES // 4:
                            break
                        await anyio.sleep(0.01)
            process.send_signal(signal.SIGKILL)
            await process.wait()
        sent_before = len(upstream.chat_requests)
        recorded = recorded_lines(directory / "batches.sqlite3", batch.id)
        assert LINES // 4 <= len(recorded) < LINES

        async with (
            serving(config) as (origin, _),
            openai.AsyncOpenAI(base_url=f"{origin}/v1", api_key="k") as client,
        ):
            with anyio.fail_after(WAIT):
                while True:
                    done = await client.batches.retrieve(batch.id)
                    if done.status == "completed":
                        break
                    await anyio.sleep(0.02)
            assert done.request_counts is not None
            assert (done.request_counts.completed, done.request_counts.failed) == (LINES, 0)
            assert done.output_file_id is not None
            content = await client.files.content(done.output_file_id)
        output = [json.loads(line) for line in content.text.splitlines()]
        assert sorted(line["custom_id"] for line in output) == sorted(f"k{i}" for i in range(LINES))
        before = Counter(custom_id_of(s.body) for s in upstream.chat_requests[:sent_before])
        after = Counter(custom_id_of(s.body) for s in upstream.chat_requests[sent_before:])
        assert not set(after) & recorded, "a line recorded before the kill was sent again"
        # Only lines in flight at the kill (sent, not yet recorded) go out twice.
        twice = {cid for cid in after if cid in before}
        assert len(twice) <= CONCURRENCY
        assert set(before) | set(after) == {f"k{i}" for i in range(LINES)}
        assert max((before + after).values()) <= 2


def recorded_lines(database: Path, batch_id: str) -> set[str]:
    """The custom_ids whose answers the killed gateway had recorded."""
    with sqlite3.connect(database) as connection:
        rows: list[Any] = connection.execute(
            "SELECT result FROM batch_lines WHERE batch_id = ?", (batch_id,)
        ).fetchall()
    connection.close()
    return {json.loads(row[0])["custom_id"] for row in rows}
