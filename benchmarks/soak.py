"""Soak: a steady rate of chat requests through ``leapasgi serve``, watching for slow leaks.

    python benchmarks/soak.py [--seconds 60] [--rate 50] [--warmup 10] [--json soak.json]
    python benchmarks/soak.py --chaos [--seconds 60] [--seed 7]

Starts the fake upstream (benchmarks/upstream.py) and ``leapasgi serve`` with one provider over
it, on 127.0.0.1, then sends ``rate`` requests a second for ``seconds`` (open loop: a request
starts on schedule whether or not the earlier ones finished), 70% plain and 30% streaming
(20 chunks). It reports errors, the gateway's RSS every second (drift after the warm-up), and
its open file descriptors and asyncio tasks before and after the load.

The gateway runs as ``leapasgi serve`` itself, started through a few lines that install a
SIGUSR1 handler writing ``len(asyncio.all_tasks())`` to a file: the task count needs no route.
File descriptors come from /proc; sockets are told apart with /proc/<pid>/net/tcp, since idle
keep-alive connections to the upstream legitimately outlive the load (the pool closes them
after 30 s idle): those are reported, and the other descriptors must be back to baseline.

``--chaos`` runs the chaos scenario instead (tests/reliability/test_chaos.py: seeded faults on
three fake upstreams behind a live gateway) for ``--seconds``, and prints its figures.
The exit status is 1 when a check fails.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import aiohttp

HERE = Path(__file__).resolve().parent
# Run as a script or imported as benchmarks.soak (the CI soak test): the sibling module
# benchmarks/gateway.py is importable as ``gateway`` either way.
sys.path.insert(0, str(HERE))
from gateway import Server, free_port, gateway_config  # noqa: E402

ROOT = HERE.parent
PATH = "/v1/chat/completions"
BODY = {"model": "bench", "messages": [{"role": "user", "content": "hi"}]}
STREAM_SHARE = 0.3
STREAM_CHUNKS = 20  # what benchmarks/upstream.py streams

DEFAULT_SECONDS = 60
DEFAULT_RATE = 50
DEFAULT_WARMUP = 10.0
SAMPLE_INTERVAL = 1.0
REQUEST_TIMEOUT = 30.0
SETTLE_TIMEOUT = 5.0
REPORT_TIMEOUT = 2.0
MAX_RSS_DRIFT_MB = 10.0
TCP_LISTEN = "0A"

# ``leapasgi serve``, plus a SIGUSR1 handler that appends the event loop's task count to the
# file named by LEAP_SOAK_TASKS (signal handlers run in the main thread, where the loop runs).
BOOT = """\
import asyncio, os, signal, sys

def _report(*_):
    try:
        count = len(asyncio.all_tasks())
    except RuntimeError:
        count = -1
    with open(os.environ["LEAP_SOAK_TASKS"], "a") as out:
        out.write(f"{count}\\n")

signal.signal(signal.SIGUSR1, _report)
from leapasgi.cli import main
sys.exit(main(sys.argv[1:]))
"""


@dataclass
class Descriptors:
    """A process's open file descriptors, its sockets sorted by peer."""

    total: int
    upstream: int
    clients: int

    @property
    def own(self) -> int:
        """Everything but idle keep-alive connections to the upstream."""
        return self.total - self.upstream


@dataclass
class Check:
    name: str
    value: str
    passed: bool


@dataclass
class SoakResult:
    """What one soak run measured; ``--json`` writes it."""

    seconds: float
    rate: float
    warmup: float
    requests: int = 0
    streams: int = 0
    errors: int = 0
    error_samples: list[str] = field(default_factory=list)
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    rss_mb: list[tuple[float, float]] = field(default_factory=list)
    rss_drift_mb: float = 0.0
    fds_before: Descriptors | None = None
    fds_after: Descriptors | None = None
    tasks_before: int = 0
    tasks_after: int = 0
    fds_peak: int = 0
    tasks_peak: int = 0
    checks: list[Check] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(check.passed for check in self.checks)


