"""Row 22: MCP over HTTP refuses a foreign Origin (403), a foreign Host (421), a missing or wrong
key (401), and `leapmcp --http` listens on 127.0.0.1 unless told otherwise."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import httpx

from leapmcp import build_http_app
from tests.mcp.support import ACCEPT, INITIALIZE, make_gateway, served
from tests.mcp.test_cli import running, wait_until_listening
from tests.reliability.harness import Figures

KEY = "k-rel-0123456789"
CASES: dict[str, tuple[dict[str, str], set[int]]] = {
    "bad Origin": (
        {"Authorization": f"Bearer {KEY}", "Origin": "http://evil.example"},
        {403},
    ),
    "bad Host": ({"Authorization": f"Bearer {KEY}", "Host": "evil.example:80"}, {421, 403}),
    "no key": ({}, {401}),
    "wrong key": ({"Authorization": "Bearer not-the-key-0000"}, {401}),
}


def _post(base: str, headers: dict[str, str]) -> httpx.Response:
    return httpx.post(f"{base}/mcp", json=INITIALIZE, headers={**ACCEPT, **headers}, timeout=10)


def test_row22_mcp_over_http_refuses_foreign_names_and_missing_keys(figures: Figures) -> None:
    gateway = make_gateway(api_keys=[KEY])
    results: dict[str, Any] = {}
    with served(lambda: build_http_app(gateway)) as base:
        allowed = _post(base, {"Authorization": f"Bearer {KEY}"})
        for name, (headers, expected) in CASES.items():
            response = _post(base, headers)
            results[name] = response.status_code
            ok = response.status_code in expected
            figures.record("22", f"{name}: status", response.status_code, passed=ok)
    assert allowed.status_code == 200
    for name, (_, expected) in CASES.items():
        assert results[name] in expected, (name, results[name])


def _listening_addresses(port: int) -> set[str]:
    """Local addresses with a listening TCP socket on ``port`` (from /proc/net/tcp{,6})."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, _, hex_port = local.partition(":")
            if state == "0A" and int(hex_port, 16) == port:
                if len(address) == 8:
                    found.add(socket.inet_ntoa(bytes.fromhex(address)[::-1]))
                else:
                    found.add(address)
    return found


def test_row22_leapmcp_http_binds_loopback_by_default(figures: Figures, tmp_path: Path) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text('[[providers]]\nname = "mock"\ntype = "mock"\n')
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    with running("leapmcp", "--config", str(config), "--http", "--port", str(port)) as process:
        wait_until_listening(port, process)
        addresses = _listening_addresses(port)
    ok = addresses == {"127.0.0.1"}
    figures.record("22", "default bind", ", ".join(sorted(addresses)), passed=ok)
    assert addresses == {"127.0.0.1"}
