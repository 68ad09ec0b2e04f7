"""The tools over real fake upstreams on 127.0.0.1: failover in the trail, and no secret out."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from typing import Any

import pytest
from mcp.types import CallToolResult

from leapasgi import Gateway
from leapasgi.config import ProviderConfig
from leapmcp import build_server
from tests.fake_upstream import Behavior, FakeUpstream, error_body, sse, text_stream
from tests.mcp.support import connect, make_gateway, structured, text

pytestmark = pytest.mark.anyio

PROVIDER_KEY = "sk-canary-provider-5f3a9c1e7b"
QUERY_KEY = "canary-query-8d2e4f6a"
HEADER_KEY = "canary-header-1b7c3e9d"
API_KEY = "sk-canary-gateway-2c8e6a4f0d"
ADMIN_KEY = "sk-canary-admin-9e1d5b3a7c"
CANARIES = (PROVIDER_KEY, QUERY_KEY, HEADER_KEY, API_KEY, ADMIN_KEY)


@pytest.fixture
async def upstreams() -> AsyncIterator[list[FakeUpstream]]:
    async with AsyncExitStack() as stack:
        fakes = [await stack.enter_async_context(FakeUpstream()) for _ in range(2)]
        for fake in fakes:
            fake.default = Behavior(events=text_stream(["fine", " answer"]))
        yield fakes


@pytest.fixture(params=["auto", "legacy"])
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def over(fakes: list[FakeUpstream], **server: Any) -> Gateway:
    providers = [
        ProviderConfig(
            name=f"u{number}",
            base_url=f"{fake.base_url}?key={QUERY_KEY}",
            api_key=PROVIDER_KEY,
            headers={"x-extra-key": HEADER_KEY},
            models=["m1"],
            timeout=1.0,
            priority=number,
        )
        for number, fake in enumerate(fakes, 1)
    ]
    return make_gateway(*providers, **server)


async def test_chat_fails_over_from_a_failing_upstream(
    upstreams: list[FakeUpstream], mode: str
) -> None:
    upstreams[0].default = Behavior(status=500, json_body=error_body("boom", type="server_error"))
    gateway = over(upstreams)
    async with gateway, connect(build_server(gateway), mode) as client:
        answer = structured(await client.call_tool("chat", {"model": "m1", "prompt": "hi"}))
    assert answer["reply"] == "fine answer"
    assert answer["provider"] == "u2"
    assert answer["model"] == "m1"
    failed, served = answer["attempts"]
    assert (failed["provider"], failed["outcome"], failed["status"]) == (
        "u1",
        "UpstreamUnavailableError",
        500,
    )
    assert failed["message"] == "boom"
    assert (served["provider"], served["outcome"]) == ("u2", "ok")
    assert upstreams[1].chat_requests[0].json["stream"] is True


async def test_a_stream_that_fails_before_its_first_chunk_fails_over(
    upstreams: list[FakeUpstream],
) -> None:
    upstreams[0].default = Behavior(events=[b": ping\n\n"], then="reset")
    gateway = over(upstreams)
    async with gateway, connect(build_server(gateway)) as client:
        answer = structured(await client.call_tool("chat", {"model": "m1", "prompt": "hi"}))
    assert [(a["provider"], a["outcome"]) for a in answer["attempts"]] == [
        ("u1", "StreamInterruptedError"),
        ("u2", "ok"),
    ]


async def test_health_check_reports_a_failing_upstream(upstreams: list[FakeUpstream]) -> None:
    upstreams[0].models_behavior = Behavior(status=503, json_body=error_body("down"))
    gateway = over(upstreams)
    async with gateway, connect(build_server(gateway)) as client:
        result = structured(await client.call_tool("health_check", {}))
    u1, u2 = result["results"]
    assert (u1["ok"], u1["error"]) == (False, "down")
    assert u2["ok"] is True
    assert {s.path for f in upstreams for s in f.seen} == {"/v1/models"}


async def test_no_key_or_secret_appears_in_any_tool_output(
    upstreams: list[FakeUpstream], mode: str
) -> None:
    leak = f"invalid key {PROVIDER_KEY} (query {QUERY_KEY}, header {HEADER_KEY})"
    # An error inside the stream is the one place the provider layer does not redact.
    upstreams[0].default = Behavior(events=sse(error_body(leak, type="server_error"), done=False))
    upstreams[0].models_behavior = Behavior(status=401, json_body=error_body(leak))
    gateway = over(upstreams, api_keys=[API_KEY], admin_key=ADMIN_KEY)
    outputs: list[CallToolResult] = []
    async with gateway, connect(build_server(gateway, admin_tools=True), mode) as client:
        for name, arguments in [
            ("chat", {"model": "m1", "prompt": f"my key is {API_KEY}? {ADMIN_KEY}?"}),
            ("chat", {"model": "m1", "prompt": "hi", "provider": "u1"}),
            ("health_check", {}),
            ("list_providers", {}),
            ("list_models", {}),
            ("provider_stats", {}),
            ("set_provider_status", {"provider": "u1", "status": "inactive"}),
        ]:
            outputs.append(await client.call_tool(name, arguments))
        upstreams[1].default = Behavior(events=sse(error_body(leak), done=False))
        outputs.append(await client.call_tool("chat", {"model": "m1", "prompt": "hi"}))
    everything = "\n".join(text(r) + json.dumps(r.structured_content) for r in outputs)
    for canary in CANARIES:
        assert canary not in everything
    assert everything.count("[redacted]") >= 6
    assert outputs[-1].is_error
    assert not outputs[0].is_error
    # The keys did reach the upstreams, where they belong.
    seen = upstreams[0].chat_requests[0]
    assert seen.headers["Authorization"] == f"Bearer {PROVIDER_KEY}"
    assert seen.query == f"key={QUERY_KEY}"
