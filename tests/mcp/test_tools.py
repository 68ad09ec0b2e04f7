"""The tools other than chat, in process, through the SDK's default and legacy client paths."""

from __future__ import annotations

from typing import Any

import jsonschema  # type: ignore[import-untyped]
import pytest

from leapasgi.clock import FakeClock
from leapasgi.config import AliasConfig, HealthConfig
from leapasgi.providers.mock import Fault
from leapmcp import build_server
from tests.mcp.support import (
    connect,
    fast_routing,
    make_gateway,
    mock_config,
    mock_of,
    structured,
    text,
)

pytestmark = pytest.mark.anyio

TOOLS = {"chat", "list_providers", "list_models", "health_check", "provider_stats"}
CHAT = {"model": "mock-chat", "prompt": "hi"}


@pytest.fixture(params=["auto", "legacy"])
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def test_the_tools_have_input_and_output_schemas(mode: str) -> None:
    async with connect(build_server(make_gateway()), mode) as client:
        tools = {tool.name: tool for tool in (await client.list_tools()).tools}
    assert set(tools) == TOOLS
    for tool in tools.values():
        assert tool.description
        assert tool.input_schema["type"] == "object"
        assert tool.output_schema is not None
        assert tool.output_schema["type"] == "object"
        assert "ctx" not in tool.input_schema["properties"]
    chat = tools["chat"].input_schema
    assert set(chat["properties"]) == {
        "model",
        "prompt",
        "messages",
        "system",
        "temperature",
        "max_tokens",
        "json_mode",
        "provider",
    }
    assert chat["required"] == ["model"]
    assert {"maximum": 2, "minimum": 0, "type": "number"} in chat["properties"]["temperature"][
        "anyOf"
    ]
    assert set(tools["chat"].output_schema["required"]) >= {"reply", "provider", "attempts"}  # type: ignore[index]
    assert tools["list_providers"].annotations is not None
    assert tools["list_providers"].annotations.read_only_hint is True
    assert tools["health_check"].input_schema["properties"]["provider"]["default"] is None


async def test_set_provider_status_is_listed_only_with_admin_tools(mode: str) -> None:
    async with connect(build_server(make_gateway(), admin_tools=True), mode) as client:
        tools = {tool.name: tool for tool in (await client.list_tools()).tools}
    assert set(tools) == TOOLS | {"set_provider_status"}
    schema = tools["set_provider_status"].input_schema
    assert schema["properties"]["status"]["enum"] == ["active", "inactive", "maintenance"]
    async with connect(build_server(make_gateway()), mode) as client:
        refused = await client.call_tool("set_provider_status", {"provider": "mock", "status": "x"})
    assert refused.is_error
    assert "Unknown tool" in text(refused)


async def test_every_result_matches_its_output_schema(mode: str) -> None:
    gateway = make_gateway()
    calls: dict[str, dict[str, Any]] = {
        "chat": CHAT,
        "list_providers": {},
        "list_models": {},
        "health_check": {},
        "provider_stats": {},
        "set_provider_status": {"provider": "mock", "status": "active"},
    }
    async with connect(build_server(gateway, admin_tools=True), mode) as client:
        schemas = {t.name: t.output_schema for t in (await client.list_tools()).tools}
        for name, arguments in calls.items():
            result = await client.call_tool(name, arguments)
            jsonschema.validate(structured(result), schemas[name])


async def test_list_providers_reports_status_features_latency_and_errors(mode: str) -> None:
    clock = FakeClock()
    gateway = make_gateway(
        mock_config("a", features=["streaming", "json_mode"]),
        mock_config("b"),
        clock=clock,
        health=HealthConfig(interval=0, failure_threshold=1, base_ejection=30),
    )
    mock_of(gateway, "a").inject(Fault.status(503))
    async with connect(build_server(gateway), mode) as client:
        structured(await client.call_tool("chat", CHAT))
        providers = structured(await client.call_tool("list_providers", {}))["providers"]
    a, b = providers
    assert a["name"] == "a"
    assert a["kind"] == "mock"
    assert a["status"] == "unhealthy"
    assert a["breaker"] == "open"
    assert a["health"] == "unhealthy"
    assert a["ejected_until"] == pytest.approx(clock.time() + 30)
    assert a["features"] == ["streaming", "json_mode"]
    assert a["models"] == ["mock-chat"]
    assert a["errors"] == {"UpstreamUnavailableError": 1}
    assert a["last_error"] == "Mock fault: HTTP 503"
    assert [c["status"] for c in a["recent_changes"]] == ["active", "unhealthy"]
    assert "ejected after 1 consecutive failures" in a["recent_changes"][-1]["cause"]
    assert b["status"] == "active"
    assert b["successes"] == 1
    assert b["success_rate"] == 1.0
    assert set(b["latency_ms"]) == {"p50", "p95", "p99"}
    assert b["ttft_ms"] is not None
    assert b["completion_tokens"] > 0


