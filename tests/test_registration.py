"""Every way of registering a provider gives the dispatcher the one retry loop: the requests an
upstream receives equal the tries in the trail and in ``x-leap-attempts``, never a multiple."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr

from leapasgi import (
    Gateway,
    GatewayConfig,
    LeapError,
    OpenAICompatibleProvider,
    ProviderConfig,
    ProviderManager,
    ProviderSettings,
    RouteSettings,
    parse_chat_request,
)
from leapasgi.config import HealthConfig, RoutingConfig
from tests.fake_upstream import Behavior, FakeUpstream, error_body

pytestmark = pytest.mark.anyio

# No backoff sleeps, no health checks, no ejection; the default per-provider retries (2):
# three tries per request.
ROUTING = RoutingConfig(retry_initial_delay=0, retry_max_delay=0)
HEALTH = HealthConfig(interval=0, failure_threshold=100)
TRIES = 3
BODY = {"model": "m1", "messages": [{"role": "user", "content": "hi"}]}


def manager() -> ProviderManager:
    return ProviderManager(routing=ROUTING, health=HEALTH)


def settings(fake: FakeUpstream) -> ProviderSettings:
    return ProviderSettings(name="up", base_url=fake.base_url, api_key=SecretStr("up-key"))


async def from_config_file(fake: FakeUpstream, tmp: Path) -> Gateway:
    path = tmp / "gateway.toml"
    path.write_text(
        f"""
[routing]
retry_initial_delay = 0
retry_max_delay = 0

[health]
interval = 0
failure_threshold = 100

[[providers]]
name = "up"
base_url = "{fake.base_url}"
api_key = "up-key"
models = ["m1"]
"""
    )
    return Gateway.from_config(path)


async def from_register(fake: FakeUpstream, tmp: Path) -> Gateway:
    m = manager()
    m.register(ProviderConfig(name="up", base_url=fake.base_url, api_key="up-key", models=["m1"]))
    return Gateway(m)


async def from_register_provider(fake: FakeUpstream, tmp: Path) -> Gateway:
    m = manager()
    m.register_provider(OpenAICompatibleProvider(settings(fake)), RouteSettings(models=("m1",)))
    return Gateway(m)


async def from_register_openai_compatible(fake: FakeUpstream, tmp: Path) -> Gateway:
    m = manager()
    m.register_openai_compatible("up", fake.base_url, "up-key", models=["m1"])
    return Gateway(m)


async def from_gateway_providers(fake: FakeUpstream, tmp: Path) -> Gateway:
    # The model list is discovered from the upstream's GET /models.
    config = GatewayConfig(routing=ROUTING, health=HEALTH)
    return Gateway(config=config, providers=[OpenAICompatibleProvider(settings(fake))])


async def from_load_default_providers(fake: FakeUpstream, tmp: Path) -> Gateway:
    # No preset keys; the local Ollama endpoint is the fake upstream, found by its probe.
    m = manager()
    assert await m.load_default_providers({}, ollama_url=fake.base_url) == ["ollama"]
    return Gateway(m)


Build = Callable[[FakeUpstream, Path], Awaitable[Gateway]]
PATHS: dict[str, Build] = {
    "config file": from_config_file,
    "register": from_register,
    "register_provider": from_register_provider,
    "register_openai_compatible": from_register_openai_compatible,
    "Gateway(providers=[...])": from_gateway_providers,
    "load_default_providers": from_load_default_providers,
}


@pytest.fixture
async def failing() -> AsyncIterator[FakeUpstream]:
    busy = Behavior(status=503, json_body=error_body("busy", type="server_error"))
    async with FakeUpstream(default=busy) as fake:
        yield fake


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("path", list(PATHS))
async def test_upstream_requests_equal_the_tries_reported(
    failing: FakeUpstream, tmp_path: Path, path: str, stream: bool
) -> None:
    gateway = await PATHS[path](failing, tmp_path)
    async with gateway:
        transport = httpx.ASGITransport(app=gateway.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
            response = await client.post("/v1/chat/completions", json={**BODY, "stream": stream})
        with pytest.raises(LeapError) as caught:
            await gateway.manager.chat(parse_chat_request(BODY))
    assert response.status_code == 503
    assert response.headers["x-leap-attempts"] == str(TRIES)
    error = caught.value
    assert error.trail is not None
    assert error.attempts == error.trail.tries == TRIES
    assert len(failing.chat_requests) == 2 * TRIES


async def test_a_provider_used_on_its_own_makes_one_request_per_call(
    failing: FakeUpstream,
) -> None:
    async with OpenAICompatibleProvider(settings(failing)) as provider:
        with pytest.raises(LeapError):
            await provider.chat(parse_chat_request(BODY))
    assert len(failing.chat_requests) == 1
