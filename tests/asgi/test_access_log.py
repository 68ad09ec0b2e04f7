"""The access log line tells a request's story: its id, the trail in short (``u1:503 ->
u2:ok``), the cache and queue markers; and the same as fields in the JSON log format."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from leapasgi import ChatCompletion, Gateway
from leapasgi.config import (
    CacheConfig,
    GatewayConfig,
    HealthConfig,
    ProviderConfig,
    RoutingConfig,
    ServerConfig,
)
from leapasgi.hooks import Hook, HookContext
from leapasgi.providers.mock import Fault, MockProvider
from leapasgi.trail import MAX_SHORT, Attempt, RoutingTrail

pytestmark = pytest.mark.anyio

CHAT = "/v1/chat/completions"
SECRET = "my card is 4111 1111 1111 1111"
BODY = {"model": "m", "messages": [{"role": "user", "content": SECRET}]}


def test_the_short_trail_names_each_step() -> None:
    trail = RoutingTrail()
    assert trail.short() == ""
    trail.attempts += [
        Attempt("u1", "m", "UpstreamUnavailableError", status=503),
        Attempt("u2", "m", "FirstByteTimeoutError"),
        Attempt("u3", "m", "ejected", skipped=True),
        Attempt("u4", "m", "RateLimitError", status=429, skipped=True),
        Attempt("u5", "m", "ConnectRefusedError"),
        Attempt("u6", "m", "ok"),
    ]
    assert trail.short() == (
        "u1:503 -> u2:first-byte-timeout -> u3:ejected -> u4:rate-limited"
        " -> u5:connectrefused -> u6:ok"
    )
    trail.attempts = [Attempt(f"u{n}", "m", "ok") for n in range(MAX_SHORT + 3)]
    assert trail.short().endswith(f"u{MAX_SHORT - 1}:ok -> +3 more")


def config(log_format: str = "text", **more: Any) -> GatewayConfig:
    return GatewayConfig(
        providers=[
            ProviderConfig(name="u1", type="mock", models=["m"], max_retries=0),
            ProviderConfig(name="u2", type="mock", models=["m"], max_in_flight=1, max_waiting=4),
        ],
        routing=RoutingConfig(strategy="priority"),
        health=HealthConfig(interval=0),
        server=ServerConfig(log_format=log_format),  # type: ignore[arg-type]
        **more,
    )


def mock(gw: Gateway, name: str) -> MockProvider:
    provider = gw.manager.registry.get(name).provider
    assert isinstance(provider, MockProvider)
    return provider


@pytest.fixture
def access(caplog: pytest.LogCaptureFixture) -> Callable[[], list[logging.LogRecord]]:
    """The access log's records so far."""
    caplog.set_level(logging.INFO, logger="leapasgi.access")
    return lambda: [r for r in caplog.records if r.name == "leapasgi.access"]


