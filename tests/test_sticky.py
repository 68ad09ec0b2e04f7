"""Sticky routing: what makes one session, and a session staying on the provider that served
it while that one is healthy, moving when it is ejected."""

from __future__ import annotations

import random
from typing import Any

import pytest

from leapasgi.clock import FakeClock
from leapasgi.config import AliasConfig, HealthConfig, RoutingConfig
from leapasgi.manager import ProviderManager
from leapasgi.native import NativeCall, ProtocolRequest, WireProtocol
from leapasgi.outcome import Outcome
from leapasgi.providers.mock import Fault, MockProvider
from leapasgi.registry import RouteSettings
from leapasgi.sessions import request_session, session_header
from leapasgi.types import ChatCompletionRequest

pytestmark = pytest.mark.anyio


def req(*messages: tuple[str, str], **fields: Any) -> ChatCompletionRequest:
    body: dict[str, Any] = {
        "model": "m",
        "messages": [{"role": role, "content": text} for role, text in messages]
        or [{"role": "user", "content": "hi"}],
    }
    body.update(fields)
    return ChatCompletionRequest.model_validate(body)


def native(protocol: WireProtocol, body: dict[str, Any]) -> ProtocolRequest:
    return ProtocolRequest(NativeCall(protocol, body), lambda: req())


def manager(clock: FakeClock, *names: str, **routing: Any) -> ProviderManager:
    m = ProviderManager(
        routing=RoutingConfig(**routing),
        health=HealthConfig(interval=0, failure_threshold=1),
        clock=clock,
        rng=random.Random(7),
    )
    for name in names:
        m.register_provider(
            MockProvider(name=name, models=["m"], reply=name, clock=clock),
            RouteSettings(models=("m",)),
        )
    return m


async def served_by(m: ProviderManager, request: ChatCompletionRequest, session: str | None) -> str:
    outcome = Outcome()
    outcome.session = session
    completion = await m.chat(request, outcome=outcome)
    return completion.choices[0].message.content or ""


def test_a_conversation_is_one_session_turn_after_turn() -> None:
    first = req(("system", "be brief"), ("user", "plan a trip"))
    later = req(
        ("system", "be brief"),
        ("user", "plan a trip"),
        ("assistant", "where to?"),
        ("user", "Lisbon"),
    )
    other = req(("system", "be brief"), ("user", "write a poem"))

    assert request_session(first) == request_session(later)
    assert request_session(first) != request_session(other)
    assert request_session(req(user="u-1")) == request_session(req(("user", "x"), user="u-1"))


def test_other_protocols_name_their_sessions_too() -> None:
    messages = {"system": "s", "messages": [{"role": "user", "content": "hi"}]}
    turn2 = {**messages, "messages": [*messages["messages"], {"role": "assistant", "content": "y"}]}
    assert request_session(native(WireProtocol.MESSAGES, messages)) == request_session(
        native(WireProtocol.MESSAGES, turn2)
    )
    claude = {**messages, "metadata": {"user_id": "user_abc_session_1"}}
    assert request_session(native(WireProtocol.MESSAGES, claude)) != request_session(
        native(WireProtocol.MESSAGES, messages)
    )
    # A Responses chain is rebuilt whole from previous_response_id: its first item stays.
    chain = {"instructions": "i", "input": [{"role": "user", "content": "hi"}]}
    longer = {"instructions": "i", "input": [*chain["input"], {"role": "user", "content": "more"}]}
    assert request_session(native(WireProtocol.RESPONSES, chain)) == request_session(
        native(WireProtocol.RESPONSES, longer)
    )
    assert request_session(native(WireProtocol.EMBEDDINGS, {"input": "x"})) is None


def test_a_session_header_becomes_a_digest_never_the_text() -> None:
    scope = {"headers": [(b"x-claude-code-session-id", b"abc\r\nevil")]}

    key = session_header(scope, (b"x-session-id", b"x-claude-code-session-id"))

    assert key is not None
    assert "abc" not in key
    assert key.isalnum()
    assert session_header({"headers": []}, (b"x-session-id",)) is None


async def test_a_session_stays_on_its_provider_under_round_robin() -> None:
    clock = FakeClock()
    m = manager(clock, "a", "b", "c", strategy="round_robin", sticky=True)

    sessions = {s: {await served_by(m, req(), s) for _ in range(4)} for s in ("s1", "s2", "s3")}

    assert all(len(providers) == 1 for providers in sessions.values())
    assert len(set().union(*sessions.values())) > 1  # sessions still spread


async def test_sticky_is_off_by_default() -> None:
    clock = FakeClock()
    m = manager(clock, "a", "b", "c", strategy="round_robin")

    assert {await served_by(m, req(), "s1") for _ in range(6)} == {"a", "b", "c"}


async def test_a_session_moves_when_its_provider_is_ejected_and_stays_moved() -> None:
    clock = FakeClock()
    m = manager(clock, "a", "b", strategy="round_robin", sticky=True)
    home = await served_by(m, req(), "s1")
    provider = m.registry.get(home).provider
    assert isinstance(provider, MockProvider)
    provider.fail_always(Fault.status(500))

    moved = await served_by(m, req(), "s1")  # fails over, and the session follows
    provider.fail_always(None)
    after = {await served_by(m, req(), "s1") for _ in range(4)}

    assert moved != home
    assert after == {moved}


async def test_the_body_names_the_session_without_a_header() -> None:
    clock = FakeClock()
    m = manager(clock, "a", "b", "c", strategy="weighted", sticky=True)
    conversation = [("system", "s"), ("user", "first")]

    providers = set()
    for turn in range(5):
        more = [("assistant", "ok"), ("user", f"turn {turn}")] * turn
        providers.add(await served_by(m, req(*conversation, *more), None))

    assert len(providers) == 1


async def test_an_alias_switches_sticky_routing_on_for_itself() -> None:
    clock = FakeClock()
    m = manager(
        clock,
        "a",
        "b",
        strategy="round_robin",
        aliases={"fast": AliasConfig(targets=["a/m", "b/m"], strategy="round_robin", sticky=True)},
    )

    via_alias = {await served_by(m, req(model="fast"), "s1") for _ in range(4)}
    direct = {await served_by(m, req(), "s1") for _ in range(4)}

    assert len(via_alias) == 1
    assert direct == {"a", "b"}
