"""The manager over real fake upstreams on 127.0.0.1: callers see no error while one is healthy."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from leapasgi.config import HealthConfig, ProviderConfig, RoutingConfig, load_config
from leapasgi.exceptions import DeadlineExceededError
from leapasgi.manager import ProviderManager
from leapasgi.registry import RouteSettings
from leapasgi.types import ChatCompletionRequest
from tests.fake_upstream import Behavior, FakeUpstream, error_body, sse, text_stream

pytestmark = pytest.mark.anyio

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "gateway.toml"

FAILURES: dict[str, Behavior] = {
    "500": Behavior(status=500, json_body=error_body("boom", type="server_error")),
    "429 with a long Retry-After": Behavior(
        status=429, json_body=error_body("quota"), headers={"Retry-After": "3600"}
    ),
    "connection reset": Behavior(reset_now=True),
    "never answers": Behavior(hang_now=True),
    "not JSON": Behavior(raw_body=b"<html>oops</html>"),
    "error as the first event": Behavior(
        events=sse(error_body("overloaded", type="server_error"), done=False)
    ),
    "malformed first event": Behavior(events=[b"data: {nope\n\n"]),
    "cut before the first chunk": Behavior(events=[b": ping\n\n"], then="reset"),
}


@pytest.fixture
async def upstreams() -> AsyncIterator[list[FakeUpstream]]:
    async with AsyncExitStack() as stack:
        fakes = [await stack.enter_async_context(FakeUpstream()) for _ in range(3)]
        for fake in fakes:
            fake.default = Behavior(events=text_stream(["fine"]))
        yield fakes


# The fakes and the manager share one event loop, so a stall of the loop (a busy machine, a
# garbage collection) counts against every provider's clock. The upstreams that answer, and
# the first one when it fails by what it sends, get a clock no stall reaches; only an upstream
# that never answers needs one to run out, and it still has time to see the request first.
SERVING_TIMEOUT = 30.0
HANG_TIMEOUT = 1.0


def timeout_for(failure: Behavior) -> float:
    """The first upstream's timeout: short only when nothing but a timeout ends ``failure``."""
    return HANG_TIMEOUT if failure.hang_now else SERVING_TIMEOUT


def manager_over(
    fakes: list[FakeUpstream], *, first_timeout: float = SERVING_TIMEOUT, **routing: Any
) -> ProviderManager:
    m = ProviderManager(routing=RoutingConfig(**routing), health=HealthConfig(interval=0))
    for index, fake in enumerate(fakes):
        m.register(
            ProviderConfig(
                name=f"u{index + 1}",
                base_url=fake.base_url,
                api_key=SecretStr(f"sk-u{index + 1}-0123456789"),
                models=["m1"],
                timeout=first_timeout if index == 0 else SERVING_TIMEOUT,
                priority=index,
            )
        )
    return m


def req(**fields: Any) -> ChatCompletionRequest:
    body = {"model": "m1", "messages": [{"role": "user", "content": "hi"}], **fields}
    return ChatCompletionRequest.model_validate(body)


@pytest.mark.parametrize("failure", list(FAILURES))
async def test_a_stream_survives_each_upstream_failure(
    upstreams: list[FakeUpstream], failure: str
) -> None:
    upstreams[0].default = FAILURES[failure]
    async with manager_over(upstreams, first_timeout=timeout_for(FAILURES[failure])) as m:
        stream = m.stream(req(stream=True))
        chunks = [c async for c in stream]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "fine"
    assert stream.trail.served_by is not None
    assert stream.trail.served_by.provider == "u2"
    assert len(upstreams[0].chat_requests) >= 1
    assert upstreams[2].chat_requests == []


@pytest.mark.parametrize("failure", [f for f in FAILURES if "event" not in f and "chunk" not in f])
async def test_a_completion_survives_each_upstream_failure(
    upstreams: list[FakeUpstream], failure: str
) -> None:
    upstreams[0].default = FAILURES[failure]
    for fake in upstreams[1:]:
        fake.default = Behavior(json_body=_completion("fine"))
    async with manager_over(upstreams, first_timeout=timeout_for(FAILURES[failure])) as m:
        completion, trail = await m.chat_with_trail(req())
    assert completion.choices[0].message.content == "fine"
    assert trail.served_by is not None
    assert trail.served_by.provider == "u2"


async def test_the_client_key_is_never_in_the_trail(upstreams: list[FakeUpstream]) -> None:
    upstreams[0].default = Behavior(
        status=500, json_body=error_body("bad key sk-u1-0123456789 rejected")
    )
    upstreams[1].default = Behavior(json_body=_completion("fine"))
    async with manager_over(upstreams) as m:
        _, trail = await m.chat_with_trail(req(stream=False))
    assert "sk-u1-0123456789" not in repr(trail)
    assert "sk-u1-0123456789" not in trail.summary()


