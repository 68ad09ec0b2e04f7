"""Throughput, latency, CPU and memory of the gateway next to a direct call and a bare forwarder.

    python benchmarks/gateway.py [--duration 5 | --quick] [--rounds 1] [--json results.json]
        [--modes json,stream,messages,messages_stream,responses,responses_stream]

Starts three processes on 127.0.0.1: the fake upstream (benchmarks/upstream.py), the floor
(benchmarks/forwarder.py: Starlette + aiohttp passing bytes through) and ``leapasgi serve`` with
two providers pointing at the upstream: ``bench`` speaks Messages and Responses natively
(``protocols = ["messages", "responses"]``), ``bench-chat`` only chat completions. wrk
(installed with apt-get when missing) POSTs at 1, 16 and 64 connections to each target; the CPU
per request is the serving process's own utime + stime. With ``--rounds N`` the whole sweep runs
N times and each figure is the median: on a busy machine one sweep is noisy. The run ends with
the targets checked; the exit status is 0 whether they pass or not.

Modes: ``json`` and ``stream`` are a chat completion request, plain and streaming (20 chunks),
against the upstream itself (direct), the floor and the gateway. ``messages`` and
``responses`` are a small Anthropic Messages and OpenAI Responses request, ``*_stream`` their
streaming form (18 text deltas in the protocol's own event sequence), against the floor, the
gateway passing them through natively (model ``bench``: row ``gateway``) and the gateway
translating them to chat completions and back (model ``bench-chat``: row ``translated``). The
Responses bodies say ``"store": false``: the gateway stores responses by default, and a stored
response per request would grow its memory through the run. Native pass-through must cost at
most 1.2x the chat path's CPU per request of the same shape (JSON or stream); the translated
paths' ratios are reported beside it.

The upstream writes its events back to back, so on loopback they mostly arrive in one or two
reads and the floor relays them as such; the gateway decodes and re-sends each event. The
streaming ratio is therefore the per-chunk cost at its most visible.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
LUA = HERE / "wrk_post.lua"
PATH = "/v1/chat/completions"
# The model of the provider speaking Messages and Responses natively, and of the chat-only one.
NATIVE_MODEL = "bench"
CHAT_MODEL = "bench-chat"
CONNECTIONS = (1, 16, 64)
DEFAULT_DURATION = 5
QUICK_DURATION = 2
WARMUP = 1
STARTUP_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0
IMPORT_RUNS = 5

MIN_JSON_RATIO = 0.6
MIN_STREAM_RATIO = 0.5
RATIO_CONNECTIONS = 16
MAX_NATIVE_CPU_RATIO = 1.2
MAX_ADDED_P50_MS = 0.5
MAX_RSS_MB = 100.0
MAX_IMPORT_MS = 300.0

_TIME_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4, "h": 3.6e6}
_DURATION = r"([\d.]+)(us|ms|s|m|h)"


@dataclass(frozen=True)
class Mode:
    """What a run sends: a body (``{model}`` filled in by the target) to a path, and the
    chat mode of the same shape its CPU is compared with (None for the chat modes)."""

    name: str
    path: str
    template: str
    expect: bytes  # in every whole answer, native or translated
    chat: str | None = None

    def body(self, model: str) -> bytes:
        return self.template.replace("{model}", model).encode()


@dataclass(frozen=True)
class Target:
    """Where a run goes: a server, and the model its bodies name."""

    name: str
    server: str
    model: str = NATIVE_MODEL


# Bodies without their closing brace; "store": false keeps the gateway's response store empty.
_CHAT = '{"model":"{model}","messages":[{"role":"user","content":"hi"}]'
_MESSAGES = '{"model":"{model}","max_tokens":64,"messages":[{"role":"user","content":"hi"}]'
_RESPONSES = '{"model":"{model}","input":"hi","store":false'
_STREAM = ',"stream":true}'
MODES = {
    mode.name: mode
    for mode in (
        Mode("json", PATH, _CHAT + "}", b'"choices"'),
        Mode("stream", PATH, _CHAT + _STREAM, b"data: [DONE]"),
        Mode("messages", "/v1/messages", _MESSAGES + "}", b'"end_turn"', "json"),
        Mode(
            "messages_stream", "/v1/messages", _MESSAGES + _STREAM, b"event: message_stop", "stream"
        ),
        Mode("responses", "/v1/responses", _RESPONSES + "}", b'"completed"', "json"),
        Mode(
            "responses_stream",
            "/v1/responses",
            _RESPONSES + _STREAM,
            b"event: response.completed",
            "stream",
        ),
    )
}
BODY = MODES["json"].body(NATIVE_MODEL)
STREAM_BODY = MODES["stream"].body(NATIVE_MODEL)
TARGETS = {
    target.name: target
    for target in (
        Target("direct", "direct"),
        Target("floor", "floor"),
        Target("gateway", "gateway"),
        Target("translated", "gateway", CHAT_MODEL),
    )
}
# The upstream's own cost is the question for chat only; translation is for the other protocols.
CHAT_TARGETS = ("direct", "floor", "gateway")
PROTOCOL_TARGETS = ("floor", "gateway", "translated")


def targets_of(mode: Mode) -> tuple[str, ...]:
    """The targets a mode runs against."""
    return CHAT_TARGETS if mode.chat is None else PROTOCOL_TARGETS


@dataclass
class Run:
    """One wrk run against one target."""

    target: str
    mode: str
    connections: int
    requests: int
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    cpu_ms_per_request: float
    vs_floor: float | None = None
    added_p50_ms: float | None = None


@dataclass
class Check:
    """One target of the summary, with the measured value."""

    name: str
    value: str
    passed: bool


@dataclass
class Report:
    """A figure the summary reports without a target."""

    name: str
    value: str


@dataclass
class Results:
    """Everything the run measured, as written by ``--json``."""

    duration: int
    rounds: int
    cpus: int
    python: str
    runs: list[Run] = field(default_factory=list)
    peak_rss_mb: dict[str, float] = field(default_factory=dict)
    import_wall_ms: float = 0.0
    import_self_ms: float = 0.0
    checks: list[Check] = field(default_factory=list)
    reports: list[Report] = field(default_factory=list)


def ensure_wrk() -> str:
    """The path to wrk, installed with apt-get first if it is missing."""
    found = shutil.which("wrk")
    if found:
        return found
    sudo = [] if os.geteuid() == 0 or not shutil.which("sudo") else ["sudo"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = [*sudo, "apt-get", "install", "-y", "wrk"]
    print("wrk is missing: " + " ".join(install), file=sys.stderr)
    if subprocess.run(install, env=env, timeout=600, check=False).returncode != 0:
        subprocess.run([*sudo, "apt-get", "update"], env=env, timeout=600, check=True)
        subprocess.run(install, env=env, timeout=600, check=True)
    found = shutil.which("wrk")
    if not found:
        raise RuntimeError("wrk is still missing after apt-get install")
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Server:
    """A child process serving HTTP on 127.0.0.1, its output kept in a log file."""

    def __init__(
        self, name: str, command: Sequence[str], log: Path, env: dict[str, str] | None = None
    ) -> None:
        self.name = name
        self.log = log
        with log.open("wb") as out:
            self.process = subprocess.Popen(
                command,
                cwd=ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
            )
        self.port = 0

    @property
    def pid(self) -> int:
        return self.process.pid

    def url(self, path: str = PATH) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def wait_ready(self, port: int | None = None, *, timeout: float = STARTUP_TIMEOUT) -> None:
        """Wait until the port accepts connections; a port of None is read from the log."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited at startup:\n{self.tail()}")
            if port is None:
                first = self.log.read_text().partition("\n")
                port = int(first[0]) if first[1] else None
            if port is not None and _accepts(port):
                self.port = port
                return
            time.sleep(0.05)
        raise RuntimeError(f"{self.name} not ready after {timeout} s:\n{self.tail()}")

    def tail(self) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-20:])

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(STOP_TIMEOUT)


