"""RPM and TPM limits: the in-process limiter, and how the dispatcher uses one (skip the
provider, else a 429), reserving before an attempt and settling when it ends."""

from __future__ import annotations

import random
from typing import Any

import pytest

from leapasgi.clock import FakeClock
from leapasgi.config import HealthConfig, RoutingConfig, parse_config
from leapasgi.exceptions import InvalidRequestError, RateLimitError
from leapasgi.gateway import GatewayCore
from leapasgi.manager import ProviderManager
from leapasgi.providers.mock import Fault, MockProvider
from leapasgi.registry import RouteSettings
from leapasgi.state.base import Bucket, Reservation
from leapasgi.state.memory import MemoryLimiter
from leapasgi.tokens import DEFAULT_COMPLETION_TOKENS, estimate_tokens
from leapasgi.types import ChatCompletionRequest

pytestmark = pytest.mark.anyio


def req(**fields: Any) -> ChatCompletionRequest:
    body: dict[str, Any] = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    body.update(fields)
    return ChatCompletionRequest.model_validate(body)


def manager(clock: FakeClock, **limits: RouteSettings) -> ProviderManager:
    m = ProviderManager(
        routing=RoutingConfig(), health=HealthConfig(interval=0), clock=clock, rng=random.Random(1)
    )
    for name, settings in limits.items():
        provider = MockProvider(name=name, models=["m"], reply=name, clock=clock)
        m.register_provider(provider, settings)
    return m


async def test_rpm_admits_exactly_the_limit_then_says_when_room_comes() -> None:
    clock = FakeClock()
    limiter = MemoryLimiter(clock=clock)
    bucket = (Bucket("p:a", rpm=3),)

    granted = []
    for _ in range(4):
        granted.append(await limiter.reserve(bucket, 0))
        clock.advance(10)

    assert [isinstance(g, Reservation) for g in granted] == [True, True, True, False]
    # The first request (at 0 s) leaves the window at 60 s; it is now 30 s.
    assert granted[3] == pytest.approx(30)
    clock.advance(20.001)
    assert isinstance(await limiter.reserve(bucket, 0), Reservation)


async def test_tpm_reserves_then_reconciles_with_real_usage_and_releases_on_failure() -> None:
    clock = FakeClock()
    limiter = MemoryLimiter(clock=clock)
    bucket = (Bucket("p:a", tpm=250),)

    first = await limiter.reserve(bucket, 100)
    second = await limiter.reserve(bucket, 100)
    refused = await limiter.reserve(bucket, 100)
    assert isinstance(first, Reservation)
    assert isinstance(second, Reservation)
    assert isinstance(refused, float)

    limiter.settle(first, 10)  # it used 10, not 100
    third = await limiter.reserve(bucket, 100)
    assert isinstance(third, Reservation)
    assert isinstance(await limiter.reserve(bucket, 100), float)

    limiter.settle(second, None)  # failed: everything back
    limiter.settle(second, None)  # a second settle does nothing
    assert isinstance(await limiter.reserve(bucket, 100), Reservation)


async def test_a_request_is_charged_to_every_bucket_or_to_none() -> None:
    limiter = MemoryLimiter(clock=FakeClock())
    provider = Bucket("p:a", rpm=5)
    model = Bucket("m:a:m", rpm=1)

    assert isinstance(await limiter.reserve((provider, model), 0), Reservation)
    assert isinstance(await limiter.reserve((provider, model), 0), float)
    for _ in range(4):  # the refused one took nothing from the provider's bucket
        assert isinstance(await limiter.reserve((provider,), 0), Reservation)
    assert isinstance(await limiter.reserve((provider,), 0), float)


async def test_a_divided_limiter_enforces_its_share_of_each_limit() -> None:
    limiter = MemoryLimiter(clock=FakeClock(), divisor=4)
    bucket = (Bucket("p:a", rpm=10, tpm=1000),)

    admitted = [isinstance(await limiter.reserve(bucket, 10), Reservation) for _ in range(4)]

    assert admitted == [True, True, False, False]  # 10 // 4 = 2 requests each


