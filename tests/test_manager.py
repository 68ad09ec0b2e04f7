from __future__ import annotations

import asyncio
import random
from collections.abc import Iterable
from typing import Any

import pytest

from leapasgi.clock import Clock, FakeClock, SystemClock
from leapasgi.config import AliasConfig, HealthConfig, RoutingConfig
from leapasgi.exceptions import (
    InvalidRequestError,
    LeapError,
    ModelNotFoundError,
    NoProviderAvailableError,
    RateLimitError,
    StreamInterruptedError,
)
from leapasgi.features import Feature
from leapasgi.manager import ProviderManager
from leapasgi.providers.mock import Fault, MockProvider
from leapasgi.registry import ProviderStatus, RouteSettings
from leapasgi.types import ChatCompletionChunk, ChatCompletionRequest

pytestmark = pytest.mark.anyio

RETRYABLE = [408, 409, 429, 500, 502, 503, 504]
CLIENT_ERRORS = [400, 401, 403, 404, 413, 422]


def req(model: str = "m", **fields: Any) -> ChatCompletionRequest:
    body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
    body.update(fields)
    return ChatCompletionRequest.model_validate(body)


def mock(
    name: str, clock: Clock, *, models: Iterable[str] = ("m",), **options: Any
) -> MockProvider:
    return MockProvider(
        name=name, models=list(models), reply=f"from {name}", clock=clock, **options
    )


def manager(
    *providers: MockProvider,
    clock: Clock,
    priorities: Iterable[int] | None = None,
    health: HealthConfig | None = None,
    **routing: Any,
) -> ProviderManager:
    m = ProviderManager(
        routing=RoutingConfig(**routing),
        health=health or HealthConfig(interval=0),
        clock=clock,
        rng=random.Random(7),
    )
    for provider, priority in zip(providers, priorities or range(len(providers)), strict=True):
        m.register_provider(
            provider, RouteSettings(priority=priority, models=tuple(provider.models))
        )
    return m


async def collect_into(stream: Any, received: list[ChatCompletionChunk]) -> None:
    async for chunk in stream:
        received.append(chunk)


async def text(stream: Any) -> str:
    parts = []
    async for chunk in stream:
        if chunk.choices:
            parts.append(chunk.choices[0].delta.content or "")
    return "".join(parts)


@pytest.mark.parametrize("status", RETRYABLE)
async def test_retryable_failures_fail_over_invisibly(status: int) -> None:
    clock = FakeClock()
    a, b = mock("a", clock), mock("b", clock)
    a.inject(Fault.status(status, retry_after=0.5))
    async with manager(a, b, clock=clock) as m:
        completion, trail = await m.chat_with_trail(req())
    assert completion.choices[0].message.content == "from b"
    assert [(t.provider, t.status) for t in trail.attempts] == [("a", status), ("b", None)]
    assert trail.served_by is not None
    assert trail.served_by.provider == "b"
    assert m.registry.snapshot("a").errors


@pytest.mark.parametrize("status", CLIENT_ERRORS)
async def test_client_errors_go_back_unchanged_without_failover(status: int) -> None:
    clock = FakeClock()
    a, b = mock("a", clock), mock("b", clock)
    a.inject(Fault.status(status, message=f"upstream words {status}"))
    async with manager(a, b, clock=clock) as m:
        with pytest.raises(LeapError) as caught:
            await m.chat(req())
    assert caught.value.http_status == status
    assert caught.value.message == f"upstream words {status}"
    assert caught.value.trail is not None
    assert caught.value.trail.tries == 1
    assert b.requests == []
    assert m.registry.snapshot("a").consecutive_errors == 0


FAULTS = [
    Fault.status(500),
    Fault.status(503, retry_after=1),
    Fault.status(429, retry_after=0.2),
    Fault.connect_error(),
    Fault.cut(0),
    Fault.malformed(0),
    Fault.delay(100),
]


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("stream", [False, True])
async def test_attempts_never_exceed_the_budget_whatever_fails(seed: int, stream: bool) -> None:
    clock = FakeClock()
    rng = random.Random(seed)
    providers = [mock(n, clock, timeouts=None) for n in "abc"]
    for provider in providers:
        provider.inject(*(rng.choice(FAULTS) for _ in range(20)))
    async with manager(*providers, clock=clock, max_attempts=4) as m:
        call = text(m.stream(req(stream=True))) if stream else m.chat(req())
        with pytest.raises(LeapError) as caught:
            await call
    sent = sum(len(p.requests) for p in providers)
    assert sent <= 4
    assert caught.value.attempts == sent