def _accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
    except OSError:
        return False
    return True


def gateway_config(upstream_port: int, port: int, *, protocols: bool = False) -> str:
    """One provider, ``bench``, at the upstream; with ``protocols`` it speaks Messages and
    Responses natively, and a second, chat-only one serves the model ``bench-chat``."""
    native = 'protocols = ["messages", "responses"]\n' if protocols else ""
    chat_only = (
        f"""
[[providers]]
name = "{CHAT_MODEL}"
base_url = "http://127.0.0.1:{upstream_port}/v1"
models = ["{CHAT_MODEL}"]
timeout = 30
"""
        if protocols
        else ""
    )
    return f"""\
[[providers]]
name = "{NATIVE_MODEL}"
base_url = "http://127.0.0.1:{upstream_port}/v1"
models = ["{NATIVE_MODEL}"]
timeout = 30
{native}{chat_only}
[health]
interval = 0

[server]
host = "127.0.0.1"
port = {port}
"""


@contextmanager
def servers(workdir: Path, modes: Sequence[Mode]) -> Iterator[dict[str, Server]]:
    """The upstream, the forwarder and the gateway, running and answering ``modes``; all
    stopped on the way out."""
    python = sys.executable
    with ExitStack() as stack:
        started: dict[str, Server] = {}

        def start(name: str, command: list[str], port: int | None) -> None:
            server = Server(name, command, workdir / f"{name}.log")
            stack.callback(server.stop)
            server.wait_ready(port)
            started[name] = server

        start("direct", [python, str(HERE / "upstream.py")], None)
        upstream = f"http://127.0.0.1:{started['direct'].port}"
        port = free_port()
        forwarder = [python, str(HERE / "forwarder.py"), "--upstream", upstream]
        start("floor", [*forwarder, "--port", str(port)], port)
        port = free_port()
        config = workdir / "gateway.toml"
        config.write_text(gateway_config(started["direct"].port, port, protocols=True))
        command = [python, "-m", "leapasgi", "serve", "--config", str(config), "--workers", "1"]
        start("gateway", [*command, "--port", str(port)], port)
        for mode in modes:
            for name in targets_of(mode):
                target = TARGETS[name]
                smoke_test(started[target.server], mode, target)
        yield started