async def test_health_checks_use_the_free_models_endpoint(upstreams: list[FakeUpstream]) -> None:
    async with manager_over(upstreams) as m:
        results = await m.check_health()
    assert all(r.ok for r in results)
    assert {s.method + " " + s.path for f in upstreams for s in f.seen} == {"GET /v1/models"}


async def test_models_are_discovered_when_not_configured(upstream: FakeUpstream) -> None:
    upstream.models = ["d1", "d2"]
    m = ProviderManager(health=HealthConfig(interval=0))
    m.register_openai_compatible("disc", upstream.base_url, "sk-disc-0123456789")
    async with m:
        models = [model.id for model in await m.list_models()]
    assert models == ["d1", "d2"]


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_load_default_providers_from_keys_and_a_local_ollama(upstream: FakeUpstream) -> None:
    m = ProviderManager(health=HealthConfig(interval=0))
    names = await m.load_default_providers(
        {"GROQ_API_KEY": "gsk-test-0123456789", "UNRELATED": "x"}, ollama_url=upstream.base_url
    )
    assert names == ["groq", "ollama"]
    assert m.registry.snapshot("groq").preset == "groq"
    await m.aclose()
    none = ProviderManager(health=HealthConfig(interval=0))
    url = f"http://127.0.0.1:{_closed_port()}/v1"
    assert await none.load_default_providers({}, ollama_url=url) == []
    await none.aclose()


async def test_the_example_config_answers_with_no_keys() -> None:
    config = load_config(EXAMPLE, env={})
    async with ProviderManager.from_config(config, env={}) as m:
        completion = await m.chat(
            ChatCompletionRequest.model_validate(
                {"model": "default", "messages": [{"role": "user", "content": "ping"}]}
            )
        )
        names = m.registry.names()
    assert names == ["mock"]
    assert completion.choices[0].message.content


def _completion(content: str) -> dict[str, Any]:
    from tests.fake_upstream import completion

    return completion(content)


@pytest.mark.parametrize("stream", [False, True])
async def test_a_refused_connection_fails_over(upstreams: list[FakeUpstream], stream: bool) -> None:
    for fake in upstreams[1:]:
        fake.default = Behavior(json_body=_completion("fine"))
        if stream:
            fake.default = Behavior(events=text_stream(["fine"]))
    m = manager_over(upstreams)
    m.register_openai_compatible("u1", f"http://127.0.0.1:{_closed_port()}/v1", "sk-0123456789")
    m.registry.replace(m.registry.get("u1").provider, RouteSettings(models=("m1",), priority=0))
    async with m:
        if stream:
            served = m.stream(req(stream=True))
            assert [c async for c in served]
            trail = served.trail
        else:
            _, trail = await m.chat_with_trail(req())
    assert [a.outcome for a in trail.attempts] == ["ConnectRefusedError", "ok"]


@pytest.mark.parametrize("stream", [False, True])
async def test_the_request_deadline_reaches_the_provider(
    upstreams: list[FakeUpstream], stream: bool
) -> None:
    for fake in upstreams:
        fake.default = Behavior(hang_now=True)
    # Long enough for the request to reach the upstream on a busy machine, and far below the
    # provider's own 30 s: only the request's deadline can end the call.
    m = ProviderManager(routing=RoutingConfig(request_timeout=1.0), health=HealthConfig(interval=0))
    m.register(
        ProviderConfig(name="slow", base_url=upstreams[0].base_url, models=["m1"], timeout=30)
    )
    async with m:
        call = _drain_stream(m.stream(req(stream=True))) if stream else m.chat(req())
        with pytest.raises(DeadlineExceededError) as caught:
            await call
    assert caught.value.http_status == 504
    assert len(upstreams[0].chat_requests) == 1


async def _drain_stream(stream: Any) -> None:
    async for _ in stream:
        pass


async def test_a_managed_stream_gives_the_same_chunks_by_batch_or_one_by_one(
    upstreams: list[FakeUpstream],
) -> None:
    upstreams[0].default = Behavior(events=[b"".join(text_stream(["a", "b", "c"]))])
    async with manager_over(upstreams[:1]) as m:
        stream = m.stream(req(stream=True))
        first = await anext(stream)  # one chunk; the rest of its read waits in the stream
        batch = await stream.next_batch()
        rest = [c async for c in stream]
    contents = [c.choices[0].delta.content for c in [first, *batch.chunks, *rest]]
    assert contents == ["", "a", "b", "c", None]
    assert batch.chunks  # never an empty batch
