"""Parameter rules in the loop: a provider that cannot take a request's parameter as sent is
skipped (noted in the trail), a request no provider can serve is refused before any call,
and what the rules changed reaches the provider and the trail, once per provider."""

from __future__ import annotations

import random
from typing import Any

import pytest

from leapasgi import (
    ChatCompletionRequest,
    FakeClock,
    Fault,
    MockProvider,
    Outcome,
    ParamRules,
    ProviderManager,
    RouteSettings,
    UnsupportedParameterError,
)
from leapasgi.config import HealthConfig, RoutingConfig
from leapasgi.native import NativeCall, ProtocolRequest, WireProtocol

pytestmark = pytest.mark.anyio

ONE_CHOICE = ParamRules(max={"n": 1}, unsupported=["logprobs"])
REASONING = ParamRules(rename={"max_tokens": "max_completion_tokens"}, drop=["temperature"])


def req(**fields: Any) -> ChatCompletionRequest:
    body: dict[str, Any] = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    return ChatCompletionRequest.model_validate({**body, **fields})


def manager(*providers: MockProvider) -> ProviderManager:
    m = ProviderManager(
        routing=RoutingConfig(retry_initial_delay=0, retry_max_delay=0),
        health=HealthConfig(interval=0, failure_threshold=100),
        clock=FakeClock(),
        rng=random.Random(5),
    )
    for priority, provider in enumerate(providers):
        m.register_provider(provider, RouteSettings(models=("m",), priority=priority))
    return m


def mock(name: str, *rules: ParamRules) -> MockProvider:
    return MockProvider(name=name, models=["m"], params=rules)


async def test_a_provider_that_cannot_take_the_parameter_is_skipped_and_noted() -> None:
    groq, other = mock("groq", ONE_CHOICE), mock("other")
    m = manager(groq, other)
    outcome = Outcome()
    completion = await m.chat(req(n=3), outcome=outcome)
    assert len(completion.choices) == 3
    assert groq.requests == []
    assert [r.n for r in other.requests] == [3]
    assert outcome.trail.notes == ["groq: skipped, it takes n up to 1"]
    # A request it can serve goes to it, as preferred.
    await m.chat(req(n=1))
    assert len(groq.requests) == 1


async def test_a_request_no_provider_can_serve_is_a_400_before_any_call() -> None:
    first, second = mock("groq", ONE_CHOICE), mock("ollama", ParamRules(max={"n": 1}))
    m = manager(first, second)
    for ask in (m.chat(req(n=2)), anext(aiter(m.stream(req(n=2, stream=True))))):
        with pytest.raises(UnsupportedParameterError) as caught:
            await ask
        error = caught.value
        assert (error.status_code, error.param, error.code) == (400, "n", "unsupported_value")
        assert error.message == (
            "No provider serving `m` can take this request's `n` as sent: "
            "groq takes n up to 1; ollama takes n up to 1"
        )
    with pytest.raises(UnsupportedParameterError) as caught:
        await m.chat(req(logprobs=True, n=2))
    assert caught.value.param == "logprobs"
    assert caught.value.code == "unsupported_parameter"
    assert caught.value.message.endswith(
        "this request as sent: groq does not take logprobs; ollama takes n up to 1"
    )
    assert first.requests == second.requests == []


async def test_the_provider_gets_the_adapted_request_and_the_trail_says_what_changed() -> None:
    reasoning = mock("u1", REASONING)
    m = manager(reasoning)
    asked = req(max_tokens=50, temperature=0.3)
    completion, trail = await m.chat_with_trail(asked)
    assert completion.choices[0].message.content
    [sent] = reasoning.requests
    assert sent.to_wire() == {
        "model": "m",
        "messages": [{"role": "user", "content": "hi"}],
        "max_completion_tokens": 50,
    }
    assert trail.notes == ["u1: renamed max_tokens -> max_completion_tokens, dropped temperature"]
    # The client's request is as it was (the cache key, hooks and logs read it).
    assert (asked.max_tokens, asked.temperature) == (50, 0.3)


async def test_a_retried_attempt_notes_the_change_once_and_a_failover_notes_its_own() -> None:
    first = mock("u1", REASONING)
    first.inject(Fault.status(500), Fault.status(500))
    second = mock("u2", ParamRules(drop=["temperature"]))
    m = manager(first, second)
    _, trail = await m.chat_with_trail(req(max_tokens=5, temperature=0.5))
    assert trail.notes == [
        "u1: renamed max_tokens -> max_completion_tokens, dropped temperature",
        "u2: dropped temperature",
    ]
    assert second.requests[0].max_tokens == 5


async def test_a_stream_is_adapted_too() -> None:
    reasoning = mock("u1", REASONING)
    m = manager(reasoning)
    outcome = Outcome()
    async for _ in m.stream(req(max_tokens=5, temperature=0.2, stream=True), outcome=outcome):
        pass
    assert reasoning.requests[0].max_completion_tokens == 5
    assert reasoning.requests[0].temperature is None
    assert outcome.trail.notes == [
        "u1: renamed max_tokens -> max_completion_tokens, dropped temperature"
    ]


async def test_a_translated_request_keeps_its_own_notes_beside_the_skips() -> None:
    skipped, serving = mock("groq", ParamRules(unsupported=["stop"])), mock("other")
    m = manager(skipped, serving)
    body = {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
    call = NativeCall(WireProtocol.MESSAGES, body, {}, stream=False)

    def translate(notes: list[str]) -> ChatCompletionRequest:
        notes.append("dropped cache_control")
        return req(stop=["END"])

    outcome = Outcome()
    await m.exchange(ProtocolRequest(call, translate), outcome=outcome)
    assert skipped.requests == []
    assert serving.requests[0].stop == ["END"]
    assert outcome.trail.notes == ["groq: skipped, it does not take stop", "dropped cache_control"]


async def test_no_rules_no_change() -> None:
    plain = mock("plain")
    m = manager(plain)
    asked = req(max_tokens=5, temperature=0.2)
    _, trail = await m.chat_with_trail(asked)
    assert plain.requests == [asked]
    assert trail.notes == []