async def test_a_tpm_estimate_is_prompt_text_plus_the_completion_limit() -> None:
    assert estimate_tokens(req(max_tokens=50)) == 1 + 50  # "hi": 2 chars, under a token
    long = req(messages=[{"role": "user", "content": "x" * 4000}])
    assert estimate_tokens(long) == 1000 + 1 + DEFAULT_COMPLETION_TOKENS


async def test_a_provider_at_its_rpm_is_skipped_for_the_next_one() -> None:
    clock = FakeClock()
    m = manager(
        clock,
        a=RouteSettings(priority=0, models=("m",), rpm=2),
        b=RouteSettings(priority=1, models=("m",)),
    )

    served = []
    for _ in range(3):
        completion, trail = await m.chat_with_trail(req())
        served.append(completion.choices[0].message.content)

    assert served == ["a", "a", "b"]
    skipped = trail.attempts[0]
    assert (skipped.provider, skipped.outcome, skipped.skipped) == ("a", "RateLimitError", True)


async def test_over_the_limit_with_nowhere_else_to_go_is_a_429_with_retry_after() -> None:
    clock = FakeClock()
    m = manager(clock, a=RouteSettings(models=("m",), rpm=1))
    await m.chat(req())
    clock.advance(15)

    with pytest.raises(RateLimitError) as caught:
        await m.chat(req())

    error = caught.value
    assert error.http_status == 429
    assert error.retry_after == 45
    assert error.to_body()["error"]["type"] == "rate_limit_error"
    assert error.provider == "a"


async def test_a_failed_attempt_gives_its_reservation_back() -> None:
    clock = FakeClock()
    provider = MockProvider(name="a", models=["m"], clock=clock, faults=[Fault.status(400)])
    m = ProviderManager(health=HealthConfig(interval=0), clock=clock)
    m.register_provider(provider, RouteSettings(models=("m",), rpm=1))

    with pytest.raises(InvalidRequestError):
        await m.chat(req())
    completion = await m.chat(req())  # the failed one took nothing

    assert completion.choices[0].message.content


async def test_a_stream_closed_early_gives_its_reservation_back() -> None:
    clock = FakeClock()
    m = manager(clock, a=RouteSettings(models=("m",), rpm=1))
    stream = m.stream(req(stream=True))
    await stream.next_batch()
    await stream.aclose()

    completion = await m.chat(req())

    assert completion.choices[0].message.content == "a"


async def test_tpm_is_reconciled_with_the_usage_the_answer_reports() -> None:
    clock = FakeClock()
    m = manager(clock, a=RouteSettings(models=("m",), tpm=600))

    # Each reserves 1 + 256 (no max_tokens) but uses far fewer: the limit is not spent.
    for _ in range(5):
        await m.chat(req())

    assert isinstance(await m.state.limiter.reserve((Bucket("p:a", tpm=600),), 500), Reservation)


async def test_model_limits_apply_to_their_model_only() -> None:
    clock = FakeClock()
    m = ProviderManager(health=HealthConfig(interval=0), clock=clock)
    m.register_provider(
        MockProvider(name="a", models=["m", "n"], clock=clock),
        RouteSettings(models=("m", "n"), model_limits=(("m", 1, None),)),
    )

    await m.chat(req())
    for _ in range(3):
        await m.chat(req(model="n"))
    with pytest.raises(RateLimitError):
        await m.chat(req())


async def test_limits_load_from_config() -> None:
    config = parse_config(
        """
        [[providers]]
        name = "a"
        type = "mock"
        models = ["m"]
        rpm = 1
        tpm = 5000
        model_limits = { m = { rpm = 1 } }
        """
    )
    async with GatewayCore(config=config) as gateway:
        entry = gateway.manager.registry.get("a")
        assert entry.buckets("m") == (
            Bucket("p:a", rpm=1, tpm=5000),
            Bucket("m:a:m", rpm=1, tpm=None),
        )
        await gateway.manager.chat(req())
        with pytest.raises(RateLimitError):
            await gateway.manager.chat(req())
