"""Choosing the state backend: ``[state]`` in a config (the URL given three ways, never
shown), or an object from code; a gateway whose Redis is down starts degraded, serves on
local state, and says so; several workers on the memory backend are told they share nothing."""

from __future__ import annotations

import logging
from pathlib import Path

import httpx
import pytest

from leapasgi import Gateway, MemoryState, RedisState
from leapasgi.cli import warn_unshared
from leapasgi.config import CacheConfig, GatewayConfig, StateConfig, load_config, parse_config
from leapasgi.exceptions import ConfigurationError
from leapasgi.state import build_state
from tests.redis_server import free_port

pytestmark = pytest.mark.anyio

PASSWORD = "state-config-password-42"


def test_the_memory_backend_is_the_default() -> None:
    state = build_state(StateConfig(), CacheConfig())

    assert isinstance(state, MemoryState)
    assert state.status().shared is False


def test_redis_needs_a_url_given_one_way() -> None:
    with pytest.raises(ConfigurationError, match="url"):
        parse_config('[state]\nbackend = "redis"\n')
    with pytest.raises(ConfigurationError, match="one way"):
        parse_config('[state]\nbackend = "redis"\nurl = "redis://x"\nurl_env = "R"\n')


def test_the_url_comes_from_the_environment_or_a_file_and_is_never_shown(tmp_path: Path) -> None:
    url = f"redis://:{PASSWORD}@127.0.0.1:6390/0"
    config = parse_config('[state]\nbackend = "redis"\nurl_env = "LEAP_REDIS"\n')
    (tmp_path / "redis-url").write_text(url + "\n")
    (tmp_path / "gateway.toml").write_text('[state]\nbackend = "redis"\nurl_file = "redis-url"\n')
    from_file = load_config(tmp_path / "gateway.toml")
    inline = parse_config(f'[state]\nbackend = "redis"\nurl = "{url}"\n')

    assert config.state.resolve_url({"LEAP_REDIS": url}).get_secret_value() == url
    assert from_file.state.resolve_url().get_secret_value() == url
    for shown in (repr(inline), str(inline.state), repr(build_state(inline.state, CacheConfig()))):
        assert PASSWORD not in shown
    with pytest.raises(ConfigurationError, match="LEAP_REDIS") as caught:
        config.state.resolve_url({})
    assert PASSWORD not in str(caught.value)


async def test_a_gateway_whose_redis_is_down_starts_degraded_and_serves(
    caplog: pytest.LogCaptureFixture,
) -> None:
    url = f"redis://:{PASSWORD}@127.0.0.1:{free_port()}/0"  # nothing listens there
    config = GatewayConfig.model_validate(
        {
            "providers": [{"name": "mock", "type": "mock", "models": ["m"], "rpm": 100}],
            "state": {"backend": "redis", "url": url, "replicas": 2},
            "cache": {"enabled": True, "models": ["m"]},
            "health": {"interval": 0},
        }
    )
    gateway = Gateway(config=config)
    assert isinstance(gateway.state, RedisState)
    caplog.set_level(logging.INFO)

    async with gateway:
        transport = httpx.ASGITransport(app=gateway.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
            answer = await client.post(
                "/v1/chat/completions",
                json={"model": "m", "messages": [{"role": "user", "content": "hi"}]},
            )
            ready = (await client.get("/health/ready")).json()
            metrics = (await client.get("/metrics")).text

    assert answer.status_code == 200
    assert ready["status"] == "ready"
    assert ready["state"]["degraded"] is True
    assert ready["state"]["shared"] is False
    assert 'leap_state_degraded{backend="redis"} 1' in metrics
    said = [r.getMessage() for r in caplog.records if r.name.startswith("leapasgi.state")]
    assert said
    assert all(PASSWORD not in line for line in said)


def test_several_workers_on_the_memory_backend_are_warned_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING)

    warn_unshared(GatewayConfig(), 4)
    warn_unshared(GatewayConfig(), 1)
    warn_unshared(parse_config('[state]\nbackend = "redis"\nurl = "redis://127.0.0.1"\n'), 4)

    warned = [r.getMessage() for r in caplog.records]
    assert len(warned) == 1
    assert "each worker keeps its own" in warned[0]
