"""The commands as real processes: ``leapmcp`` over stdio and HTTP, ``leapasgi serve`` with /mcp."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx2
import pytest
from mcp import Client, StdioServerParameters
from mcp.client.stdio import stdio_client

from leapasgi.config import load_config
from leapasgi.exceptions import ConfigurationError
from leapmcp.cli import main
from tests.mcp.support import http_session, structured

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parents[2]
CONFIG = """
[health]
interval = 0

[routing.aliases]
default = ["mock/mock-chat"]

[[providers]]
name = "mock"
type = "mock"
models = ["mock-chat"]
"""
CHAT = {"model": "default", "prompt": "hi"}


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "gateway.toml"
    path.write_text(CONFIG)
    return path


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Process:
    """A server process and, once it stopped, what it wrote to stderr."""

    popen: subprocess.Popen[str]
    stderr: str = ""


@contextlib.contextmanager
def running(*args: str) -> Iterator[Process]:
    """A Python module run as a server process; stopped with Ctrl-C (SIGINT) at the end."""
    popen = subprocess.Popen(
        [sys.executable, "-m", *args],
        cwd=ROOT,
        env=clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    process = Process(popen)
    try:
        yield process
    finally:
        if popen.poll() is None:
            popen.send_signal(signal.SIGINT)
        _, process.stderr = popen.communicate(timeout=15)


def wait_until_listening(port: int, process: Process) -> None:
    for _ in range(400):
        if process.popen.poll() is not None:
            raise AssertionError(f"the server exited: {process.popen.communicate()}")
        with contextlib.suppress(httpx2.TransportError):
            httpx2.get(f"http://127.0.0.1:{port}/mcp", timeout=0.5, trust_env=False)
            return
        time.sleep(0.025)
    raise AssertionError("the server did not come up")


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_leapmcp_serves_stdio_and_logs_to_stderr_only(
    config: Path, tmp_path: Path, mode: str
) -> None:
    params = StdioServerParameters(
        command=sys.executable, args=["-m", "leapmcp", "--config", str(config)], cwd=ROOT
    )
    log = tmp_path / "stderr.log"
    with log.open("w") as errlog:
        async with Client(stdio_client(params, errlog=errlog), mode=mode) as client:
            names = {tool.name for tool in (await client.list_tools()).tools}
            answer = structured(await client.call_tool("chat", CHAT))
            bad = await client.call_tool("chat", {"model": "default"})
    assert "set_provider_status" not in names
    assert "chat" in names
    assert (answer["reply"], answer["provider"]) == ("You said: hi", "mock")
    assert bad.is_error
    assert "chat model=default provider=mock status=200" in log.read_text()


async def test_leapmcp_http_serves_on_loopback_with_admin_tools(tmp_path: Path) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text('[server]\nadmin_key = "adm-0123456789"\n' + CONFIG)
    port = free_port()
    args = ["leapmcp", "--config", str(path), "--http", "--port", str(port), "--admin-tools"]
    with running(*args) as process:
        wait_until_listening(port, process)
        async with http_session(f"http://127.0.0.1:{port}/mcp", key="adm-0123456789") as client:
            names = {tool.name for tool in (await client.list_tools()).tools}
            changed = structured(
                await client.call_tool(
                    "set_provider_status", {"provider": "mock", "status": "inactive"}
                )
            )
    assert "set_provider_status" in names
    assert changed["status"] == "inactive"
    assert process.popen.returncode == 0
    assert "Traceback" not in process.stderr
    assert "StreamableHTTP session manager shutting down" in process.stderr


async def test_leapasgi_serve_mounts_mcp_when_the_config_says_so(tmp_path: Path) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text('[server]\nmcp = true\napi_keys = ["k-0123456789"]\n' + CONFIG)
    port = free_port()
    with running("leapasgi", "serve", "--config", str(path), "--port", str(port)) as process:
        wait_until_listening(port, process)
        async with http_session(f"http://127.0.0.1:{port}/mcp", key="k-0123456789") as client:
            answer = structured(await client.call_tool("chat", CHAT))
    assert answer["reply"] == "You said: hi"
    assert process.popen.returncode == 0
    assert "Traceback" not in process.stderr
    assert "StreamableHTTP session manager shutting down" in process.stderr


def test_admin_tools_over_http_need_an_admin_key(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--config", str(config), "--http", "--admin-tools"]) == 2
    assert capsys.readouterr().err == (
        "leapmcp: Admin tools over HTTP need server.admin_key in the config: callers must "
        "present it\n"
    )


def test_a_bad_config_fails_with_its_reason(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--config", str(tmp_path / "missing.toml")]) == 2
    assert capsys.readouterr().err.startswith("leapmcp: ")


def test_mounted_admin_tools_need_an_admin_key_in_the_config(tmp_path: Path) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text("[server]\nmcp = true\nmcp_admin_tools = true\n" + CONFIG)
    with pytest.raises(ConfigurationError, match="mcp_admin_tools: set admin_key too"):
        load_config(path)