async def test_retries_and_backoff_stay_inside_the_deadline() -> None:
    clock = FakeClock()
    a = mock("a", clock)
    a.fail_always(Fault.status(503))
    async with manager(a, clock=clock, max_attempts=10, request_timeout=3.0) as m:
        with pytest.raises(LeapError):
            await m.chat(req())
    assert sum(clock.sleeps) < 3.0
    assert len(a.requests) <= 3  # its own max_retries (2) caps it


async def test_a_lone_provider_is_retried_after_backoff() -> None:
    clock = FakeClock()
    a = mock("a", clock)
    a.inject(Fault.status(503))
    async with manager(a, clock=clock) as m:
        completion = await m.chat(req())
    assert completion.choices[0].message.content == "from a"
    assert len(a.requests) == 2
    assert len(clock.sleeps) == 1
    assert 0 <= clock.sleeps[0] <= 0.5


async def test_retry_after_is_waited_for_on_a_lone_provider() -> None:
    clock = FakeClock()
    a = mock("a", clock)
    a.inject(Fault.status(429, retry_after=2))
    async with manager(a, clock=clock) as m:
        await m.chat(req())
    assert clock.sleeps == [2]


async def test_a_long_retry_after_moves_on_instead_of_waiting() -> None:
    clock = FakeClock()
    a, b = mock("a", clock), mock("b", clock)
    a.fail_always(Fault.status(429, retry_after=9999))
    async with manager(a, b, clock=clock) as m:
        completion = await m.chat(req())
    assert completion.choices[0].message.content == "from b"
    assert clock.sleeps == []


async def test_when_everything_is_rate_limited_the_client_gets_the_smallest_hint() -> None:
    clock = FakeClock()
    a, b = mock("a", clock), mock("b", clock)
    a.fail_always(Fault.status(429, retry_after=120))
    b.fail_always(Fault.status(429, retry_after=90))
    async with manager(a, b, clock=clock) as m:
        with pytest.raises(RateLimitError) as caught:
            await m.chat(req())
    assert caught.value.retry_after == 90


async def test_stream_failover_before_the_first_chunk() -> None:
    clock = FakeClock()
    a, b = mock("a", clock), mock("b", clock)
    a.inject(Fault.cut(0))
    async with manager(a, b, clock=clock) as m:
        stream = m.stream(req(stream=True))
        assert await text(stream) == "from b"
    assert [t.outcome for t in stream.trail.attempts] == ["StreamInterruptedError", "ok"]


async def test_stream_failure_after_the_first_chunk_surfaces_once() -> None:
    clock = FakeClock()
    a, b = mock("a", clock, chunks=4), mock("b", clock)
    a.inject(Fault.cut(2))
    received: list[ChatCompletionChunk] = []
    async with manager(a, b, clock=clock) as m:
        with pytest.raises(StreamInterruptedError) as caught:
            await collect_into(m.stream(req(stream=True)), received)
        snapshot = m.registry.snapshot("a")
    assert len(received) == 2
    assert b.requests == []
    assert caught.value.trail is not None
    assert caught.value.trail.attempts[-1].outcome == "StreamInterruptedError"
    assert snapshot.errors == {"StreamInterruptedError": 1}
    assert snapshot.in_flight == 0


async def test_a_slow_first_token_fails_over() -> None:
    clock = SystemClock()
    a, b = mock("a", clock), mock("b", clock)
    a.inject(Fault.delay(30))
    async with manager(a, b, clock=clock, first_token_timeout=0.05) as m:
        stream = m.stream(req(stream=True))
        assert await text(stream) == "from b"
    assert stream.trail.attempts[0].outcome == "FirstByteTimeoutError"