async def post(gw: Gateway, body: dict[str, Any] = BODY) -> httpx.Response:
    transport = httpx.ASGITransport(app=gw.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
        return await client.post(CHAT, json=body)


async def test_the_line_has_the_request_id_and_the_trail_in_short(
    access: Callable[[], list[logging.LogRecord]],
) -> None:
    async with Gateway(config=config()) as gw:
        mock(gw, "u1").inject(Fault.status(503))
        response = await post(gw)
    assert response.status_code == 200
    (line,) = [r.getMessage() for r in access()]
    assert f"id={response.headers['x-request-id']}" in line
    assert line.endswith(' trail="u1:503 -> u2:ok"')
    assert "provider=u2 status=200" in line
    assert "attempts=2" in line
    assert "cache=" not in line
    assert "queued_ms=" not in line
    assert SECRET not in line


async def test_a_cache_hit_and_a_wait_in_line_are_marked(
    access: Callable[[], list[logging.LogRecord]],
) -> None:
    cache = CacheConfig(enabled=True, models=["*"])
    async with Gateway(config=config(cache=cache)) as gw:
        mock(gw, "u1").fail_always(Fault.status(503))
        first = await post(gw)
        again = await post(gw)
        # u2 takes one request at a time: of two at once, one waits in its line.
        mock(gw, "u2").inject(Fault.delay(0.05), Fault.delay(0.05))
        other = [{**BODY, "messages": [{"role": "user", "content": f"q{n}"}]} for n in (1, 2)]
        both = await asyncio.gather(*(post(gw, body) for body in other))
    assert [r.status_code for r in (first, again, *both)] == [200] * 4
    lines = [r.getMessage() for r in access()]
    assert "cache=miss" in lines[0]
    assert 'trail="u1:503 -> u2:ok"' in lines[0]
    assert "cache=hit" in lines[1]
    assert "attempts=0" in lines[1]
    assert "trail=" not in lines[1]
    assert f"id={again.headers['x-request-id']}" in lines[1]
    assert sum("queued_ms=" in line for line in lines[2:]) == 1


async def test_the_json_format_gives_the_line_as_fields(
    access: Callable[[], list[logging.LogRecord]],
) -> None:
    async with Gateway(config=config("json")) as gw:
        mock(gw, "u1").inject(Fault.status(503))
        response = await post(gw)
        refused = await post(gw, {"model": "nope", "messages": []})
    assert response.status_code == 200
    assert refused.status_code in (400, 404)
    served, failed = (r.fields for r in access())  # type: ignore[attr-defined]
    assert served["request_id"] == response.headers["x-request-id"]
    assert served["trail"] == "u1:503 -> u2:ok"
    assert served["provider"] == "u2"
    assert served["status"] == 200
    assert served["attempts"] == 2
    assert served["operation"] == "chat"
    assert served["api"] == "chat_completions"
    assert served["model"] == "m"
    assert served["stream"] is False
    assert served["duration_ms"] >= 0
    assert served["input_tokens"] > 0
    assert served["output_tokens"] > 0
    assert "error" not in served
    assert "cache" not in served
    assert failed["status"] == refused.status_code
    assert failed["error"]
    assert failed["request_id"] == refused.headers["x-request-id"]
    assert SECRET not in str(served)


class Refuser(Hook):
    """A guardrail that answers whatever mentions "forbidden" itself."""

    name = "refuser"

    def __init__(self) -> None:
        self.seen = 0

    def before(self, ctx: HookContext) -> ChatCompletion | None:
        self.seen += 1
        if any("forbidden" in text for text in ctx.texts()):
            return ctx.reply("I cannot help with that.")
        return None


async def test_a_hooks_answer_is_marked_and_never_cached(
    access: Callable[[], list[logging.LogRecord]],
) -> None:
    refuser = Refuser()
    cache = CacheConfig(enabled=True, models=["*"])
    forbidden = {**BODY, "messages": [{"role": "user", "content": "a forbidden topic"}]}
    async with Gateway(config=config(cache=cache), hooks=[refuser]) as gw:
        answers = [await post(gw, forbidden) for _ in range(2)]
        # A provider's answer is cached in front of the hooks: they saw its bytes once.
        served = [await post(gw) for _ in range(2)]
    texts = [a.json()["choices"][0]["message"]["content"] for a in answers]
    assert texts == ["I cannot help with that."] * 2
    assert refuser.seen == 3
    lines = [r.getMessage() for r in access()]
    assert all("cache=miss hook=refuser attempts=0" in line for line in lines[:2])
    assert "cache=miss" in lines[2]
    assert "cache=hit" in lines[3]
    assert all(a.status_code == 200 for a in served)


@pytest.mark.parametrize("log_format", ["text", "json"])
async def test_what_the_parameter_rules_changed_or_skipped_is_in_the_line(
    access: Callable[[], list[logging.LogRecord]], log_format: str
) -> None:
    providers = [
        ProviderConfig(name="u1", type="mock", models=["m"], params={"max": {"n": 1}}),
        ProviderConfig(
            name="u2",
            type="mock",
            models=["m"],
            params={"rename": {"max_tokens": "max_completion_tokens"}, "drop": ["seed"]},
        ),
    ]
    config = GatewayConfig(
        providers=providers,
        routing=RoutingConfig(strategy="priority"),
        health=HealthConfig(interval=0),
        server=ServerConfig(log_format=log_format),  # type: ignore[arg-type]
    )
    async with Gateway(config=config) as gw:
        response = await post(gw, {**BODY, "n": 2, "seed": 1, "max_tokens": 9})
    assert response.status_code == 200
    assert response.headers["x-leap-provider"] == "u2"
    notes = [
        "u1: skipped, it takes n up to 1",
        "u2: renamed max_tokens -> max_completion_tokens, dropped seed",
    ]
    (record,) = access()
    if log_format == "json":
        assert record.fields["notes"] == notes  # type: ignore[attr-defined]
    else:
        assert record.getMessage().endswith(f' trail="u2:ok" notes="{"; ".join(notes)}"')