def smoke_test(server: Server, mode: Mode, target: Target) -> None:
    """One request must come back whole, or the numbers would mean nothing."""
    headers = {"Content-Type": "application/json"}
    body = mode.body(target.model)
    request = urllib.request.Request(server.url(mode.path), data=body, headers=headers)
    with urllib.request.urlopen(request, timeout=10) as response:
        answer = response.read()
    if mode.expect not in answer or b"hello" not in answer:
        raise RuntimeError(f"{target.name} {mode.name}: unexpected answer {answer[:300]!r}")


def cpu_seconds(pid: int) -> float:
    """utime + stime of the process, all its threads."""
    stat = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmHWM for pid {pid}")


def _ms(text: str) -> float:
    match = re.fullmatch(_DURATION, text)
    if match is None:
        raise ValueError(f"not a wrk duration: {text!r}")
    return float(match[1]) * _TIME_UNITS[match[2]]


def parse_wrk(output: str) -> tuple[int, float, float, float, int]:
    """Requests, requests/s, p50 ms, p99 ms and errors from ``wrk --latency`` output."""

    def find(pattern: str) -> re.Match[str]:
        match = re.search(pattern, output, re.MULTILINE)
        if match is None:
            raise RuntimeError(f"wrk output lacks {pattern!r}:\n{output}")
        return match

    requests = int(find(r"^\s*(\d+) requests in")[1])
    rps = float(find(r"^Requests/sec:\s*([\d.]+)")[1])
    p50 = _ms(find(rf"^\s*50%\s+{_DURATION}")[0].split()[1])
    p99 = _ms(find(rf"^\s*99%\s+{_DURATION}")[0].split()[1])
    errors = sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", output))
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    return requests, rps, p50, p99, errors + (int(non_2xx[1]) if non_2xx else 0)


