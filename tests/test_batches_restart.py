"""A batch survives its gateway: ``leapasgi serve`` killed with SIGKILL mid-batch and started
again on the same ``[batches] directory`` finishes it, and no line whose answer was recorded
before the kill is sent upstream again."""

from __future__ import annotations

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

pytestmark = pytest.mark.anyio


async def test_a_killed_gateway_resumes_its_batch_without_answering_a_line_twice(
    tmp_path: Path,
) -> None:
    # Each answer takes a little while, so the kill lands mid-batch.
    upstream = FakeUpstream(default=Behavior(json_body=completion("ok"), before=0.01))
    async with upstream:
        config = tmp_path / "gateway.toml"
        directory = tmp_path / "batches"
        config.write_text(config_text(upstream, directory))
        async with serving(config) as (origin, process):
            batch_id = await start_batch(origin)
            process.send_signal(signal.SIGKILL)
            await process.wait()
        sent_before = len(upstream.chat_requests)
        recorded = recorded_lines(directory / "batches.sqlite3", batch_id)
        assert LINES // 4 <= len(recorded) < LINES

        async with serving(config) as (origin, _):
            output = await finished_output(origin, batch_id)
        assert sorted(output) == sorted(f"k{i}" for i in range(LINES))
        # Only lines in flight at the kill (sent, not yet recorded) go out twice.
        before, after = check_sends(upstream, sent_before, recorded)
        assert max((before + after).values()) <= 2
