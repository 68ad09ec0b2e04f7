"""Lifetimes: a replaced or removed provider is closed once its requests have finished, and a
stream's slot comes back by its end, its failure, its closing or its deadline, never by the
garbage collector."""

from __future__ import annotations

import asyncio
import gc
import random
from collections.abc import Iterator
from typing import Any

import pytest

from leapasgi import (
    ChatCompletion,
    ChatCompletionRequest,
    Deadline,
    FakeClock,
    Fault,
    MockProvider,
    ProviderBusyError,
    ProviderManager,
    RouteSettings,
    StreamInterruptedError,
)
from leapasgi.config import HealthConfig, RoutingConfig
from tests.turns import until

pytestmark = pytest.mark.anyio

TIMEOUT = 30.0


class Gated(MockProvider):
    """A mock whose answers wait for ``gate``."""

    def __init__(self, name: str = "p", clock: FakeClock | None = None) -> None:
        super().__init__(name=name, models=["m"], reply=f"from {name}", clock=clock)
        self.gate = asyncio.Event()

    async def chat(
        self, request: ChatCompletionRequest, *, deadline: Deadline | None = None
    ) -> ChatCompletion:
        await self.gate.wait()
        return await super().chat(request, deadline=deadline)


def req(**fields: Any) -> ChatCompletionRequest:
    body: dict[str, Any] = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    return ChatCompletionRequest.model_validate({**body, **fields})


def manager(clock: FakeClock | None = None) -> ProviderManager:
    return ProviderManager(
        routing=RoutingConfig(request_timeout=TIMEOUT, retry_initial_delay=0, retry_max_delay=0),
        health=HealthConfig(interval=0),
        clock=clock or FakeClock(),
        rng=random.Random(1),
    )


SETTINGS = RouteSettings(models=("m",))


@pytest.fixture
def no_gc() -> Iterator[None]:
    """The garbage collector off: nothing may depend on it."""
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


async def test_a_replaced_provider_is_closed_once_its_requests_finish() -> None:
    old, new = Gated("p"), MockProvider(name="p", models=["m"], reply="new")
    async with manager() as m:
        m.register_provider(old, SETTINGS)
        in_flight = asyncio.create_task(m.chat(req()))
        await until(lambda: m.registry.get("p").stats.in_flight == 1)

        m.register_provider(new, SETTINGS)
        replied = await m.chat(req())
        await asyncio.sleep(0)
        closed_while_busy = old.closed
        old.gate.set()
        answered = await in_flight
        await until(lambda: old.closed)
        new_closed = new.closed
    assert replied.choices[0].message.content == "new"
    assert not closed_while_busy
    assert answered.choices[0].message.content == "from p"  # the old one finished its request
    assert not new_closed


async def test_an_idle_replaced_or_removed_provider_is_closed_at_once() -> None:
    first, second = MockProvider(name="p", models=["m"]), MockProvider(name="p", models=["m"])
    async with manager() as m:
        m.register_provider(first, SETTINGS)
        m.register_provider(second, SETTINGS)
        await until(lambda: first.closed)
        await m.remove("p")
        await until(lambda: second.closed)
        assert "p" not in m.registry


async def test_a_provider_replaced_before_the_loop_runs_is_closed_with_the_manager() -> None:
    m = manager()
    first, second = MockProvider(name="p", models=["m"]), MockProvider(name="p", models=["m"])
    m.register_provider(first, SETTINGS)
    m.register_provider(second, SETTINGS)
    await m.aclose()
    assert first.closed
    assert second.closed


async def test_registering_the_same_provider_again_keeps_it_open() -> None:
    provider = MockProvider(name="p", models=["m"])
    async with manager() as m:
        m.register_provider(provider, SETTINGS)
        m.register_provider(provider, RouteSettings(models=("m",), priority=2))
        await asyncio.sleep(0)
        assert not provider.closed
        assert (await m.chat(req())).choices


@pytest.mark.usefixtures("no_gc")
async def test_a_stream_dropped_unclosed_gives_its_slot_back_at_its_deadline() -> None:
    clock = FakeClock()
    provider = MockProvider(name="p", models=["m"], reply="one two three", chunks=3, clock=clock)
    async with manager(clock) as m:
        m.register_provider(provider, RouteSettings(models=("m",), max_in_flight=1))
        dropped = m.stream(req(stream=True))
        await dropped.next_batch()
        del dropped  # neither read to its end nor closed
        with pytest.raises(ProviderBusyError):
            await m.chat(req())
        clock.advance(TIMEOUT)  # the dropped stream's deadline passes
        answered = await m.chat(req())
        snapshot = m.registry.snapshot("p")
    assert answered.choices
    assert snapshot.in_flight == 0
    assert snapshot.errors == {}  # an abandoned stream is not the provider's failure


@pytest.mark.usefixtures("no_gc")
@pytest.mark.parametrize("how", ["end", "error", "aclose", "async with"])
async def test_a_stream_gives_its_slot_back_when_it_ends(how: str) -> None:
    clock = FakeClock()
    provider = MockProvider(name="p", models=["m"], reply="one two three", chunks=3, clock=clock)
    async with manager(clock) as m:
        m.register_provider(provider, RouteSettings(models=("m",), max_in_flight=1))
        stream = m.stream(req(stream=True))
        if how == "end":
            assert [chunk async for chunk in stream]
        elif how == "error":
            provider.inject(Fault.cut(after_chunks=1))
            with pytest.raises(StreamInterruptedError):
                async for _ in stream:
                    pass
        elif how == "aclose":
            await stream.next_batch()
            await stream.aclose()
        else:
            async with stream:
                await stream.next_batch()
        in_flight = m.registry.snapshot("p").in_flight
        answered = await m.chat(req())
    assert in_flight == 0
    assert answered.choices