def wrk(binary: str, url: str, *, body: bytes, connections: int, seconds: int, threads: int) -> str:
    command = [
        binary,
        f"-t{min(threads, connections)}",
        f"-c{connections}",
        f"-d{seconds}s",
        "--latency",
        "-s",
        str(LUA),
        url,
        "--",
        body.decode(),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60)
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}):\n{done.stdout}{done.stderr}")
    return done.stdout


def measure(
    binary: str,
    server: Server,
    target: Target,
    mode: Mode,
    *,
    connections: int,
    seconds: int,
    threads: int,
) -> Run:
    """A warm-up, then one timed wrk run with the serving process's CPU time around it."""
    url = server.url(mode.path)
    body = mode.body(target.model)
    wrk(binary, url, body=body, connections=connections, seconds=WARMUP, threads=threads)
    before = cpu_seconds(server.pid)
    output = wrk(binary, url, body=body, connections=connections, seconds=seconds, threads=threads)
    cpu = cpu_seconds(server.pid) - before
    requests, rps, p50, p99, errors = parse_wrk(output)
    return Run(
        target=target.name,
        mode=mode.name,
        connections=connections,
        requests=requests,
        rps=rps,
        p50_ms=p50,
        p99_ms=p99,
        errors=errors,
        cpu_ms_per_request=cpu * 1000 / max(requests, 1),
    )


def median_run(runs: list[Run]) -> Run:
    """Each measure's median over the rounds; requests and errors are totals."""
    first = runs[0]
    return Run(
        target=first.target,
        mode=first.mode,
        connections=first.connections,
        requests=sum(r.requests for r in runs),
        rps=statistics.median(r.rps for r in runs),
        p50_ms=statistics.median(r.p50_ms for r in runs),
        p99_ms=statistics.median(r.p99_ms for r in runs),
        errors=sum(r.errors for r in runs),
        cpu_ms_per_request=statistics.median(r.cpu_ms_per_request for r in runs),
    )


def compare(runs: list[Run]) -> None:
    """Fill in each gateway's ratio to the floor and the p50 added over direct at c=1."""
    index = {(r.target, r.mode, r.connections): r for r in runs}
    for run in runs:
        floor = index.get(("floor", run.mode, run.connections))
        if run.target in ("gateway", "translated") and floor is not None and floor.rps:
            run.vs_floor = run.rps / floor.rps
        direct = index.get(("direct", run.mode, 1))
        if run.target != "direct" and run.connections == 1 and direct is not None:
            run.added_p50_ms = run.p50_ms - direct.p50_ms


def import_times() -> tuple[float, float]:
    """Median wall ms of ``python -c "import leapasgi"`` and median ms of the import itself."""
    walls, imports = [], []
    for _ in range(IMPORT_RUNS):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import leapasgi"], cwd=ROOT, check=True)
        walls.append((time.perf_counter() - started) * 1000)
        command = [sys.executable, "-X", "importtime", "-c", "import leapasgi"]
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=True)
        line = next(x for x in done.stderr.splitlines() if x.split("|")[-1].strip() == "leapasgi")
        imports.append(int(line.split("|")[1]) / 1000)
    return statistics.median(walls), statistics.median(imports)


