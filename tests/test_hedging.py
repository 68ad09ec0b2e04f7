"""Hedged requests: a slow first attempt gets a second on another provider; the first to
answer (for a stream, to produce content) wins and the other is cancelled; never after a stream
committed, never past the budget, never for a request that must not be duplicated."""

from __future__ import annotations

import random
from typing import Any

import httpx
import pytest

from leapasgi import Gateway
from leapasgi.config import GatewayConfig, HealthConfig, ProviderConfig, RoutingConfig
from leapasgi.hedging import BURST, HedgeBudget, hedge_header
from leapasgi.manager import ProviderManager
from leapasgi.outcome import Outcome
from leapasgi.providers.mock import Fault, MockProvider
from leapasgi.registry import RouteSettings
from leapasgi.tenants.policy import Tenant, TenantPolicy
from leapasgi.trail import CANCELLED, OK
from leapasgi.types import ChatCompletionRequest

pytestmark = pytest.mark.anyio

SLOW = 30.0  # a first attempt that would take this long is always hedged (and cancelled)
HEDGE = 0.2
LATE = 0.6  # slower than the hedge delay, far faster than SLOW


def req(**fields: Any) -> ChatCompletionRequest:
    body: dict[str, Any] = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    return ChatCompletionRequest.model_validate({**body, **fields})


def hedged(**routing: Any) -> tuple[ProviderManager, MockProvider, MockProvider]:
    """A manager over providers a (tried first) and b, hedging model m after 0.2 s (well past
    what an answer takes here, however busy the machine)."""
    routing.setdefault("hedge_after", HEDGE)
    routing.setdefault("hedge_models", ["m"])
    routing.setdefault("hedge_budget", 1.0)
    manager = ProviderManager(
        routing=RoutingConfig(retry_initial_delay=0, retry_max_delay=0, **routing),
        health=HealthConfig(interval=0),
        rng=random.Random(3),
    )
    a = MockProvider(name="a", models=["m"], reply="from a")
    b = MockProvider(name="b", models=["m"], reply="from b")
    manager.register_provider(a, RouteSettings(models=("m",), priority=0))
    manager.register_provider(b, RouteSettings(models=("m",), priority=1))
    return manager, a, b


def outcomes(outcome: Outcome) -> list[tuple[str, str]]:
    return [(a.provider, a.outcome) for a in outcome.trail.attempts]


async def test_a_slow_first_attempt_is_hedged_and_the_loser_cancelled() -> None:
    manager, a, _b = hedged()
    a.inject(Fault.delay(SLOW))
    outcome = Outcome()
    answer = await manager.chat(req(), outcome=outcome)
    assert answer.choices[0].message.content == "from b"
    assert outcome.trail.hedged == "b"
    assert outcomes(outcome) == [("b", OK), ("a", CANCELLED)]
    assert outcome.trail.served_by is not None
    assert outcome.trail.served_by.provider == "b"
    assert outcome.trail.tries == 2
    assert manager.registry.get("a").stats.in_flight == 0  # the loser let go
    await manager.aclose()


async def test_a_fast_first_attempt_is_not_hedged() -> None:
    manager, _a, b = hedged()
    outcome = Outcome()
    answer = await manager.chat(req(), outcome=outcome)
    assert answer.choices[0].message.content == "from a"
    assert outcome.trail.hedged is None
    assert b.requests == []
    await manager.aclose()


async def test_the_first_to_answer_wins_even_when_it_is_the_first_attempt() -> None:
    manager, a, b = hedged()
    a.inject(Fault.delay(LATE))  # slower than the hedge delay, faster than b
    b.inject(Fault.delay(SLOW))
    outcome = Outcome()
    answer = await manager.chat(req(), outcome=outcome)
    assert answer.choices[0].message.content == "from a"
    assert outcomes(outcome) == [("a", OK), ("b", CANCELLED)]
    await manager.aclose()


async def test_a_failed_hedge_leaves_the_first_attempt_to_answer() -> None:
    manager, a, b = hedged()
    a.inject(Fault.delay(LATE))
    b.inject(Fault.status(500))
    outcome = Outcome()
    answer = await manager.chat(req(), outcome=outcome)
    assert answer.choices[0].message.content == "from a"
    assert [o for _, o in outcomes(outcome)] == ["UpstreamUnavailableError", OK]
    await manager.aclose()


