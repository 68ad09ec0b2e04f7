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

The cache and state modes get a line each: ``cache_hit`` and ``cache_hit_stream`` (one body
again and again: hits after the warm-up) through the floor and a gateway with the cache on
(``cached``); ``cache_miss`` (a body of its own per request: lookup, claim, upstream call and
store every time, with rate limits reserved and settled) through the floor and two gateways,
one keeping its state in memory and one in a redis-server started for the run (not under
callgrind). Its line gives redis over memory: the repeatable view of the Redis target
benchmarks/gateway.py checks on CPU time. Callgrind counts the Redis client's work
(state/_resp.py) in the gateway (commands built, replies parsed, its asyncio plumbing) but
neither redis-server's work nor the kernel's for the extra round trips, which CPU time does
count. Under callgrind
the redis gateway gets ``op_timeout = 10`` (a slowed process would otherwise time its
operations out and fall back to memory) and ``sync_interval = 5``, so the breaker sync in the
background adds little to the count.
"""

from __future__ import annotations

import argparse
import http.client
import itertools
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

from gateway import (
    DEGRADED_LOG,
    GATEWAYS,
    HERE,
    MAX_NATIVE_CPU_RATIO,
    MAX_REDIS_ADDED_CPU_MS,
    MODES,
    PROTOCOL_TARGETS,
    TARGETS,
    Mode,
    Server,
    Target,
    free_port,
    mode_names,
    servers_of,
    targets_of,
)
from redis_server import redis_command

WARMUP_REQUESTS = 30
# Python under callgrind starts about 50 times slower.
STARTUP_SECONDS = 120.0
_COLLECTED = re.compile(r"Collected\s*:\s*([\d,]+)")
# The [state] keys of the gateways under callgrind (see the module docstring).
CALLGRIND_STATE = {"op_timeout": 10.0, "sync_interval": 5.0}


def post(port: int, path: str, bodies: Iterator[bytes], count: int) -> None:
    """``count`` requests of the next ``bodies`` on one keep-alive connection; each must
    answer 200."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=STARTUP_SECONDS)
    try:
        for body in itertools.islice(bodies, count):
            connection.request("POST", path, body, {"Content-Type": "application/json"})
            response = connection.getresponse()
            answer = response.read()
            if response.status != 200:
                raise RuntimeError(f"{response.status}: {answer[:300]!r}")
    finally:
        connection.close()


def count(
    name: str,
    command: list[str],
    port: int,
    path: str,
    bodies: Iterator[bytes],
    requests: int,
    tmp: Path,
) -> int:
    """Instructions per request of the server ``command`` serving ``bodies`` at ``path``."""
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
        post(port, path, bodies, WARMUP_REQUESTS)
        subprocess.run(
            ["callgrind_control", "-i", "on", str(server.pid)], check=True, capture_output=True
        )
        post(port, path, bodies, requests)
        subprocess.run(
            ["callgrind_control", "-i", "off", str(server.pid)], check=True, capture_output=True
        )
    finally:
        server.stop()
    text = log.read_text()
    if DEGRADED_LOG in text:
        raise RuntimeError(f"{name}: the state backend fell back to local state:\n{server.tail()}")
    found = _COLLECTED.findall(text)
    if not found:
        raise RuntimeError(f"{name}: callgrind printed no total:\n{server.tail()}")
    return int(found[-1].replace(",", "")) // requests


def measured(mode: Mode) -> list[Target]:
    """The targets counted for ``mode``: the upstream itself is not."""
    return [TARGETS[name] for name in targets_of(mode) if name != "direct"]


def bodies(mode: Mode, target: Target) -> Iterator[bytes]:
    """The bodies ``mode`` sends ``target``, request after request."""
    if not mode.unique:
        return itertools.repeat(mode.body(target.model))
    return (mode.body(target.model, str(n)) for n in itertools.count())


def tabled(mode: Mode) -> bool:
    """Whether ``mode``'s counts go in the table of the floor, gateway and translated paths."""
    return {target.name for target in measured(mode)} <= {"floor", *PROTOCOL_TARGETS}


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


def print_line(mode: Mode, counts: dict[tuple[str, str], int]) -> None:
    """A cache or state mode's counts, each over the floor's, and redis's over memory's."""
    names = [target.name for target in measured(mode)]
    found = {name: counts[mode.name, name] for name in names if (mode.name, name) in counts}
    cells = [f"{name} {n / 1000:.0f} k" for name, n in found.items()]
    floor = found.get("floor")
    if floor:
        cells += [f"{name}/floor {n / floor:.2f}" for name, n in found.items() if name != "floor"]
    memory, redis = found.get("memory"), found.get("redis")
    if memory and redis:
        cells.append(f"redis/memory {redis / memory:.2f} ({(redis - memory) / 1000:+.0f} k)")
    print(f"  {mode.name:<16} " + "   ".join(cells), flush=True)


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
    modes = [mode for mode in MODES.values() if mode.name in args.modes]
    needed = servers_of(modes)
    with tempfile.TemporaryDirectory(prefix="leapasgi-instr-") as tmp, ExitStack() as stack:
        workdir = Path(tmp)
        upstream = Server("upstream", [python, str(HERE / "upstream.py")], workdir / "up.log")
        stack.callback(upstream.stop)
        upstream.wait_ready(None)
        redis_url = None
        if "redis" in needed:
            port = free_port()
            command = redis_command(port, workdir)
            redis = Server("redis-server", command, workdir / "redis-server.log")
            stack.callback(redis.stop)
            redis.wait_ready(port)
            redis_url = f"redis://127.0.0.1:{port}/0"
        commands = {
            "floor": [
                python,
                str(HERE / "forwarder.py"),
                "--upstream",
                f"http://127.0.0.1:{upstream.port}",
            ]
        }
        for name, setup in GATEWAYS.items():
            if name in needed:
                config = workdir / f"{name}.toml"
                text = setup.config(upstream.port, 0, redis_url=redis_url, state=CALLGRIND_STATE)
                config.write_text(text)
                commands[name] = [python, "-m", "leapasgi", "serve", "--config", str(config)]
        print(f"instructions per request (callgrind, {args.requests} requests, warm)")
        if any(tabled(mode) for mode in modes):
            print(
                f"  {'mode':<16} {'floor':>10} {'gateway':>10} {'translated':>10}"
                f" {'floor/gateway':>13} {'gateway/chat':>12} {'translated/chat':>15}"
            )
        counts: dict[tuple[str, str], int] = {}
        for mode in sorted(modes, key=lambda mode: not tabled(mode)):
            for target in measured(mode):
                counts[mode.name, target.name] = count(
                    f"{target.name}-{mode.name}",
                    commands[target.server],
                    free_port(),
                    mode.path,
                    bodies(mode, target),
                    args.requests,
                    workdir,
                )
            if tabled(mode):
                print_row(mode, counts)
            else:
                print_line(mode, counts)
        if any(tabled(mode) for mode in modes):
            print(f"  (the pass-through target: gateway/chat <= {MAX_NATIVE_CPU_RATIO})")
        if "redis" in needed:
            print(
                f"  (the redis target, on CPU time: redis <= memory + {MAX_REDIS_ADDED_CPU_MS} ms"
                " per request;\n   counted here: the gateway's Python, its Redis client included,"
                " not redis-server nor the kernel)"
            )


if __name__ == "__main__":
    main()