@dataclass
class Processes:
    upstream: Server
    gateway: Server
    tasks_file: Path

    def task_count(self) -> int:
        """The gateway's asyncio tasks, asked for with SIGUSR1."""
        before = self._reports()
        os.kill(self.gateway.pid, signal.SIGUSR1)
        deadline = time.monotonic() + REPORT_TIMEOUT
        while time.monotonic() < deadline:
            reports = self._reports()
            if len(reports) > len(before):
                return int(reports[-1])
            time.sleep(0.02)
        raise RuntimeError("the gateway did not report its task count")

    def _reports(self) -> list[str]:
        if not self.tasks_file.exists():
            return []
        return self.tasks_file.read_text().split()

    def descriptors(self) -> Descriptors:
        return open_descriptors(
            self.gateway.pid, upstream_port=self.upstream.port, own_port=self.gateway.port
        )

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.gateway.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError("no VmRSS for the gateway")


@contextmanager
def processes(workdir: Path) -> Iterator[Processes]:
    """The upstream and the gateway, running; both stopped on the way out."""
    python = sys.executable
    env = {**os.environ, "LEAP_SOAK_TASKS": str(workdir / "tasks.txt")}
    with ExitStack() as stack:
        upstream = Server("upstream", [python, str(HERE / "upstream.py")], workdir / "up.log", env)
        stack.callback(upstream.stop)
        upstream.wait_ready(None)
        config = workdir / "gateway.toml"
        port = free_port()
        config.write_text(gateway_config(upstream.port, port))
        command = [python, "-c", BOOT, "serve", "--config", str(config), "--port", str(port)]
        gateway = Server("gateway", command, workdir / "gateway.log", env)
        stack.callback(gateway.stop)
        gateway.wait_ready(port)
        yield Processes(upstream, gateway, workdir / "tasks.txt")


def _tcp_sockets(pid: int) -> dict[str, tuple[int, int, str]]:
    """inode -> (local port, remote port, state) for the process's TCP sockets."""
    found: dict[str, tuple[int, int, str]] = {}
    for table in ("tcp", "tcp6"):
        path = Path(f"/proc/{pid}/net/{table}")
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            parts = line.split()
            local, remote, state, inode = parts[1], parts[2], parts[3], parts[9]
            found[inode] = (_port(local), _port(remote), state)
    return found


def _port(address: str) -> int:
    return int(address.rsplit(":", 1)[1], 16)


def open_descriptors(pid: int, *, upstream_port: int, own_port: int) -> Descriptors:
    """Open descriptors of ``pid``: connections to the upstream, from clients, and all."""
    sockets = _tcp_sockets(pid)
    total = upstream = clients = 0
    fd_dir = Path(f"/proc/{pid}/fd")
    for entry in fd_dir.iterdir():
        try:
            target = os.readlink(entry)
        except OSError:
            continue  # closed while we looked
        total += 1
        if not target.startswith("socket:["):
            continue
        local, remote, state = sockets.get(target[8:-1], (0, 0, ""))
        if remote == upstream_port:
            upstream += 1
        elif local == own_port and state != TCP_LISTEN:
            clients += 1
    return Descriptors(total, upstream, clients)


async def _one(
    session: aiohttp.ClientSession, url: str, *, stream: bool, result: SoakResult
) -> float | None:
    """One request; its latency in seconds, or None (and an error noted) if it failed."""
    started = time.perf_counter()
    body = {**BODY, "stream": True} if stream else BODY
    try:
        async with session.post(url, json=body) as response:
            data = await response.read()
        problem = _problem(response.status, data, stream=stream)
    except (aiohttp.ClientError, TimeoutError) as exc:
        problem = f"{type(exc).__name__}: {exc}"
    if problem is None:
        return time.perf_counter() - started
    result.errors += 1
    if len(result.error_samples) < 10:
        result.error_samples.append(problem)
    return None


