"""Row 11: hedged requests against a heavy tail. U1 answers in 2 s for 10% of requests and in
50 ms otherwise; U2 always in 50 ms. Requests go to U1 first and are hedged to U2 after 300 ms;
the gateway is offered 100 requests a second, non-streaming, for 10 s (open loop: each is sent
on time whatever the others are doing)."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Iterator

import httpx
import pytest

from leapasgi.config import RoutingConfig
from tests.asgi.live_server import LiveGateway, live_gateway, upstream_config
from tests.fake_upstream import Behavior, FakeUpstream, Seen, completion
from tests.reliability.harness import Figures

pytestmark = pytest.mark.anyio

ROW = "11"
RATE = 100  # requests a second
SECONDS = 10
SLOW, FAST = 2.0, 0.05
SLOW_SHARE = 0.10
HEDGE_AFTER = 0.3


class HeavyTail(FakeUpstream):
    """Answers in ``SLOW`` seconds for ``SLOW_SHARE`` of requests, else in ``FAST``."""

    def __init__(self, slow_share: float, *, seed: int) -> None:
        super().__init__()
        self._slow_share = slow_share
        self._rng = random.Random(seed)

    def behavior_for(self, seen: Seen) -> Behavior:
        if seen.path.endswith("/models"):
            return super().behavior_for(seen)
        slow = self._rng.random() < self._slow_share
        return Behavior(json_body=completion("hi"), before=SLOW if slow else FAST)


def marker(seen: Seen) -> str:
    content: str = seen.json["messages"][0]["content"]
    return content


@pytest.fixture(scope="module")
def gateway() -> Iterator[LiveGateway]:
    fakes = [HeavyTail(SLOW_SHARE, seed=11), HeavyTail(0.0, seed=12)]
    with live_gateway(
        lambda up: [
            upstream_config("u1", up[0], priority=0, timeout=10),
            upstream_config("u2", up[1], priority=1, timeout=10),
        ],
        upstreams=fakes,
        loop="uvloop",
        routing=RoutingConfig(hedge_after=HEDGE_AFTER, hedge_models=["m1"], hedge_budget=0.12),
    ) as live:
        yield live


async def _offer(live: LiveGateway) -> list[float]:
    """Latency of each request, sent at RATE per second for SECONDS."""
    latencies: list[float] = []

    async def one(client: httpx.AsyncClient, n: int) -> None:
        began = time.monotonic()
        answer = await client.post(
            "/v1/chat/completions",
            json={"model": "m1", "messages": [{"role": "user", "content": f"req-{n}"}]},
        )
        assert answer.status_code == 200
        latencies.append(time.monotonic() - began)

    limits = httpx.Limits(max_connections=500, max_keepalive_connections=500)
    async with httpx.AsyncClient(base_url=live.origin, timeout=30, limits=limits) as client:
        start = time.monotonic()
        tasks = []
        for n in range(RATE * SECONDS):
            await asyncio.sleep(max(0.0, start + n / RATE - time.monotonic()))
            tasks.append(asyncio.ensure_future(one(client, n)))
        await asyncio.gather(*tasks)
    return latencies


async def test_hedging_cuts_the_tail(gateway: LiveGateway, figures: Figures) -> None:
    latencies = sorted(await _offer(gateway))
    p99 = latencies[-(-99 * len(latencies) // 100) - 1]
    u1, u2 = (fake.chat_requests for fake in gateway.upstreams)
    requests = RATE * SECONDS
    extra = (len(u1) + len(u2) - requests) / requests
    # Each hedge's loser: the U1 request the U2 answer beat, closed how long after that answer.
    answered = {marker(s): s.finished for s in u2 if s.finished is not None}
    closes = [
        s.finished - answered[marker(s)]
        for s in u1
        if s.client_went_away and s.finished is not None and marker(s) in answered
    ]
    slowest_close = max(closes, default=0.0)
    figures.record(
        ROW,
        f"p99 at {RATE} req/s for {SECONDS} s, 10% at 2 s, hedge at 300 ms, s",
        round(p99, 3),
        passed=p99 < 0.5,
        target="< 0.5",
    )
    figures.record(
        ROW, "extra upstream requests", f"{extra:.1%}", passed=extra <= 0.12, target="<= 12%"
    )
    figures.record(
        ROW,
        f"losing attempts cancelled: {len(closes)}; slowest close after the winner, s",
        round(slowest_close, 3),
        passed=bool(closes) and slowest_close <= 0.1,
        target="<= 0.1",
    )
    assert p99 < 0.5
    assert extra <= 0.12
    assert closes
    assert slowest_close <= 0.1