async def test_list_models_shows_aliases_and_who_serves_each(mode: str) -> None:
    routing = fast_routing(
        aliases={
            "default": AliasConfig(targets=["b/other", "mock-chat"]),
            "ghost": AliasConfig(targets=["nobody-serves-this"]),
        }
    )
    gateway = make_gateway(
        mock_config("a"), mock_config("b", models=("mock-chat", "other")), routing=routing
    )
    async with connect(build_server(gateway), mode) as client:
        models = structured(await client.call_tool("list_models", {}))["models"]
    assert models == [
        {
            "name": "default",
            "alias": True,
            "targets": ["b/other", "mock-chat"],
            "providers": ["b", "a"],
        },
        {"name": "ghost", "alias": True, "targets": ["nobody-serves-this"], "providers": []},
        {"name": "mock-chat", "alias": False, "targets": [], "providers": ["a", "b"]},
        {"name": "other", "alias": False, "targets": [], "providers": ["b"]},
    ]


async def test_health_check_runs_every_check_in_parallel_with_progress(mode: str) -> None:
    gateway = make_gateway(mock_config("a"), mock_config("b"), mock_config("off"))
    mock_of(gateway, "b").fail_always(Fault.connect_error())
    gateway.manager.registry.set_status("off", "inactive", cause="test")
    reports: list[tuple[float, float | None, str | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        reports.append((progress, total, message))

    async with connect(build_server(gateway), mode) as client:
        result = structured(
            await client.call_tool("health_check", {}, progress_callback=on_progress)
        )
    assert [r["provider"] for r in result["results"]] == ["a", "b"]
    a, b = result["results"]
    assert a["ok"] is True
    assert a["error"] is None
    assert a["health"] == "healthy"
    assert b["ok"] is False
    assert b["error"] == "Provider 'b' refused the connection (mock fault)"
    assert (result["healthy"], result["unhealthy"]) == (1, 1)
    assert [(done, total) for done, total, _ in reports] == [(1, 2), (2, 2)]
    assert {message for _, _, message in reports} == {"a: ok", "b: failed"}


async def test_health_check_of_one_provider_and_of_an_unknown_one(mode: str) -> None:
    gateway = make_gateway(mock_config("a"), mock_config("b"))
    async with connect(build_server(gateway), mode) as client:
        one = structured(await client.call_tool("health_check", {"provider": "b"}))
        unknown = await client.call_tool("health_check", {"provider": "zz"})
        wrong_type = await client.call_tool("health_check", {"provider": 3})
    assert [r["provider"] for r in one["results"]] == ["b"]
    assert unknown.is_error
    assert (
        text(unknown)
        == "Error executing tool health_check: No provider named 'zz'. Providers: a, b"
    )
    assert wrong_type.is_error
    assert "validation error" in text(wrong_type)


async def test_provider_stats_adds_up_every_provider(mode: str) -> None:
    gateway = make_gateway(mock_config("a"), mock_config("b"))
    mock_of(gateway, "a").inject(Fault.status(500))
    async with connect(build_server(gateway), mode) as client:
        for _ in range(2):
            structured(await client.call_tool("chat", CHAT))
        stats = structured(await client.call_tool("provider_stats", {}))
    assert stats == {
        "providers": 2,
        "active": 2,
        "healthy": 2,
        "in_flight": 0,
        "requests": 3,
        "successes": 2,
        "errors": 1,
        "success_rate": pytest.approx(2 / 3),
    }


async def test_set_provider_status_drains_and_restores_a_provider(mode: str) -> None:
    gateway = make_gateway()
    async with connect(build_server(gateway, admin_tools=True), mode) as client:
        drained = structured(
            await client.call_tool(
                "set_provider_status",
                {"provider": "mock", "status": "maintenance", "reason": "upgrade"},
            )
        )
        refused = await client.call_tool("chat", CHAT)
        structured(
            await client.call_tool("set_provider_status", {"provider": "mock", "status": "active"})
        )
        answered = structured(await client.call_tool("chat", CHAT))
        unknown = await client.call_tool(
            "set_provider_status", {"provider": "zz", "status": "active"}
        )
        unhealthy = await client.call_tool(
            "set_provider_status", {"provider": "mock", "status": "unhealthy"}
        )
    assert drained["status"] == "maintenance"
    assert drained["recent_changes"][-1]["cause"] == "upgrade"
    assert refused.is_error
    assert "No provider can serve this request right now" in text(refused)
    assert answered["provider"] == "mock"
    assert text(unknown) == (
        "Error executing tool set_provider_status: No provider named 'zz'. Providers: mock"
    )
    assert unhealthy.is_error
    assert "validation error" in text(unhealthy)
