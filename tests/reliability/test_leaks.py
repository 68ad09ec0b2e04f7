"""Rows 30-33: what may leave the process. A password in a base URL, debug logging of every
logger the process configures, log lines forged through a model name, and the MCP scrubber
garbling ordinary replies."""

from __future__ import annotations

import base64
import logging
import re
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from mcp import Client, StdioServerParameters
from mcp.client.stdio import stdio_client

from leapasgi import Gateway
from leapasgi.config import GatewayConfig, HealthConfig, ProviderConfig, ServerConfig
from leapmcp import build_server
from tests.fake_upstream import Behavior, FakeUpstream, completion, error_body
from tests.mcp.support import connect, http_session, structured
from tests.mcp.test_cli import free_port, running, wait_until_listening
from tests.reliability.harness import Figures, reliability_gateway

CHAT = "/v1/chat/completions"
BODY: dict[str, Any] = {"model": "m1", "messages": [{"role": "user", "content": "hi"}]}
ADMIN_KEY = "sk-adm-leaks-9a8b7c6d5e"
ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.anyio
async def test_row30_a_password_in_the_base_url_is_a_secret(figures: Figures) -> None:
    user, password = "svc-user", "pw-canary-7f3a9c1e"
    basic = base64.b64encode(f"{user}:{password}".encode()).decode()
    echo = f"denied {user}:{password}, you sent Authorization: Basic {basic}"
    async with FakeUpstream(default=Behavior(status=401, json_body=error_body(echo))) as fake:
        url = fake.base_url.replace("http://", f"http://{user}:{password}@")
        config = GatewayConfig(
            providers=[ProviderConfig(name="u1", base_url=url, models=["m1"], max_retries=0)],
            health=HealthConfig(interval=0),
            server=ServerConfig(admin_key=ADMIN_KEY),
        )
        async with Gateway(config=config) as gateway:
            transport = httpx.ASGITransport(app=gateway.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://gw") as http:
                answer = await http.post(CHAT, json=BODY)
                stream = await http.post(CHAT, json={**BODY, "stream": True})
                admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
                listing = await http.get("/v1/providers", headers=admin)
            reprs = " ".join(
                repr(x) for e in gateway.manager.registry for x in (e.provider, e.settings)
            )
        seen_by_upstream = fake.chat_requests[0].headers.get("Authorization", "")
    outputs = {
        "answer": answer.text,
        "stream": stream.text,
        "admin listing": listing.text,
        "reprs": reprs,
        "config repr": repr(config),
    }
    leaked = [where for where, text in outputs.items() if password in text or basic in text]
    figures.record(
        "30",
        "places showing the password raw or as Basic base64 (answers, admin, reprs)",
        len(leaked),
        passed=not leaked,
    )
    assert seen_by_upstream == f"Basic {basic}"  # the user info is used, as configured
    assert answer.status_code == 401
    assert leaked == []


@pytest.mark.anyio
async def test_row31_debug_logging_never_carries_content(tmp_path: Path, figures: Figures) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text(
        '[health]\ninterval = 0\n\n[[providers]]\nname = "mock"\ntype = "mock"\n'
        'models = ["mock-chat"]\n'
    )
    canary = "CANARY-PROMPT-3d9e1b7a"
    chat = {"model": "mock-chat", "prompt": canary}
    # Over stdio, and over Streamable HTTP, whose SSE library logs every chunk at DEBUG.
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "leapmcp", "--config", str(config), "--log-level", "debug"],
        cwd=ROOT,
    )
    log = tmp_path / "stderr.log"
    with log.open("w") as errlog:
        async with Client(stdio_client(params, errlog=errlog)) as client:
            over_stdio = structured(await client.call_tool("chat", chat))
    port = free_port()
    args = ["leapmcp", "--config", str(config), "--http", "--port", str(port)]
    with running(*args, "--log-level", "debug") as process:
        wait_until_listening(port, process)
        # The JSON-RPC (legacy) path answers as SSE, whose library logs each chunk.
        async with http_session(f"http://127.0.0.1:{port}/mcp", mode="legacy") as client:
            over_http = structured(await client.call_tool("chat", chat))
    written = {"stdio": log.read_text(), "HTTP": process.stderr}
    for transport, text in written.items():
        figures.record(
            "31",
            f"leapmcp {transport} at --log-level debug: canary prompt or reply in "
            f"{text.count(chr(10))} log lines",
            text.count(canary),
            passed=canary not in text,
            target="0",
        )
    assert over_stdio["reply"] == over_http["reply"] == f"You said: {canary}"
    assert all("leapasgi.access" in text for text in written.values())  # it does log
    assert [canary in text for text in written.values()] == [False, False]


def test_row32_a_model_name_cannot_forge_a_log_line(
    caplog: pytest.LogCaptureFixture, figures: Figures
) -> None:
    caplog.set_level(logging.INFO, logger="leapasgi.access")
    forged = "m1\n2026-12-06 00:00:00,000 leapasgi.access chat model=m1 status=200 ms=1.0"
    names = [forged, "m1\x1b[2J\x1b[31mred", "m" * 200_000, "u1/m1\u2028fake"]
    with (
        reliability_gateway() as live,
        httpx.Client(base_url=f"http://127.0.0.1:{live.port}", timeout=10.0) as http,
    ):
        statuses = [http.post(CHAT, json={**BODY, "model": name}).status_code for name in names]
    lines = [r.getMessage() for r in caplog.records if r.name == "leapasgi.access"]
    bad = [
        line
        for line in lines
        if any(ord(c) < 0x20 or c in "\x7f\u2028\u2029" for c in line) or len(line) > 1000
    ]
    longest = max(len(line) for line in lines)
    figures.record(
        "32",
        "access lines with a control character, or over 1,000 characters (4 hostile names)",
        len(bad),
        passed=not bad,
    )
    figures.record("32", "longest access line, characters", longest, passed=longest <= 1000)
    assert statuses == [404, 404, 404, 200]  # u1 takes any model name it is sent
    assert len(lines) == 4
    assert bad == []
    assert re.search(r"model=m1\\x0a2026", lines[0])


@pytest.mark.anyio
async def test_row33_mcp_replies_keep_ordinary_text(figures: Figures) -> None:
    reply = "Released 2024-06-01 for org-plain-1234; see project proj-5678."
    async with FakeUpstream(default=Behavior(json_body=completion(reply))) as fake:
        provider = ProviderConfig(
            name="u1",
            base_url=f"{fake.base_url}?api-version=2024-06-01",
            api_key="sk-real-key-0123456789",
            headers={"OpenAI-Organization": "org-plain-1234", "OpenAI-Project": "proj-5678"},
            models=["m1"],
        )
        config = GatewayConfig(providers=[provider], health=HealthConfig(interval=0))
        async with (
            Gateway(config=config) as gateway,
            connect(build_server(gateway)) as client,
        ):
            answer = structured(await client.call_tool("chat", {"model": "m1", "prompt": "?"}))
    figures.record(
        "33",
        "an MCP reply quoting the api-version, organization and project values: unchanged",
        answer["reply"] == reply,
        passed=answer["reply"] == reply,
    )
    assert answer["reply"] == reply