def checks(results: Results) -> list[Check]:
    """The issue's targets, for the runs this sweep made (a partial sweep checks less)."""
    index = {(r.target, r.mode, r.connections): r for r in results.runs}
    c = RATIO_CONNECTIONS
    found: list[Check] = []
    json_run = index.get(("gateway", "json", c))
    if json_run is not None:
        ratio = json_run.vs_floor or 0.0
        name = f"json req/s at c={c} >= {MIN_JSON_RATIO}x floor"
        found.append(Check(name, f"{ratio:.2f}x", ratio >= MIN_JSON_RATIO))
    stream_run = index.get(("gateway", "stream", c))
    if stream_run is not None:
        ratio = stream_run.vs_floor or 0.0
        name = f"stream req/s at c={c} >= {MIN_STREAM_RATIO}x floor"
        found.append(Check(name, f"{ratio:.2f}x", ratio >= MIN_STREAM_RATIO))
    single = index.get(("gateway", "json", 1))
    if single is not None:
        added = single.added_p50_ms or 0.0
        floor = index.get(("floor", "json", 1))
        floor_added = (floor.added_p50_ms or 0.0) if floor is not None else 0.0
        found.append(
            Check(
                f"json p50 added over direct at c=1 <= {MAX_ADDED_P50_MS} ms",
                f"{added:.3f} ms (the floor adds {floor_added:.3f} ms)",
                added <= MAX_ADDED_P50_MS,
            )
        )
    rss = results.peak_rss_mb["gateway"]
    found.append(
        Check(f"gateway peak RSS <= {MAX_RSS_MB:.0f} MB", f"{rss:.1f} MB", rss <= MAX_RSS_MB)
    )
    imported = results.import_wall_ms
    found.append(
        Check(
            f"python -c 'import leapasgi' < {MAX_IMPORT_MS:.0f} ms",
            f"{imported:.0f} ms",
            imported < MAX_IMPORT_MS,
        )
    )
    for mode, ratio in cpu_ratios(results.runs, "gateway"):
        found.append(
            Check(
                f"{mode.name} pass-through CPU/req at c={c}"
                f" <= {MAX_NATIVE_CPU_RATIO}x chat {mode.chat}",
                f"{ratio:.2f}x",
                ratio <= MAX_NATIVE_CPU_RATIO,
            )
        )
    return found


def cpu_ratios(runs: list[Run], target: str) -> list[tuple[Mode, float]]:
    """Each protocol mode's CPU per request on ``target`` over the gateway's chat path of the
    same shape, at RATIO_CONNECTIONS (for the modes this sweep ran)."""
    index = {(r.target, r.mode, r.connections): r for r in runs}
    c = RATIO_CONNECTIONS
    found = []
    for mode in MODES.values():
        if mode.chat is None:
            continue
        run = index.get((target, mode.name, c))
        chat = index.get(("gateway", mode.chat, c))
        if run is not None and chat is not None and chat.cpu_ms_per_request:
            found.append((mode, run.cpu_ms_per_request / chat.cpu_ms_per_request))
    return found


def reports(results: Results) -> list[Report]:
    """The translated paths' CPU per request over chat's: reported, not checked; and the
    protocol modes that ran without their chat mode, so nothing compared them."""
    c = RATIO_CONNECTIONS
    found = [
        Report(f"{mode.name} translated CPU/req at c={c} over chat {mode.chat}", f"{ratio:.2f}x")
        for mode, ratio in cpu_ratios(results.runs, "translated")
    ]
    ran = {(r.mode, r.connections) for r in results.runs if r.target == "gateway"}
    for name, mode in MODES.items():
        if mode.chat is not None and (name, c) in ran and (mode.chat, c) not in ran:
            found.append(Report(f"{name} not compared with chat", f"add {mode.chat} to --modes"))
    return found


def print_table(runs: list[Run]) -> None:
    print(
        f"{'target':<10} {'mode':<16} {'conns':>5} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8}"
        f" {'CPU ms/req':>10} {'vs floor':>8} {'+p50 ms':>8}"
    )
    for r in sorted(runs, key=_row_order):
        ratio = f"{r.vs_floor:.2f}x" if r.vs_floor is not None else ""
        added = f"{r.added_p50_ms:+.3f}" if r.added_p50_ms is not None else ""
        errors = f"  ({r.errors} errors)" if r.errors else ""
        print(
            f"{r.target:<10} {r.mode:<16} {r.connections:>5} {r.rps:>9.0f} {r.p50_ms:>8.3f}"
            f" {r.p99_ms:>8.3f} {r.cpu_ms_per_request:>10.3f} {ratio:>8} {added:>8}{errors}"
        )


def _row_order(run: Run) -> tuple[int, int, int, int]:
    """The chat modes by target, then each protocol mode with its targets together."""
    modes, targets = list(MODES), list(TARGETS)
    mode = modes.index(run.mode)
    group = 0 if MODES[run.mode].chat is None else mode
    return group, targets.index(run.target), mode, run.connections