def _problem(status: int, data: bytes, *, stream: bool) -> str | None:
    if status != 200:
        return f"status {status}: {data[:200]!r}"
    if not stream:
        return None if b'"choices"' in data else f"no choices: {data[:200]!r}"
    if not data.endswith(b"data: [DONE]\n\n"):
        return f"stream without [DONE]: {data[-200:]!r}"
    if data.count(b'data: {"id"') != STREAM_CHUNKS:
        return f"stream with {data.count(b'data: {')} chunks"
    return None


async def _sample(procs: Processes, result: SoakResult, start: float) -> None:
    """RSS, descriptors and tasks every SAMPLE_INTERVAL, until cancelled."""
    loop = asyncio.get_running_loop()
    while True:
        at = round(loop.time() - start, 2)
        result.rss_mb.append((at, procs.rss_mb()))
        result.fds_peak = max(result.fds_peak, procs.descriptors().total)
        result.tasks_peak = max(result.tasks_peak, await asyncio.to_thread(procs.task_count))
        await asyncio.sleep(SAMPLE_INTERVAL - (loop.time() - start - at))


async def _load(procs: Processes, result: SoakResult, *, seed: int) -> None:
    """Requests on schedule for result.seconds, sampling the gateway meanwhile."""
    url = f"http://127.0.0.1:{procs.gateway.port}{PATH}"
    rng = random.Random(seed)
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT)
    loop = asyncio.get_running_loop()
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        start = loop.time()
        sampler = asyncio.create_task(_sample(procs, result, start))
        tasks: list[asyncio.Task[float | None]] = []
        for i in range(int(result.seconds * result.rate)):
            await asyncio.sleep(max(0.0, start + i / result.rate - loop.time()))
            stream = rng.random() < STREAM_SHARE
            result.streams += stream
            tasks.append(asyncio.create_task(_one(session, url, stream=stream, result=result)))
        result.requests = len(tasks)
        latencies = sorted(v for v in await asyncio.gather(*tasks) if v is not None)
        sampler.cancel()
        result.rss_mb.append((round(loop.time() - start, 2), procs.rss_mb()))
    if latencies:
        result.p50_ms = statistics.median(latencies) * 1000
        result.p99_ms = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000


def _smoke(procs: Processes) -> None:
    """One request of each kind, so pools and caches exist before the baseline."""
    probe = SoakResult(seconds=0, rate=0, warmup=0)

    async def both() -> None:
        url = f"http://127.0.0.1:{procs.gateway.port}{PATH}"
        async with aiohttp.ClientSession() as session:
            for stream in (False, True):
                await _one(session, url, stream=stream, result=probe)

    asyncio.run(both())
    if probe.errors:
        raise RuntimeError(f"the gateway does not answer: {probe.error_samples}")


def _settle(procs: Processes, result: SoakResult) -> None:
    """Wait (briefly) for the gateway to let go of what the load held, then measure."""
    before = result.fds_before
    assert before is not None
    deadline = time.monotonic() + SETTLE_TIMEOUT
    while True:
        result.fds_after = procs.descriptors()
        result.tasks_after = procs.task_count()
        settled = result.fds_after.own <= before.own and result.tasks_after <= result.tasks_before
        if settled or time.monotonic() > deadline:
            return
        time.sleep(0.2)


def drift_mb(samples: list[tuple[float, float]], warmup: float) -> float:
    """The largest RSS after the warm-up, over the RSS at the end of the warm-up."""
    after = [mb for t, mb in samples if t >= warmup]
    return max(after) - after[0] if after else 0.0


def run_soak(
    *, seconds: float = DEFAULT_SECONDS, rate: float = DEFAULT_RATE, warmup: float | None = None
) -> SoakResult:
    """Run the soak and return what it measured, with its checks."""
    result = SoakResult(
        seconds=seconds, rate=rate, warmup=DEFAULT_WARMUP if warmup is None else warmup
    )
    with tempfile.TemporaryDirectory(prefix="leapasgi-soak-") as tmp, processes(Path(tmp)) as procs:
        _smoke(procs)
        result.fds_before = procs.descriptors()
        result.tasks_before = procs.task_count()
        asyncio.run(_load(procs, result, seed=int(seconds * rate)))
        _settle(procs, result)
    result.rss_drift_mb = drift_mb(result.rss_mb, result.warmup)
    result.checks = checks(result)
    return result