async def test_a_failing_provider_is_ejected_then_probed_once_and_restored() -> None:
    clock = FakeClock()
    a, b = mock("a", clock), mock("b", clock)
    a.fail_always(Fault.status(500))
    async with manager(a, b, clock=clock, max_attempts=2) as m:
        for _ in range(5):
            await m.chat(req())
        assert m.registry.get("a").status is ProviderStatus.UNHEALTHY
        before = len(a.requests)
        for _ in range(10):
            await m.chat(req())
        assert len(a.requests) == before  # ejected: skipped while b serves
        a.fail_always(None)
        a.inject(Fault.delay(0.01))  # the probe yields, so the others run while it is out
        clock.advance(31)
        results = await asyncio.gather(*(m.chat(req()) for _ in range(5)))
        assert len(a.requests) == before + 1  # exactly one probe
        assert m.registry.get("a").status is ProviderStatus.ACTIVE
        assert {r.choices[0].message.content for r in results} == {"from a", "from b"}
        causes = [t.cause for t in m.registry.snapshot("a").transitions]
    assert any("ejected after 5 consecutive failures" in c for c in causes)


async def test_panic_mode_tries_the_least_recently_ejected_provider() -> None:
    clock = FakeClock()
    a, b = mock("a", clock), mock("b", clock)
    a.fail_always(Fault.status(500))
    b.fail_always(Fault.status(500))
    async with manager(a, b, clock=clock) as m:
        for _ in range(5):
            with pytest.raises(LeapError):
                await m.chat(req())
            clock.advance(0.001)
        assert {e.status for e in m.registry} == {ProviderStatus.UNHEALTHY}
        first_ejected = min(m.registry, key=lambda e: e.breaker.ejected_at or 0).name
        a.fail_always(None)
        b.fail_always(None)
        completion, trail = await m.chat_with_trail(req())
    assert trail.served_by is not None
    assert trail.served_by.provider == first_ejected
    assert completion.choices[0].message.content == f"from {first_ejected}"


async def test_maintenance_drains_in_flight_requests() -> None:
    clock = FakeClock()
    a, b = mock("a", clock, chunks=3), mock("b", clock)
    async with manager(a, b, clock=clock) as m:
        stream = m.stream(req(stream=True))
        first = await anext(stream)
        m.registry.set_status("a", "maintenance", cause="deploy")
        assert not m.registry.drained("a")
        other = await m.chat(req())
        rest = [c async for c in stream]
        assert m.registry.drained("a")
    assert other.choices[0].message.content == "from b"
    assert first.choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in rest if c.choices) == "from a"


async def test_aliases_explicit_names_and_upstream_model_names() -> None:
    clock = FakeClock()
    a = mock("a", clock, models=["small"])
    b = mock("b", clock, models=["large"])
    aliases = {"fast": AliasConfig(targets=["b/large", "a/small"])}
    async with manager(a, b, clock=clock, aliases=aliases) as m:
        via_alias = await m.chat(req("fast"))
        explicit = await m.chat(req("a/small"))
        plain = await m.chat(req("large"))
        models = {model.id: model.owned_by for model in await m.list_models()}
    assert via_alias.choices[0].message.content == "from b"
    assert b.requests[0].model == "large"
    assert explicit.choices[0].message.content == "from a"
    assert a.requests[0].model == "small"
    assert plain.choices[0].message.content == "from b"
    assert models == {"fast": "b,a", "large": "b", "small": "a"}


async def test_requests_go_only_to_providers_with_the_features_they_need() -> None:
    clock = FakeClock()
    plain = mock("plain", clock, features=[Feature.STREAMING, Feature.SYSTEM_MESSAGES])
    tools = mock("tools", clock)
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    async with manager(plain, tools, clock=clock) as m:
        completion = await m.chat(req(tools=[tool], tool_choice="required"))
        assert completion.choices[0].message.tool_calls is not None
        assert plain.requests == []
        image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
        vision = req(messages=[{"role": "user", "content": [image]}])
        await m.chat(vision)
        m.registry.remove("tools")
        with pytest.raises(InvalidRequestError, match="tools"):
            await m.chat(req(tools=[tool]))


async def test_an_unknown_model_is_a_404_that_names_only_the_model() -> None:
    clock = FakeClock()
    async with manager(mock("a", clock), clock=clock) as m:
        with pytest.raises(ModelNotFoundError) as caught:
            await m.chat(req("gpt-9"))
    assert caught.value.http_status == 404
    assert caught.value.to_body()["error"]["code"] == "model_not_found"
    assert "gpt-9" in caught.value.message
    assert "a" not in caught.value.message.replace("gpt-9", "").split()


