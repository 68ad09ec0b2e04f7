"""The dispatcher's one loop: decisions, deadlines handed to providers, errors never edited,
holds waited out on an early-waking clock, and the preferred provider."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncGenerator, Iterator
from typing import Any

import pytest

from leapasgi import (
    Capabilities,
    ChatCompletion,
    ChatCompletionRequest,
    ChunkBatch,
    Deadline,
    DeadlineExceededError,
    FakeClock,
    Fault,
    MockProvider,
    Model,
    ProviderManager,
    RateLimitError,
    RouteSettings,
    SystemClock,
    UnsupportedFeatureError,
    UpstreamUnavailableError,
)
from leapasgi.attempts import Decision, RequestAttempts
from leapasgi.config import HealthConfig, RoutingConfig
from leapasgi.exceptions import InvalidRequestError
from leapasgi.registry import Registry
from leapasgi.retry import RetryPolicy
from leapasgi.routing import Route
from leapasgi.trail import RoutingTrail

pytestmark = pytest.mark.anyio

SETTINGS = RouteSettings(models=("m",))


def req(**fields: Any) -> ChatCompletionRequest:
    body: dict[str, Any] = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    return ChatCompletionRequest.model_validate({**body, **fields})


def manager(clock: Any = None, **routing: Any) -> ProviderManager:
    routing.setdefault("retry_initial_delay", 0)
    routing.setdefault("retry_max_delay", 0)
    return ProviderManager(
        routing=RoutingConfig(**routing),
        health=HealthConfig(interval=0, failure_threshold=100),
        clock=clock or FakeClock(),
        rng=random.Random(5),
    )


async def ask(m: ProviderManager, *, stream: bool) -> object:
    """A plain call, or a stream up to its first batch."""
    if stream:
        async with m.stream(req(stream=True)) as answer:
            return await answer.next_batch()
    return await m.chat(req())


class Same:
    """A provider that raises the very same error object on every call, and notes the
    deadline each call was given."""

    def __init__(self, error: Exception, *, honors_deadline: bool = False) -> None:
        self.name = "same"
        self.error = error
        self.deadlines: list[Deadline | None] = []
        self._capabilities = Capabilities(honors_deadline=honors_deadline)

    @property
    def capabilities(self) -> Capabilities:
        return self._capabilities

    async def chat(
        self, request: ChatCompletionRequest, *, deadline: Deadline | None = None
    ) -> ChatCompletion:
        self.deadlines.append(deadline)
        raise self.error

    async def stream(
        self, request: ChatCompletionRequest, *, deadline: Deadline | None = None
    ) -> AsyncGenerator[ChunkBatch, None]:
        self.deadlines.append(deadline)
        raise self.error
        yield  # pragma: no cover

    async def list_models(self) -> list[Model]:
        return []

    async def check_health(self) -> None:
        return None

    def secrets(self) -> Iterator[str]:
        return iter(())

    async def aclose(self) -> None:
        return None


@pytest.mark.parametrize("stream", [False, True])
async def test_the_error_a_provider_raised_is_never_changed(stream: bool) -> None:
    error = UpstreamUnavailableError("busy", provider="same", upstream_status=503)
    provider = Same(error)
    async with manager() as m:
        m.register_provider(provider, SETTINGS)
        with pytest.raises(UpstreamUnavailableError) as caught:
            await ask(m, stream=stream)
    ended = caught.value
    # The request ends with a copy that carries its trail; the original is as it was raised.
    assert ended is not error
    assert ended.trail is not None
    assert ended.attempts == ended.trail.tries == 3
    assert ended.retry_after == 5.0  # a 503 without a hint gets the default Retry-After
    assert (error.trail, error.attempts, error.retry_after) == (None, 1, None)
    assert error.message == "busy"
    assert len(provider.deadlines) == 3


async def test_every_call_is_given_the_requests_deadline() -> None:
    clock = FakeClock()
    provider = Same(InvalidRequestError("no", provider="same"))
    async with manager(clock, request_timeout=42.0) as m:
        m.register_provider(provider, SETTINGS)
        with pytest.raises(InvalidRequestError):
            await m.chat(req())
    (deadline,) = provider.deadlines
    assert deadline is not None
    assert deadline.clock is clock
    assert deadline.remaining() == 42.0


async def test_a_provider_that_ignores_its_deadline_is_stopped_at_it() -> None:
    class Slow(MockProvider):
        async def chat(
            self, request: ChatCompletionRequest, *, deadline: Deadline | None = None
        ) -> ChatCompletion:
            await asyncio.Event().wait()  # never answers, whatever the deadline
            raise AssertionError

    async with manager(SystemClock(), request_timeout=0.05) as m:
        m.register_provider(Slow(name="slow", models=["m"]), SETTINGS)
        with pytest.raises(DeadlineExceededError) as caught:
            await m.chat(req())
    assert caught.value.attempts == 1


class EarlyClock(FakeClock):
    """A clock whose sleeps wake a little early, as uvloop's timers do."""

    async def sleep(self, seconds: float) -> None:
        await super().sleep(seconds * 0.99 if seconds > 1e-6 else seconds)


