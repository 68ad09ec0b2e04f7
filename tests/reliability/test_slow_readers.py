"""Row 15: clients reading a big stream at 1 KB/s do not make the gateway buffer the stream in
memory (backpressure reaches the upstream), and normal traffic beside them keeps its latency.
"""

from __future__ import annotations

import json
import socket
import statistics
import threading
import time
from pathlib import Path

import httpx

from tests.fake_upstream import Behavior, chunk, completion, sse
from tests.reliability.harness import Figures, reliability_gateway

SLOW_READERS = 4
READ_RATE = 1024  # bytes per second
SLOW_SECONDS = 2.0
# 4,000 chunks of ~1 KB: 4 MB the gateway must not hold for a reader that takes 1 KB/s.
BIG = Behavior(
    events=sse(
        chunk({"role": "assistant", "content": ""}), *[chunk({"content": "y" * 1000})] * 4000
    )
)
NORMAL_REQUESTS = 60
MAX_GROWTH_MB = 10.0


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def _slow_reader(port: int, stop: threading.Event, read: list[int]) -> None:
    body = json.dumps(
        {"model": "big", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    ).encode()
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", port))
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/json\r\nContent-Length: "
            + str(len(body)).encode()
            + b"\r\n\r\n"
            + body
        )
        sock.settimeout(2.0)
        while not stop.is_set():
            data = sock.recv(READ_RATE // 10)
            if not data:
                return
            read.append(len(data))
            time.sleep(0.1)


def _latencies(client: httpx.Client, count: int) -> list[float]:
    taken = []
    for _ in range(count):
        started = time.perf_counter()
        response = client.post(
            "/v1/chat/completions",
            json={"model": "m1", "messages": [{"role": "user", "content": "hi"}]},
        )
        taken.append(time.perf_counter() - started)
        assert response.status_code == 200
    return taken


def _p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100)[98]


def test_row15_slow_readers_are_held_back_not_buffered(figures: Figures) -> None:
    options = {"u3": {"models": ["big"], "total_timeout": 30.0}}
    with reliability_gateway(provider_options=options, routing={"request_timeout": 30.0}) as live:
        live.upstreams[0].default = Behavior(json_body=completion("fine"))
        live.upstreams[1].default = Behavior(json_body=completion("fine"))
        live.upstreams[2].default = BIG
        with httpx.Client(base_url=f"http://127.0.0.1:{live.port}", timeout=10) as client:
            _latencies(client, 10)  # warm up
            before = _latencies(client, NORMAL_REQUESTS)
            rss_before = _rss_mb()
            stop = threading.Event()
            read: list[int] = []
            readers = [
                threading.Thread(target=_slow_reader, args=(live.port, stop, read), daemon=True)
                for _ in range(SLOW_READERS)
            ]
            for reader in readers:
                reader.start()
            time.sleep(SLOW_SECONDS / 2)  # the streams have filled every buffer they can
            during = _latencies(client, NORMAL_REQUESTS)
            time.sleep(max(0.0, SLOW_SECONDS / 2 - sum(during)))
            rss_during = _rss_mb()
            stop.set()
            for reader in readers:
                reader.join(5)
    growth = max(0.0, rss_during - rss_before) / SLOW_READERS
    p99_before, p99_during = _p99(before), _p99(during)
    # "Barely moves": within twice the quiet p99, or 10 ms, whichever is larger.
    steady = p99_during <= max(2 * p99_before, p99_before + 0.010)
    figures.record(
        "15", "RSS growth per slow stream (MB)", round(growth, 2), passed=growth < MAX_GROWTH_MB
    )
    figures.record(
        "15",
        "normal p99 before -> during (ms)",
        f"{p99_before * 1000:.1f} -> {p99_during * 1000:.1f}",
        passed=steady,
    )
    assert sum(read) > 0
    assert growth < MAX_GROWTH_MB
    assert steady, (p99_before, p99_during)
    # Every slow stream was served by U3 (the kernel's loopback buffers, up to 32 MB here,
    # may take the rest of a stream; they are not the gateway's memory).
    assert len(live.upstreams[2].chat_requests) == SLOW_READERS