def print_summary(results: Results) -> None:
    rss = ", ".join(f"{name} {mb:.1f} MB" for name, mb in results.peak_rss_mb.items())
    print(f"\npeak RSS: {rss}")
    print(
        f"import leapasgi: {results.import_wall_ms:.0f} ms wall for the whole command,"
        f" {results.import_self_ms:.0f} ms in the import (median of {IMPORT_RUNS})"
    )
    print("\ntargets:")
    for check in results.checks:
        print(f"  {'PASS' if check.passed else 'FAIL'}  {check.name}: {check.value}")
    if results.reports:
        print("\nreported:")
        for report in results.reports:
            print(f"  {report.name}: {report.value}")


def run(args: argparse.Namespace) -> Results:
    binary = ensure_wrk()
    seconds = QUICK_DURATION if args.quick else args.duration
    results = Results(
        duration=seconds,
        rounds=args.rounds,
        cpus=os.cpu_count() or 0,
        python=sys.version.split()[0],
    )
    modes = [mode for name, mode in MODES.items() if name in args.modes]
    connections_list = [c for c in CONNECTIONS if c in args.connections]
    per_sweep = sum(len(targets_of(mode)) for mode in modes) * len(connections_list)
    total = per_sweep * args.rounds
    print(f"{total} runs of {WARMUP} s warm-up + {seconds} s, wrk -t{args.threads}", flush=True)
    samples: dict[tuple[str, str, int], list[Run]] = {}
    with (
        tempfile.TemporaryDirectory(prefix="leapasgi-bench-") as tmp,
        servers(Path(tmp), modes) as procs,
    ):
        # Targets innermost, so the rows compared with each other run close together in time,
        # and modes inside connections, so a protocol mode runs near the chat mode it is
        # compared with.
        for _ in range(args.rounds):
            for connections in connections_list:
                for mode in modes:
                    for name in targets_of(mode):
                        target = TARGETS[name]
                        result = measure(
                            binary,
                            procs[target.server],
                            target,
                            mode,
                            connections=connections,
                            seconds=seconds,
                            threads=args.threads,
                        )
                        samples.setdefault((name, mode.name, connections), []).append(result)
                        print(
                            f"  {name} {mode.name} c={connections}: {result.rps:.0f} req/s",
                            flush=True,
                        )
        results.peak_rss_mb = {name: peak_rss_mb(p.pid) for name, p in procs.items()}
    results.runs = [median_run(runs) for runs in samples.values()]
    compare(results.runs)
    results.import_wall_ms, results.import_self_ms = import_times()
    results.checks = checks(results)
    results.reports = reports(results)
    return results


def mode_names(text: str) -> list[str]:
    """The modes of a ``--modes`` argument."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in MODES]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown modes: {', '.join(unknown)}")
    return names


def _numbers(text: str) -> list[int]:
    numbers = [int(n) for n in text.split(",") if n.strip()]
    unknown = [n for n in numbers if n not in CONNECTIONS]
    if unknown:
        raise argparse.ArgumentTypeError(f"connections must be among {CONNECTIONS}")
    return numbers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--duration", type=int, default=DEFAULT_DURATION, help="seconds per run")
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_DURATION} s per run")
    parser.add_argument("--rounds", type=int, default=1, help="sweeps; medians are reported")
    parser.add_argument("--threads", type=int, choices=(1, 2), default=1, help="wrk threads")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument(
        "--modes",
        type=mode_names,
        default=list(MODES),
        help=f"comma-separated, among {','.join(MODES)}",
    )
    parser.add_argument(
        "--connections", type=_numbers, default=list(CONNECTIONS), help="comma-separated: 1,16,64"
    )
    args = parser.parse_args()
    if args.duration < 1 or args.rounds < 1:
        parser.error("--duration and --rounds must be at least 1")
    # A plain kill should also stop the servers, through the finally clauses.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    results = run(args)
    print()
    print_table(results.runs)
    print_summary(results)
    if args.json is not None:
        args.json.write_text(json.dumps(asdict(results), indent=2) + "\n")


if __name__ == "__main__":
    main()