@pytest.mark.parametrize("stream", [False, True])
async def test_a_hold_is_waited_out_on_a_clock_that_wakes_early(stream: bool) -> None:
    clock = EarlyClock()
    provider = MockProvider(name="p", models=["m"], clock=clock)
    provider.fail_always(Fault.status(429, retry_after=2.0))
    async with manager(clock) as m:
        m.register_provider(provider, SETTINGS)
        for _ in range(3):
            with pytest.raises(RateLimitError) as caught:
                await ask(m, stream=stream)
            assert caught.value.attempts == 3
    assert len(provider.requests) == 9


async def test_a_retry_after_over_the_cap_is_noted_in_the_trail_not_in_the_error() -> None:
    provider = MockProvider(name="p", models=["m"])
    provider.fail_always(Fault.status(429, retry_after=9999, message="quota"))
    async with manager() as m:
        m.register_provider(provider, SETTINGS)
        with pytest.raises(RateLimitError) as caught:
            await m.chat(req())
    error = caught.value
    assert error.message == "quota"
    assert error.trail is not None
    (attempt, *_) = error.trail.attempts
    assert attempt.message is not None
    assert "not retried on this provider" in attempt.message
    assert len(provider.requests) == 1


async def test_the_preferred_provider_is_tried_first_then_the_others() -> None:
    a = MockProvider(name="a", models=["m"], reply="from a")
    b = MockProvider(name="b", models=["m"], reply="from b")
    async with manager() as m:
        m.register_provider(a, RouteSettings(models=("m",), priority=0))
        m.register_provider(b, RouteSettings(models=("m",), priority=1, max_retries=0))
        preferred = await m.chat(req(), prefer="b")
        b.inject(Fault.status(503))
        _, trail = await m.chat_with_trail(req())
        handed_over = await m.chat(req(), prefer="b")
    assert preferred.choices[0].message.content == "from b"
    assert [a.provider for a in trail.attempts] == ["a"]
    assert handed_over.choices[0].message.content == "from a"


async def test_a_feature_no_provider_has_is_a_typed_error() -> None:
    async with manager() as m:
        m.register_provider(MockProvider(name="p", models=["m"], features=["streaming"]), SETTINGS)
        with pytest.raises(UnsupportedFeatureError) as caught:
            await m.chat(req(tools=[{"type": "function", "function": {"name": "f"}}]))
    assert caught.value.http_status == 400
    assert caught.value.param == "model"
    assert caught.value.code == "unsupported_feature"


def attempts(registry: Registry, clock: FakeClock, *, max_retries: int = 2) -> RequestAttempts:
    policy = RetryPolicy(max_retries=max_retries, initial_delay=0.5, max_delay=8.0)
    return RequestAttempts(
        [Route("p", "m")],
        registry=registry,
        clock=clock,
        rng=random.Random(1),
        policy=lambda _: policy,
        max_attempts=10,
        deadline=Deadline(clock.monotonic() + 60, clock),
        trail=RoutingTrail(),
    )


def test_each_failure_returns_the_decision_it_leads_to() -> None:
    clock = FakeClock()
    registry = Registry(clock=clock)
    entry = registry.register(MockProvider(name="p", models=["m"]), SETTINGS)
    queue = attempts(registry, clock, max_retries=1)
    route = Route("p", "m")
    busy = UpstreamUnavailableError("busy", provider="p")
    assert queue.record_failure(route, entry, busy, 0.1) is Decision.RETRY
    assert queue.record_failure(route, entry, busy, 0.1) is Decision.FAIL_OVER  # out of retries
    refused = InvalidRequestError("bad", provider="p")
    assert queue.record_failure(route, entry, refused, 0.1) is Decision.FINAL
    over_the_cap = RateLimitError("quota", provider="p", retry_after=3600)
    assert queue.record_failure(route, entry, over_the_cap, 0.1) is Decision.FAIL_OVER
    assert [a.outcome for a in queue.trail.attempts] == [
        "UpstreamUnavailableError",
        "UpstreamUnavailableError",
        "InvalidRequestError",
        "RateLimitError",
    ]


class TickingClock(FakeClock):
    """A clock that moves a microsecond on every read, as a real one does between two reads."""

    def monotonic(self) -> float:
        self.advance(1e-6)
        return super().monotonic()


async def test_a_hold_ending_between_two_reads_of_the_clock_admits_the_provider() -> None:
    # The breaker refuses (held for one more tick), and by the time the hold's end is read it
    # has passed: the provider is taken, not noted as ejected and dropped from the request.
    clock = TickingClock()
    registry = Registry(clock=clock)
    entry = registry.register(MockProvider(name="p", models=["m"]), SETTINGS)
    queue = attempts(registry, clock)
    entry.breaker.hold(1.5e-6)
    assert await queue.next() == Route("p", "m")
    assert [a.outcome for a in queue.trail.attempts] == []
