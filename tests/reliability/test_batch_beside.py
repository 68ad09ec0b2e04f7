"""Row 46: interactive requests beside a running batch. U1 answers in 50 ms +- 10 ms and the
gateway lets at most 8 requests be in flight to it (the rest wait in its line). Interactive
requests, 50 a second from 4 clients (open loop: each is sent on time whatever the others are
doing), are timed alone, then again while a 1,200-line batch keeps 64 lines in flight: enough
to fill U1's 8 slots several times over, its lines waiting in U1's line at the lowest priority,
so an interactive request only waits for the next slot to free up.

U1's latency varies a little on purpose: with one fixed latency, the batch lines that started
together end together for ever after, all 8 slots free at once every 50 ms, and an interactive
request waits up to a whole upstream latency for the next one; real answer times vary, which
spreads the slots out. Were batch lines given normal priority instead, interactive requests
would wait in line behind dozens of them (a p95 of about 0.6 s here, 5x the pass figure)."""

from __future__ import annotations

import asyncio
import io
import json
import random
import time
from collections import Counter
from collections.abc import Iterator
from typing import Final

import httpx
import pytest

from leapasgi.config import BatchesConfig
from tests.asgi.live_server import LiveGateway
from tests.fake_upstream import Behavior, FakeUpstream, Seen, completion
from tests.reliability.harness import Figures, reliability_gateway

pytestmark = pytest.mark.anyio

ROW = "46"
LATENCY, JITTER = 0.05, 0.01  # U1's answer time, s: uniformly LATENCY +- JITTER
SLOTS = 8  # U1's max_in_flight
LINES = 1200
BATCH_CONCURRENCY = 64  # batch lines in flight at once: 8x U1's slots
CLIENTS = 4
REQUESTS = 200
RATE = 50  # interactive requests a second, over all clients
# Batch lines answered before the interactive requests start beside it: it runs flat out.
WARMED_UP = 100
BATCH_WAIT = 60.0
# The pass figure: interactive p95 beside the batch within 1.5x alone, plus 25 ms of noise.
RATIO, SLACK = 1.5, 0.025
CHAT: Final = "/v1/chat/completions"


class Jittered(FakeUpstream):
    """Answers each chat request in LATENCY +- JITTER seconds (seeded)."""

    def __init__(self, *, seed: int) -> None:
        super().__init__()
        self._rng = random.Random(seed)

    def behavior_for(self, seen: Seen) -> Behavior:
        if seen.path.endswith("/models"):
            return super().behavior_for(seen)
        before = LATENCY + self._rng.uniform(-JITTER, JITTER)
        return Behavior(json_body=completion("hi"), before=before)


@pytest.fixture(scope="module")
def gateway() -> Iterator[LiveGateway]:
    with reliability_gateway(
        upstreams=[Jittered(seed=46)],
        provider_options={"u1": {"max_in_flight": SLOTS, "max_waiting": 10_000}},
        batches=BatchesConfig(enabled=True, concurrency=BATCH_CONCURRENCY, retry_max_delay=0.1),
    ) as live:
        yield live


