"""Other protocols through the one dispatcher: native pass-through to providers that speak the
protocol, translation through chat for the rest, failover before content either way."""

from __future__ import annotations

import json
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
    FakeClock,
    MockProvider,
    Model,
    ProviderManager,
    RateLimitError,
    RouteSettings,
)
from leapasgi.config import HealthConfig, RoutingConfig
from leapasgi.exceptions import ConfigurationError, InvalidRequestError, UnsupportedFeatureError
from leapasgi.native import (
    EventBatch,
    NativeCall,
    NativeEvent,
    NativeReply,
    ProtocolRequest,
    WireProtocol,
)
from leapasgi.outcome import Outcome
from leapasgi.types import ChatCompletionChunk

pytestmark = pytest.mark.anyio

SETTINGS = RouteSettings(models=("m",))
MESSAGES = WireProtocol.MESSAGES


def manager() -> ProviderManager:
    return ProviderManager(
        routing=RoutingConfig(retry_initial_delay=0, retry_max_delay=0),
        health=HealthConfig(interval=0, failure_threshold=100),
        clock=FakeClock(),
        rng=random.Random(5),
    )


def chat_form() -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate(
        {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    )


def protocol_request(*, stream: bool = False) -> ProtocolRequest:
    body = {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
    call = NativeCall(MESSAGES, body, {"anthropic-version": "2023-06-01"}, stream=stream)

    def translate(notes: list[str]) -> ChatCompletionRequest:
        notes.append("dropped cache_control")
        chat = chat_form()
        return chat.model_copy(update={"stream": True}) if stream else chat

    return ProtocolRequest(call, translate)


class Native:
    """A provider speaking Messages natively, recording each call; ``fail`` raises first."""

    def __init__(self, name: str, *, fail: Exception | None = None) -> None:
        self.name = name
        self.fail = fail
        self.calls: list[NativeCall] = []
        self._capabilities = Capabilities(
            protocols=frozenset({WireProtocol.CHAT_COMPLETIONS, MESSAGES})
        )

    @property
    def capabilities(self) -> Capabilities:
        return self._capabilities

    async def send(self, call: NativeCall, *, deadline: Deadline | None = None) -> NativeReply:
        self.calls.append(call)
        if self.fail is not None:
            raise self.fail
        data = {"id": "msg_1", "usage": {"input_tokens": 2, "output_tokens": 3}}
        return NativeReply(data, json.dumps(data).encode(), usage=(2, 3, 0))

    async def open(
        self, call: NativeCall, *, deadline: Deadline | None = None
    ) -> AsyncGenerator[EventBatch, None]:
        self.calls.append(call)
        if self.fail is not None:
            raise self.fail
        event = NativeEvent("message_start", {"type": "message_start"}, b"{}")
        yield EventBatch([event], usage=(2, 0, 0))

    async def chat(
        self, request: ChatCompletionRequest, *, deadline: Deadline | None = None
    ) -> ChatCompletion:
        raise AssertionError("a native provider is never sent the chat form")

    async def stream(
        self, request: ChatCompletionRequest, *, deadline: Deadline | None = None
    ) -> AsyncGenerator[ChunkBatch, None]:
        raise AssertionError("a native provider is never sent the chat form")
        yield  # pragma: no cover

    async def list_models(self) -> list[Model]:
        return []

    async def check_health(self) -> None:
        return None

    def secrets(self) -> Iterator[str]:
        return iter(())

    async def aclose(self) -> None:
        return None


class RoleThenQuota(MockProvider):
    """Streams a role-only chunk, then fails with a quota error: no content came."""

    async def stream(
        self, request: ChatCompletionRequest, *, deadline: Deadline | None = None
    ) -> AsyncGenerator[ChunkBatch, None]:
        role: Any = {"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "m"}
        role["choices"] = [{"index": 0, "delta": {"role": "assistant", "content": ""}}]
        yield ChunkBatch([ChatCompletionChunk.model_validate(role)])
        raise RateLimitError("quota", provider=self.name)


async def test_a_native_provider_gets_the_clients_body_and_headers_with_its_model() -> None:
    m = manager()
    native = Native("native")
    m.register_provider(native, RouteSettings(models=("m",)))
    outcome = Outcome()
    answer = await m.exchange(protocol_request(), outcome=outcome)
    assert isinstance(answer, NativeReply)
    assert native.calls[0].body["messages"] == [{"role": "user", "content": "hi"}]
    assert native.calls[0].headers == {"anthropic-version": "2023-06-01"}
    assert (outcome.prompt_tokens, outcome.completion_tokens) == (2, 3)
    assert outcome.trail.notes == []
    assert outcome.trail.translated == set()


async def test_a_provider_without_the_protocol_gets_the_chat_form_and_the_trail_says_so() -> None:
    m = manager()
    m.register_provider(MockProvider(name="mock", models=("m",)), SETTINGS)
    outcome = Outcome()
    answer = await m.exchange(protocol_request(), outcome=outcome)
    assert isinstance(answer, ChatCompletion)
    assert outcome.trail.translated == {"mock"}
    assert outcome.trail.notes == ["dropped cache_control"]
    assert "mock/m (translated): ok" in outcome.trail.summary()
    assert "notes: dropped cache_control" in outcome.trail.summary()


async def test_a_native_failure_fails_over_to_a_translated_provider() -> None:
    m = manager()
    m.register_provider(Native("native", fail=RateLimitError("slow down")), SETTINGS)
    m.register_provider(MockProvider(name="mock", models=("m",)), SETTINGS)
    outcome = Outcome()
    assert isinstance(await m.exchange(protocol_request(), outcome=outcome), ChatCompletion)
    assert [a.provider for a in outcome.trail.attempts] == ["native", "mock"]


@pytest.mark.parametrize("native_first", [True, False])
async def test_streams_fail_over_before_content_then_commit(native_first: bool) -> None:
    m = manager()
    failing: Any = (
        Native("first", fail=RateLimitError("no"))
        if native_first
        else RoleThenQuota(name="first", models=("m",))
    )
    m.register_provider(failing, SETTINGS)
    m.register_provider(Native("second"), SETTINGS)
    outcome = Outcome()
    async with m.open_exchange(protocol_request(stream=True), outcome=outcome) as stream:
        first = await stream.next_batch()
    assert isinstance(first, EventBatch)
    assert [a.provider for a in outcome.trail.attempts] == ["first", "second"]
    assert outcome.trail.served_by is not None


async def test_a_role_chunk_then_content_reaches_the_front_door_as_one_batch() -> None:
    m = manager()
    m.register_provider(MockProvider(name="mock", models=("m",)), SETTINGS)
    async with m.open_exchange(protocol_request(stream=True)) as stream:
        first = await stream.next_batch()
    assert isinstance(first, ChunkBatch)
    assert any(c.choices and c.choices[0].delta.content for c in first.chunks)


async def test_embeddings_go_only_to_providers_that_serve_them() -> None:
    m = manager()
    m.register_provider(Native("native"), SETTINGS)  # speaks messages, not embeddings
    call = NativeCall(WireProtocol.EMBEDDINGS, {"model": "m", "input": "hi"})
    with pytest.raises(UnsupportedFeatureError):
        await m.exchange(ProtocolRequest(call))
    m.register_provider(MockProvider(name="mock", models=("m",)), SETTINGS)
    answer = await m.exchange(ProtocolRequest(call))
    assert isinstance(answer, NativeReply)
    assert len(answer.data["data"][0]["embedding"]) == 1536


async def test_declaring_a_protocol_without_its_methods_is_refused_at_registration() -> None:
    class Boastful(MockProvider):
        @property
        def capabilities(self) -> Capabilities:
            return Capabilities(protocols=frozenset({MESSAGES}))

    class NoMethods:
        name = "plain"
        capabilities = Capabilities(protocols=frozenset({MESSAGES}))

    m = manager()
    m.register_provider(Boastful(name="mock", models=("m",)), SETTINGS)  # has send and open
    with pytest.raises(ConfigurationError, match="no send"):
        m.register_provider(NoMethods(), SETTINGS)  # type: ignore[arg-type]


async def test_a_request_that_passes_through_everywhere_never_makes_its_chat_form() -> None:
    def translate(notes: list[str]) -> ChatCompletionRequest:
        raise AssertionError("translated, though every provider speaks the protocol")

    m = manager()
    m.register_provider(Native("one"), SETTINGS)
    m.register_provider(Native("two"), SETTINGS)
    call = protocol_request().native
    assert isinstance(await m.exchange(ProtocolRequest(call, translate)), NativeReply)


async def test_a_translation_error_is_the_clients_and_no_providers_fault() -> None:
    def translate(notes: list[str]) -> ChatCompletionRequest:
        raise InvalidRequestError("nothing to answer", param="input")

    m = manager()
    m.register_provider(MockProvider(name="mock", models=("m",)), SETTINGS)
    with pytest.raises(InvalidRequestError, match="nothing to answer"):
        await m.exchange(ProtocolRequest(protocol_request().native, translate))
    assert m.registry.get("mock").breaker.state.value == "closed"