def checks(result: SoakResult) -> list[Check]:
    before, after = result.fds_before, result.fds_after
    assert before is not None
    assert after is not None
    drift = result.rss_drift_mb
    return [
        Check("errors == 0", f"{result.errors} of {result.requests}", result.errors == 0),
        Check(
            f"RSS drift after {result.warmup:g} s <= {MAX_RSS_DRIFT_MB:g} MB",
            f"{drift:.1f} MB",
            drift <= MAX_RSS_DRIFT_MB,
        ),
        Check(
            "fds back to baseline (idle upstream keep-alive connections aside)",
            f"{before.own} -> {after.own} (peak {result.fds_peak}; +{after.upstream} idle "
            f"upstream, {after.clients} client connections)",
            after.own <= before.own and after.clients == 0,
        ),
        Check(
            "asyncio tasks back to baseline",
            f"{result.tasks_before} -> {result.tasks_after} (peak {result.tasks_peak})",
            result.tasks_after <= result.tasks_before,
        ),
    ]


def print_result(result: SoakResult) -> None:
    rss = [mb for _, mb in result.rss_mb]
    print(
        f"{result.requests} requests ({result.streams} streaming) in {result.seconds:g} s at "
        f"{result.rate:g}/s: {result.errors} errors, p50 {result.p50_ms:.1f} ms, "
        f"p99 {result.p99_ms:.1f} ms"
    )
    if rss:
        print(f"RSS: {rss[0]:.1f} MB at start, {rss[-1]:.1f} MB at end, max {max(rss):.1f} MB")
    for sample in result.error_samples:
        print(f"  error: {sample}")
    print("checks:")
    for check in result.checks:
        print(f"  {'PASS' if check.passed else 'FAIL'}  {check.name}: {check.value}")


def run_chaos(seconds: float, seed: int | None) -> int:
    """The chaos scenario of the reliability suite, for ``seconds``; prints its figures."""
    with tempfile.TemporaryDirectory(prefix="leapasgi-chaos-") as tmp:
        figures = Path(tmp) / "figures.json"
        env = {**os.environ, "LEAP_CHAOS_SECONDS": str(seconds), "LEAP_FIGURES": str(figures)}
        if seed is not None:
            env["LEAP_CHAOS_SEED"] = str(seed)
        test = "tests/reliability/test_chaos.py"
        command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", test]
        status = subprocess.run(command, cwd=ROOT, env=env, check=False).returncode
        if figures.exists():
            for row, found in json.loads(figures.read_text())["rows"].items():
                for figure in found:
                    verdict = "PASS" if figure["passed"] else "FAIL"
                    print(f"  row {row} {verdict}  {figure['name']}: {figure['value']}")
    return 0 if status == 0 else 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=DEFAULT_SECONDS)
    parser.add_argument("--rate", type=float, default=DEFAULT_RATE, help="requests per second")
    parser.add_argument("--warmup", type=float, help=f"default {DEFAULT_WARMUP:g} s")
    parser.add_argument("--chaos", action="store_true", help="run the chaos scenario instead")
    parser.add_argument("--seed", type=int, help="chaos: the fault schedule's seed")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    if args.seconds <= 0 or args.rate <= 0:
        parser.error("--seconds and --rate must be positive")
    # A plain kill should also stop the children, through the finally clauses.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if args.chaos:
        sys.exit(run_chaos(args.seconds, args.seed))
    result = run_soak(seconds=args.seconds, rate=args.rate, warmup=args.warmup)
    print_result(result)
    if args.json is not None:
        args.json.write_text(json.dumps(asdict(result), indent=2) + "\n")
    sys.exit(0 if result.passed else 1)


if __name__ == "__main__":
    main()