async def test_a_stream_hedges_before_its_first_content() -> None:
    manager, a, _b = hedged()
    a.inject(Fault.delay(SLOW))
    outcome = Outcome()
    async with manager.stream(req(stream=True), outcome=outcome) as stream:
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert text == "from b"
    assert outcome.trail.hedged == "b"
    await manager.aclose()


async def test_a_stream_that_committed_is_never_hedged() -> None:
    # a sends its first content at once, then is slow: the stream is a's, and b never hears.
    manager, a, b = hedged()
    a.chunk_delay = LATE  # its first content comes at once, the rest after the hedge delay
    outcome = Outcome()
    async with manager.stream(req(stream=True), outcome=outcome) as stream:
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert text == "from a"
    assert outcome.trail.hedged is None
    assert b.requests == []
    await manager.aclose()


@pytest.mark.parametrize(
    "why",
    ["budget spent", "client said off", "tenant must not duplicate", "model not hedged"],
)
async def test_no_hedge(why: str) -> None:
    options: dict[str, Any] = {}
    if why == "budget spent":
        options["hedge_budget"] = 0.0
    if why == "model not hedged":
        options["hedge_models"] = ["other"]
    manager, a, b = hedged(**options)
    a.inject(Fault.delay(LATE))
    outcome = Outcome()
    if why == "client said off":
        outcome.hedge = False
    if why == "tenant must not duplicate":
        outcome.tenant = Tenant("t", TenantPolicy(hedge=False))
    answer = await manager.chat(req(), outcome=outcome)
    assert answer.choices[0].message.content == "from a"
    assert outcome.trail.hedged is None
    assert b.requests == []
    await manager.aclose()


async def test_a_client_may_ask_for_a_hedge_on_a_model_not_hedged() -> None:
    manager, a, _b = hedged(hedge_models=[])
    a.inject(Fault.delay(SLOW))
    outcome = Outcome()
    outcome.hedge = True
    answer = await manager.chat(req(), outcome=outcome)
    assert answer.choices[0].message.content == "from b"
    await manager.aclose()


def test_the_budget_holds_hedges_to_their_share() -> None:
    budget = HedgeBudget(0.05)
    hedges = 0
    for _ in range(10_000):
        budget.earn()
        hedges += budget.take()  # as if every request were slow
    assert hedges <= 0.05 * 10_000 + BURST
    assert hedges >= 0.05 * 10_000 - 1


def test_the_hedge_header() -> None:
    def scope(value: bytes) -> dict[str, Any]:
        return {"headers": [(b"x-leap-hedge", value)]}

    assert hedge_header(scope(b"on")) is True
    assert hedge_header(scope(b" OFF ")) is False
    assert hedge_header(scope(b"maybe")) is None
    assert hedge_header({"headers": []}) is None


async def test_hedges_show_in_the_metrics_and_the_header_turns_them_on() -> None:
    config = GatewayConfig(
        providers=[
            ProviderConfig(name="a", type="mock", models=["m"], priority=0),
            ProviderConfig(name="b", type="mock", models=["m"], priority=1),
        ],
        routing=RoutingConfig(hedge_after=HEDGE, hedge_budget=1.0),
        health=HealthConfig(interval=0),
    )
    gateway = Gateway(config=config)
    slow = gateway.manager.registry.get("a").provider
    assert isinstance(slow, MockProvider)
    slow.inject(Fault.delay(SLOW))
    transport = httpx.ASGITransport(app=gateway.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
        body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
        hedge = await client.post("/v1/chat/completions", json=body, headers={"x-leap-hedge": "on"})
        assert hedge.headers["x-leap-provider"] == "b"
        plain = await client.post("/v1/chat/completions", json=body)  # m is not hedged
        assert plain.headers["x-leap-provider"] == "a"
        metrics = (await client.get("/metrics")).text
    assert 'leap_hedges_total{provider="b",result="won"} 1' in metrics
    await gateway.aclose()
