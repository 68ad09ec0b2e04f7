"""Requests in a provider's line: by priority (a tenant's, or x-leap-priority within its bounds),
then deadline; one that cannot be answered in time is shed at once, not left to time out."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import httpx
import pytest

from leapasgi import Gateway
from leapasgi.config import (
    GatewayConfig,
    HealthConfig,
    PolicyConfig,
    ProviderConfig,
    RoutingConfig,
    TenantsConfig,
)
from leapasgi.exceptions import ProviderBusyError
from leapasgi.manager import ProviderManager
from leapasgi.outcome import Outcome
from leapasgi.providers.mock import Fault, MockProvider
from leapasgi.registry import RouteSettings
from leapasgi.tenants.policy import TenantPolicy
from leapasgi.types import ChatCompletionRequest

pytestmark = pytest.mark.anyio


def req(text: str = "hi") -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate(
        {"model": "m", "messages": [{"role": "user", "content": text}]}
    )


def one_slot(**routing: Any) -> tuple[ProviderManager, MockProvider]:
    manager = ProviderManager(
        routing=RoutingConfig(retry_initial_delay=0, retry_max_delay=0, **routing),
        health=HealthConfig(interval=0),
        rng=random.Random(2),
    )
    mock = MockProvider(name="p", models=["m"])
    manager.register_provider(
        mock, RouteSettings(models=("m",), max_in_flight=1, max_waiting=10, max_retries=0)
    )
    return manager, mock


async def test_the_line_serves_higher_priority_first() -> None:
    manager, mock = one_slot()
    mock.inject(Fault.delay(1.0))  # the first request holds the one slot a while
    served: list[str] = []

    async def ask(name: str, priority: int) -> None:
        outcome = Outcome()
        outcome.priority = priority
        await manager.chat(req(name), outcome=outcome)
        served.append(name)

    first = asyncio.ensure_future(ask("first", 0))
    await asyncio.sleep(0.05)  # it holds the slot; the others line up behind it
    waiting = [
        asyncio.ensure_future(ask(name, priority))
        for name, priority in [("low", -5), ("normal", 0), ("high", 9), ("normal2", 0)]
    ]
    await asyncio.gather(first, *waiting)
    assert served == ["first", "high", "normal", "normal2", "low"]
    await manager.aclose()


async def test_a_request_that_cannot_be_answered_in_time_is_shed_at_once() -> None:
    manager, mock = one_slot(request_timeout=0.5)
    # Teach the provider's typical latency (0.3 s), then hold its one slot.
    mock.inject(Fault.delay(0.3), Fault.delay(0.3), Fault.delay(3.0))
    for _ in range(2):
        await manager.chat(req())
    # Holds the slot until its own deadline (0.5 s), whatever the machine's pace.
    holder = asyncio.ensure_future(manager.chat(req()))
    await asyncio.sleep(0.05)
    # In line behind it, a request would need 0.3 s of wait plus 0.3 s of its own: more than
    # the 0.5 s it has. It is refused now, not after waiting half a second.
    outcome = Outcome()
    with pytest.raises(ProviderBusyError) as caught:
        await manager.chat(req(), outcome=outcome)
    assert caught.value.http_status == 503
    assert caught.value.retry_after is not None
    assert "could not answer within the request's time" in caught.value.message
    assert manager.registry.get("p").limit.shed == 1  # type: ignore[union-attr]
    await asyncio.gather(holder, return_exceptions=True)
    await manager.aclose()


async def test_a_tenant_asks_for_priority_only_within_its_bounds() -> None:
    config = GatewayConfig(
        providers=[ProviderConfig(name="p", type="mock", models=["m"], max_in_flight=1)],
        tenants=TenantsConfig(policy=PolicyConfig(priority=1, max_priority=5)),
        health=HealthConfig(interval=0),
    )
    gateway = Gateway(config=config)
    seen: list[int] = []
    account = gateway.recorder.accountant
    assert account is not None

    def spy(outcome: Outcome) -> None:  # every request is accounted: see its priority there
        seen.append(outcome.priority)
        account(outcome)

    gateway.recorder.accountant = spy
    transport = httpx.ASGITransport(app=gateway.app)
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
        for asked in (None, "3", "50", "-100", "nonsense"):
            headers = {"x-leap-priority": asked} if asked is not None else {}
            answer = await client.post("/v1/chat/completions", json=body, headers=headers)
            assert answer.status_code == 200
    assert seen == [1, 3, 5, -100, 1]
    assert TenantPolicy(priority=2).priority_for(9) == 2  # no max_priority: only lower
    await gateway.aclose()