async def test_nothing_available_is_a_503_with_retry_after() -> None:
    clock = FakeClock()
    a = mock("a", clock)
    async with manager(a, clock=clock) as m:
        m.registry.set_status("a", "inactive", cause="test")
        with pytest.raises(NoProviderAvailableError) as caught:
            await m.chat(req())
    assert caught.value.http_status == 503
    assert caught.value.retry_after is not None
    assert a.requests == []


async def test_round_robin_and_weighted_spread_requests() -> None:
    clock = FakeClock()
    providers = [mock(n, clock) for n in "abc"]
    async with manager(*providers, clock=clock, strategy="round_robin") as m:
        for _ in range(30):
            await m.chat(req())
    assert [len(p.requests) for p in providers] == [10, 10, 10]


async def test_least_latency_avoids_a_provider_that_fails_fast() -> None:
    clock = FakeClock()
    fast_fail, good = mock("fast_fail", clock), mock("good", clock, chunk_delay=0.0)
    fast_fail.fail_always(Fault.status(503))
    async with manager(fast_fail, good, clock=clock, strategy="least_latency") as m:
        for _ in range(200):
            await m.chat(req())
    assert len(fast_fail.requests) <= 10


async def test_the_health_check_is_free_and_feeds_the_breaker() -> None:
    clock = FakeClock()
    a = mock("a", clock)
    async with manager(a, clock=clock) as m:
        a.fail_always(Fault.status(503))
        results = await m.check_health()
        assert [(r.provider, r.ok) for r in results] == [("a", False)]
        assert m.registry.get("a").status is ProviderStatus.UNHEALTHY
        a.fail_always(None)
        assert [r.ok for r in await m.check_health("a")] == [True]
        assert m.registry.get("a").status is ProviderStatus.ACTIVE
    assert a.requests == []  # checks never send a completion


async def test_one_health_worker_per_manager_and_it_stops() -> None:
    clock = SystemClock()
    a = mock("a", clock)
    checks = 0
    original = a.check_health

    async def counting() -> None:
        nonlocal checks
        checks += 1
        await original()

    a.check_health = counting  # type: ignore[method-assign]
    m = manager(a, clock=clock, health=HealthConfig(interval=0.01))
    await asyncio.gather(m.start(), m.start(), m.start())
    tasks = [t for t in asyncio.all_tasks() if t.get_name() == "leapasgi-health"]
    assert len(tasks) == 1
    for _ in range(100):
        if checks >= 3:
            break
        await asyncio.sleep(0.01)
    await m.aclose()
    assert checks >= 3
    assert tasks[0].done()


async def test_an_alias_can_have_its_own_strategy() -> None:
    clock = FakeClock()
    providers = [mock(n, clock) for n in "abc"]
    aliases = {"spread": AliasConfig(targets=["a/m", "b/m", "c/m"], strategy="round_robin")}
    async with manager(*providers, clock=clock, aliases=aliases) as m:
        for _ in range(6):
            await m.chat(req("spread"))
        for _ in range(3):
            await m.chat(req("m"))  # the global strategy (priority) still applies to plain names
    assert [len(p.requests) for p in providers] == [5, 2, 2]


async def test_closing_a_stream_early_frees_its_slot() -> None:
    clock = FakeClock()
    a = mock("a", clock, chunks=10)
    async with manager(a, clock=clock) as m:
        stream = m.stream(req(stream=True))
        await anext(stream)
        await anext(stream)
        assert m.registry.snapshot("a").in_flight == 1
        await stream.aclose()
        snapshot = m.registry.snapshot("a")
    assert snapshot.in_flight == 0
    assert snapshot.errors == {}


async def test_an_empty_stream_counts_as_a_failure_and_fails_over() -> None:
    clock = FakeClock()

    class Empty(MockProvider):
        async def stream(self, request: ChatCompletionRequest, *, deadline: Any = None) -> Any:
            self.requests.append(request)
            for _ in ():
                yield

    a, b = Empty(name="a", models=["m"], clock=clock), mock("b", clock)
    async with manager(a, b, clock=clock) as m:
        assert await text(m.stream(req(stream=True))) == "from b"
