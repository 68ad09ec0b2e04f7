"""Instructions per request, gateway beside the floor: repeatable where CPU time is not.

    python benchmarks/gateway_instructions.py [--requests 200] [--modes json,stream,...]
    # needs valgrind

On a shared machine req/s and CPU time move by half between two runs of the same code; the
count of instructions a server executes per request does not. Each server (the floor
forwarder and ``leapasgi serve``) runs under callgrind with counting switched off, gets a
warm-up, then counting is switched on for N requests sent one after another on one
keep-alive connection; every (mode, target) gets a fresh server. Kernel time is not counted,
so this measures the Python work per request, not latency.

The modes and targets are benchmarks/gateway.py's: a chat completion plain and 20-chunk
streaming (``json``, ``stream``) through the floor and the gateway; a small Anthropic Messages
and OpenAI Responses request, plain and streaming, through the floor, the gateway passing it
through natively (``gateway``) and the gateway translating it to chat and back
(``translated``). The table gives each protocol path's count over the gateway's chat path of
the same shape (JSON or stream), when that mode is counted too: the repeatable view of the
pass-through target that benchmarks/gateway.py checks on CPU time.
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

from gateway import (
    HERE,
    MAX_NATIVE_CPU_RATIO,
    MODES,
    TARGETS,
    Mode,
    Server,
    Target,
    free_port,
    gateway_config,
    mode_names,
    targets_of,
)

WARMUP_REQUESTS = 30
# Python under callgrind starts about 50 times slower.
STARTUP_SECONDS = 120.0
_COLLECTED = re.compile(r"Collected\s*:\s*([\d,]+)")


def post(port: int, path: str, body: bytes, count: int) -> None:
    """``count`` requests on one keep-alive connection; each must answer 200."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=STARTUP_SECONDS)
    try:
        for _ in range(count):
            connection.request("POST", path, body, {"Content-Type": "application/json"})
            response = connection.getresponse()
            answer = response.read()
            if response.status != 200:
                raise RuntimeError(f"{response.status}: {answer[:300]!r}")
    finally:
        connection.close()


def count(
    name: str, command: list[str], port: int, path: str, body: bytes, requests: int, tmp: Path
) -> int:
    """Instructions per request of the server ``command`` serving ``body`` at ``path``."""
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
        post(port, path, body, WARMUP_REQUESTS)
        subprocess.run(
            ["callgrind_control", "-i", "on", str(server.pid)], check=True, capture_output=True
        )
        post(port, path, body, requests)
        subprocess.run(
            ["callgrind_control", "-i", "off", str(server.pid)], check=True, capture_output=True
        )
    finally:
        server.stop()
    found = _COLLECTED.findall(log.read_text())
    if not found:
        raise RuntimeError(f"{name}: callgrind printed no total:\n{server.tail()}")
    return int(found[-1].replace(",", "")) // requests


def measured(mode: Mode) -> list[Target]:
    """The targets counted for ``mode``: the upstream itself is not."""
    return [TARGETS[name] for name in targets_of(mode) if name != "direct"]


def print_row(mode: Mode, counts: dict[tuple[str, str], int]) -> None:
    """One mode's counts, the floor's over the gateway's, and each path's over chat's."""

    def k(target: str) -> str:
        found = counts.get((mode.name, target))
        return f"{found / 1000:8.0f} k" if found is not None else " " * 10

    def ratio(top: tuple[str, str], bottom: tuple[str, str]) -> str:
        if top not in counts or bottom not in counts:
            return ""
        return f"{counts[top] / counts[bottom]:.2f}"

    chat = (mode.chat, "gateway") if mode.chat is not None else None
    over_chat = [ratio((mode.name, t), chat) if chat else "" for t in ("gateway", "translated")]
    print(
        f"  {mode.name:<16} {k('floor')} {k('gateway')} {k('translated')}"
        f" {ratio((mode.name, 'floor'), (mode.name, 'gateway')):>13}"
        f" {over_chat[0]:>12} {over_chat[1]:>15}",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=200, help="counted requests per mode")
    parser.add_argument(
        "--modes",
        type=mode_names,
        default=list(MODES),
        help=f"comma-separated, among {','.join(MODES)}",
    )
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
        config.write_text(gateway_config(upstream.port, 0, protocols=True))
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
        print(
            f"  {'mode':<16} {'floor':>10} {'gateway':>10} {'translated':>10}"
            f" {'floor/gateway':>13} {'gateway/chat':>12} {'translated/chat':>15}"
        )
        counts: dict[tuple[str, str], int] = {}
        for mode in MODES.values():
            if mode.name not in args.modes:
                continue
            for target in measured(mode):
                counts[mode.name, target.name] = count(
                    f"{target.name}-{mode.name}",
                    commands[target.server],
                    free_port(),
                    mode.path,
                    mode.body(target.model),
                    args.requests,
                    workdir,
                )
            print_row(mode, counts)
        print(f"  (the pass-through target: gateway/chat <= {MAX_NATIVE_CPU_RATIO})")


if __name__ == "__main__":
    main()
