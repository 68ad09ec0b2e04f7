"""Instructions per request, gateway beside the floor: repeatable where CPU time is not.

    python benchmarks/gateway_instructions.py [--requests 200]      # needs valgrind

On a shared machine req/s and CPU time move by half between two runs of the same code; the
count of instructions a server executes per request does not. Each server (the floor
forwarder and ``leapasgi serve``) runs under callgrind with counting switched off, gets a
warm-up, then counting is switched on for N requests sent one after another on one
keep-alive connection, plain and 20-chunk streaming. Kernel time is not counted, so this
measures the Python work per request, not latency.
"""

from __future__ import annotations

import argparse
import http.client
import re
import shutil
import subprocess
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path

from gateway import BODY, HERE, PATH, STREAM_BODY, Server, free_port, gateway_config

WARMUP_REQUESTS = 30
# Python under callgrind starts about 50 times slower.
STARTUP_SECONDS = 120.0
_COLLECTED = re.compile(r"Collected\s*:\s*([\d,]+)")


def post(port: int, body: bytes, count: int) -> None:
    """``count`` requests on one keep-alive connection; each must answer 200."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=STARTUP_SECONDS)
    try:
        for _ in range(count):
            connection.request("POST", PATH, body, {"Content-Type": "application/json"})
            response = connection.getresponse()
            answer = response.read()
            if response.status != 200:
                raise RuntimeError(f"{response.status}: {answer[:300]!r}")
    finally:
        connection.close()


def count(name: str, command: list[str], port: int, body: bytes, requests: int, tmp: Path) -> int:
    """Instructions per request of the server ``command`` serving ``body``."""
    log = tmp / f"{name}.log"
    valgrind = [
        "valgrind",
        "--tool=callgrind",
        "--instr-atstart=no",
        f"--callgrind-out-file={tmp / (name + '.out')}",
    ]
    server = Server(name, [*valgrind, *command, "--port", str(port)], log)
    try:
        server.wait_ready(port, timeout=STARTUP_SECONDS)
        post(port, body, WARMUP_REQUESTS)
        subprocess.run(
            ["callgrind_control", "-i", "on", str(server.pid)], check=True, capture_output=True
        )
        post(port, body, requests)
        subprocess.run(
            ["callgrind_control", "-i", "off", str(server.pid)], check=True, capture_output=True
        )
    finally:
        server.stop()
    found = _COLLECTED.findall(log.read_text())
    if not found:
        raise RuntimeError(f"{name}: callgrind printed no total:\n{server.tail()}")
    return int(found[-1].replace(",", "")) // requests


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=200, help="counted requests per mode")
    args = parser.parse_args()
    if shutil.which("valgrind") is None:
        sys.exit("valgrind is missing: apt-get install -y valgrind")
    python = sys.executable
    with tempfile.TemporaryDirectory(prefix="leapasgi-instr-") as tmp, ExitStack() as stack:
        workdir = Path(tmp)
        upstream = Server("upstream", [python, str(HERE / "upstream.py")], workdir / "up.log")
        stack.callback(upstream.stop)
        upstream.wait_ready(None)
        config = workdir / "gateway.toml"
        config.write_text(gateway_config(upstream.port, 0))
        commands = {
            "floor": [
                python,
                str(HERE / "forwarder.py"),
                "--upstream",
                f"http://127.0.0.1:{upstream.port}",
            ],
            "gateway": [python, "-m", "leapasgi", "serve", "--config", str(config)],
        }
        print(f"instructions per request (callgrind, {args.requests} requests, warm)")
        for mode, body in (("json", BODY), ("stream", STREAM_BODY)):
            counts = {
                name: count(f"{name}-{mode}", command, free_port(), body, args.requests, workdir)
                for name, command in commands.items()
            }
            ratio = counts["floor"] / counts["gateway"]
            print(
                f"  {mode:<6} floor {counts['floor'] / 1000:7.0f} k   "
                f"gateway {counts['gateway'] / 1000:7.0f} k   floor/gateway {ratio:.2f}"
            )


if __name__ == "__main__":
    main()
