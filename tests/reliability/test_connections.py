"""Rows 26-27: hostile connections against the real servers (``leapasgi serve`` and ``leapmcp
--http`` as processes). Request heads that never end, and many connections that send a little
and stall (slowloris) with the open-file limit at 256."""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.reliability.harness import Figures

ROOT = Path(__file__).resolve().parents[2]
CONFIG = """
[server]
head_timeout = {head_timeout}
keep_alive_timeout = 1

[health]
interval = 0

[[providers]]
name = "mock"
type = "mock"
models = ["mock-chat"]
"""
FD_LIMIT = 256


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize() / 2**20


def _limit_fds() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (FD_LIMIT, FD_LIMIT))


@contextlib.contextmanager
def _server(
    command: str, tmp_path: Path, *, head_timeout: float = 10.0, fd_limit: bool = False
) -> Iterator[tuple[int, subprocess.Popen[str]]]:
    config = tmp_path / "gateway.toml"
    config.write_text(CONFIG.format(head_timeout=head_timeout))
    port = _free_port()
    args = {
        "leapasgi": ["-m", "leapasgi", "serve", "--config", str(config), "--port", str(port)],
        "leapmcp": ["-m", "leapmcp", "--config", str(config), "--http", "--port", str(port)],
    }[command]
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
    process = subprocess.Popen(
        [sys.executable, *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        text=True,
        preexec_fn=_limit_fds if fd_limit else None,
    )
    try:
        for _ in range(400):
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port)):
                break
            time.sleep(0.025)
        else:
            raise AssertionError("the server did not come up")
        yield port, process
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=20)


def _send_until_closed(sock: socket.socket, pieces: Iterator[bytes], budget: int) -> int:
    """Send pieces until the server closes (or ``budget`` bytes went out); bytes sent."""
    sent = 0
    with contextlib.suppress(OSError):
        for piece in pieces:
            sock.sendall(piece)
            sent += len(piece)
            if sent >= budget:
                break
    return sent


def _answer(sock: socket.socket) -> bytes:
    sock.settimeout(5)
    data = b""
    with contextlib.suppress(OSError):
        while chunk := sock.recv(65536):
            data += chunk
    return data


@pytest.mark.parametrize("command", ["leapasgi", "leapmcp"])
def test_row26_request_heads_are_bounded(command: str, tmp_path: Path, figures: Figures) -> None:
    path = "/v1/chat/completions" if command == "leapasgi" else "/mcp"
    start = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n".encode()
    cases = {
        "8 KB header lines without end": (
            b"X-Filler: " + b"a" * 8190 + b"\r\n" for _ in range(400)
        ),
        "one endless header line": iter([b"X-Endless: "] + [b"a" * 8192] * 400),
        "500 small headers": iter([b"".join(b"X-H%d: 1\r\n" % i for i in range(500)) + b"\r\n"]),
    }
    results: dict[str, tuple[int, bytes, float]] = {}
    with _server(command, tmp_path) as (port, process):
        before = _rss_mb(process.pid)
        for name, pieces in cases.items():
            with socket.socket() as sock:
                # A small send buffer: what "sent" counts is then what the server let in, not
                # what a loaded machine's kernel took on its behalf before the server ran.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
                sock.connect(("127.0.0.1", port))
                sock.sendall(start)
                sent = _send_until_closed(sock, pieces, budget=3 * 2**20)
                answer = _answer(sock)
            results[name] = (sent, answer[:40], _rss_mb(process.pid) - before)
        alive = httpx.get(
            f"http://127.0.0.1:{port}/health"
            if command == "leapasgi"
            else f"http://127.0.0.1:{port}/mcp",
            timeout=5,
        )
    for name, (sent, answer, grew) in results.items():
        status = answer.split(b" ")[1].decode() if answer.startswith(b"HTTP/") else "closed"
        # What was sent includes what the kernel buffered before the server's answer.
        figures.record(
            "26",
            f"{command}, {name}: answer, KB written by the client, server RSS growth MB",
            f"{status}, {sent // 1024}, {grew:.1f}",
            passed=status in ("431", "closed") and grew < 10,
            target="431 or a close; < 10 MB (was +255 MB in 0.7 s, never cut off)",
        )
        assert status in ("431", "closed"), (name, answer)
        assert sent < 3 * 2**20, name  # cut off before the 3 MB the client had to send
        assert grew < 10, name
    assert alive.status_code in (200, 405)  # still serving (GET /mcp is 405)


def _closed_by_server(sock: socket.socket) -> bool:
    """True once the server answered (its 408) or closed; False while it still waits."""
    sock.setblocking(False)
    try:
        sock.recv(65536)
    except BlockingIOError:
        return False
    except OSError:
        return True
    return True


def test_row27_slow_and_idle_connections_cannot_starve_the_server(
    tmp_path: Path, figures: Figures
) -> None:
    with _server("leapasgi", tmp_path, head_timeout=1.0, fd_limit=True) as (port, _):
        stalled: list[socket.socket] = []
        try:
            for _ in range(FD_LIMIT):
                sock = socket.create_connection(("127.0.0.1", port))
                sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
                stalled.append(sock)
            started = time.monotonic()
            probe = httpx.get(f"http://127.0.0.1:{port}/health", timeout=10)
            probe_seconds = time.monotonic() - started
            time.sleep(2.5)  # past the 1 s head timeout (checked at most twice per timeout)
            still_open = sum(not _closed_by_server(sock) for sock in stalled)
            with socket.create_connection(("127.0.0.1", port)) as idle:
                idle.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                idle.settimeout(5)
                first = idle.recv(65536)
                time.sleep(1.6)  # past the 1 s keep-alive timeout
                idle_closed = _closed_by_server(idle)
        finally:
            for sock in stalled:
                sock.close()
    figures.record(
        "27",
        f"{FD_LIMIT} half-sent heads, open-file limit {FD_LIMIT}: /health status, seconds",
        f"{probe.status_code}, {probe_seconds:.2f}",
        passed=probe.status_code == 200,
    )
    figures.record(
        "27",
        "half-sent connections still open 2.5 s later (head timeout 1 s)",
        still_open,
        passed=still_open == 0,
        target="0 (was 242 after 8 s)",
    )
    figures.record(
        "27",
        "an idle keep-alive connection closed after 1.6 s (timeout 1 s)",
        idle_closed,
        passed=idle_closed,
    )
    assert probe.status_code == 200
    assert still_open == 0
    assert first.startswith(b"HTTP/1.1 200")
    assert idle_closed