def percentile(values: list[float], share: int) -> float:
    ordered = sorted(values)
    return ordered[-(-share * len(ordered) // 100) - 1]


def batch_line(n: int) -> dict[str, object]:
    body = {"model": "m1", "messages": [{"role": "user", "content": f"line-{n:04}"}]}
    return {"custom_id": f"line-{n:04}", "method": "POST", "url": CHAT, "body": body}


async def interactive(live: LiveGateway, tag: str) -> tuple[list[float], int]:
    """The latency of each of REQUESTS interactive requests sent at RATE a second, in turn
    from CLIENTS clients, and how many of them did not get a 200."""
    latencies: list[float] = []
    errors = 0

    async def one(client: httpx.AsyncClient, n: int) -> None:
        nonlocal errors
        body = {"model": "m1", "messages": [{"role": "user", "content": f"{tag}-{n}"}]}
        began = time.monotonic()
        try:
            answer = await client.post(CHAT, json=body)
        except httpx.HTTPError:
            errors += 1
            return
        if answer.status_code != 200:
            errors += 1
            return
        latencies.append(time.monotonic() - began)

    clients = [httpx.AsyncClient(base_url=live.origin, timeout=10) for _ in range(CLIENTS)]
    try:
        # Each client's connection opened before the clock starts.
        await asyncio.gather(*(client.get("/health") for client in clients))
        start = time.monotonic()
        tasks = []
        for n in range(REQUESTS):
            await asyncio.sleep(max(0.0, start + n / RATE - time.monotonic()))
            tasks.append(asyncio.ensure_future(one(clients[n % CLIENTS], n)))
        await asyncio.gather(*tasks)
    finally:
        for client in clients:
            await client.aclose()
    return latencies, errors


async def test_interactive_requests_keep_their_latency_beside_a_batch(
    gateway: LiveGateway, figures: Figures
) -> None:
    upstream = gateway.upstreams[0]
    limit = gateway.gateway.manager.registry.get("u1").limit
    assert limit is not None
    alone, alone_errors = await interactive(gateway, "alone")

    lines = [batch_line(n) for n in range(LINES)]
    content = "".join(json.dumps(line) + "\n" for line in lines).encode()
    async with gateway.async_client() as sdk:
        uploaded = await sdk.files.create(
            file=("lines.jsonl", io.BytesIO(content)), purpose="batch"
        )
        began = time.monotonic()
        batch = await sdk.batches.create(
            input_file_id=uploaded.id, endpoint=CHAT, completion_window="24h"
        )

        async def answered() -> int:
            counts = (await sdk.batches.retrieve(batch.id)).request_counts
            return 0 if counts is None else counts.completed + counts.failed

        async with asyncio.timeout(BATCH_WAIT):
            while True:
                if await answered() >= WARMED_UP:
                    break
                await asyncio.sleep(0.05)
        waiting: list[int] = []  # batch lines in U1's line, while the interactive ones run

        async def watch() -> None:
            while True:
                waiting.append(limit.waiting)
                await asyncio.sleep(0.05)

        watcher = asyncio.ensure_future(watch())
        try:
            beside, beside_errors = await interactive(gateway, "beside")
        finally:
            watcher.cancel()
        # The batch ran the whole time: lines were still to answer once the last request was.
        left = LINES - await answered()

        async with asyncio.timeout(BATCH_WAIT):
            while True:
                done = await sdk.batches.retrieve(batch.id)
                if done.status in ("completed", "failed", "expired", "cancelled"):
                    break
                await asyncio.sleep(0.1)
        duration = time.monotonic() - began
        output = []
        if done.output_file_id is not None:
            text = (await sdk.files.content(done.output_file_id)).text
            output = [json.loads(line) for line in text.splitlines()]

    answers = Counter(
        line["custom_id"] for line in output if line["response"]["status_code"] == 200
    )
    sent = Counter(
        content
        for seen in upstream.chat_requests
        if (content := seen.json["messages"][0]["content"]).startswith("line-")
    )
    wanted = {line["custom_id"] for line in lines}
    answered_once = sum(1 for custom_id, n in answers.items() if n == 1 and sent[custom_id] == 1)
    completed = (
        done.status == "completed"
        and set(answers) == wanted
        and answered_once == LINES
        and set(sent) == wanted
        and len(output) == LINES
    )
    p50_alone, p95_alone = percentile(alone, 50), percentile(alone, 95)
    p50_beside, p95_beside = percentile(beside, 50), percentile(beside, 95)
    bound = RATIO * p95_alone + SLACK
    errors = alone_errors + beside_errors
    queued = sorted(waiting)[len(waiting) // 2]

    figures.record(ROW, "interactive p50 alone, s", round(p50_alone, 3), passed=True)
    figures.record(ROW, "interactive p95 alone, s", round(p95_alone, 3), passed=True)
    figures.record(ROW, "interactive p50 beside the batch, s", round(p50_beside, 3), passed=True)
    figures.record(
        ROW,
        "interactive p95 beside the batch, s",
        round(p95_beside, 3),
        passed=p95_beside <= bound,
        target=f"<= 1.5 x {p95_alone:.3f} + 0.025 = {bound:.3f}",
    )
    figures.record(ROW, "interactive errors", errors, passed=errors == 0, target="0")
    figures.record(
        ROW,
        "batch lines waiting in U1's line meanwhile (median)",
        queued,
        passed=queued > 0 and left > 0,
        target="> 0 (U1 saturated by the batch)",
    )
    figures.record(
        ROW,
        f"batch lines answered once (of {LINES})",
        answered_once,
        passed=completed,
        target=f"{LINES}, batch completed",
    )
    figures.record(ROW, "batch duration, s", round(duration, 2), passed=completed)
    assert errors == 0
    assert queued > 0, "the batch kept U1's slots full"
    assert left > 0, "the batch was still running when the interactive requests ended"
    assert p95_beside <= bound, (p95_beside, bound)
    assert completed, (done.status, answered_once, len(output), len(sent))
