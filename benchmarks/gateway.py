"""Throughput, latency, CPU and memory of the gateway next to a direct call and a bare forwarder.

    python benchmarks/gateway.py [--duration 5 | --quick] [--rounds 1] [--json results.json]
        [--modes json,stream,messages,messages_stream,responses,responses_stream,
                 cache_hit,cache_hit_stream,cache_miss]

Starts three processes on 127.0.0.1: the fake upstream (benchmarks/upstream.py), the floor
(benchmarks/forwarder.py: Starlette + aiohttp passing bytes through) and ``leapasgi serve`` with
two providers pointing at the upstream: ``bench`` speaks Messages and Responses natively
(``protocols = ["messages", "responses"]``), ``bench-chat`` only chat completions. The cache
and state modes add gateways of their own (below). wrk (installed with apt-get when missing)
POSTs at 1, 16 and 64 connections to each target; the CPU per request is the serving process's
own utime + stime. With ``--rounds N`` the whole sweep runs N times and each figure is the
median: on a busy machine one sweep is noisy. The run ends with the targets checked; the exit
status is 0 whether they pass or not.

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

``cache_hit`` and ``cache_hit_stream`` send ``json``'s and ``stream``'s body, the same on every
request, to the floor and to a gateway with the response cache on for every model (row
``cached``): after the first, every request is a hit, the stream replayed from the cache. Hits
must serve at least the floor's req/s. ``cache_miss`` sends a chat completion whose text
carries a counter (benchmarks/wrk_unique.lua), so no two requests are alike, to the floor and to
two gateways with the cache on and rate limits too high to refuse (``rpm`` and ``tpm`` on both
providers): ``memory`` keeps its state in the process, ``redis`` in a redis-server the run
starts on a free port (``--save ''``, no append-only file; needs Debian's redis-server). Each
request there looks the cache up, misses, claims the key (coalescing), reserves and settles a
rate limit, calls the upstream and stores the answer. The Redis backend may cost at most
0.15 ms of CPU per request more than the memory one; redis-server's own CPU and its commands
per request (those its Lua scripts run included) are reported beside it. A redis run during
which the gateway fell back to local state (as its log says) is flagged and fails the check:
its figures are partly the memory backend's. Every gateway with the cache on answers
``x-leap-cache``; the smoke test asks for ``hit`` or ``miss`` as its mode expects, and the
results the gateway counted during the timed runs (from ``/metrics``) are reported.

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
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

from redis_server import command_counts, redis_command

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
LUA = HERE / "wrk_post.lua"
UNIQUE_LUA = HERE / "wrk_unique.lua"
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
# Rate limits no run reaches: every request still reserves and settles them.
BENCH_RPM = 100_000_000
BENCH_TPM = 10_000_000_000

MIN_JSON_RATIO = 0.6
MIN_STREAM_RATIO = 0.5
RATIO_CONNECTIONS = 16
MAX_NATIVE_CPU_RATIO = 1.2
MAX_ADDED_P50_MS = 0.5
MAX_RSS_MB = 100.0
MAX_IMPORT_MS = 300.0
MIN_CACHE_HIT_RATIO = 1.0
MAX_REDIS_ADDED_CPU_MS = 0.15

_TIME_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4, "h": 3.6e6}
_DURATION = r"([\d.]+)(us|ms|s|m|h)"
_CACHE_RESULTS = ("hit", "miss", "bypass")
# What leapasgi/state/redis.py logs when a failed or slow operation sends it to local state,
# and when Redis is back.
DEGRADED_LOG = "running on local state"
RESTORED_LOG = "state is shared again"
_CACHE_METRIC = re.compile(r'^leap_cache_requests_total\{result="(\w+)"\} ([\d.e+]+)$', re.M)

# The targets of the chat modes, of the other protocols' (translation is their question), of
# the cache-hit modes and of the cache-miss mode (the state backends side by side).
CHAT_TARGETS = ("direct", "floor", "gateway")
PROTOCOL_TARGETS = ("floor", "gateway", "translated")
CACHE_TARGETS = ("floor", "cached")
STATE_TARGETS = ("floor", "memory", "redis")


@dataclass(frozen=True)
class Mode:
    """What a run sends: a body (``{model}`` filled in by the target, ``{n}`` by each request)
    to a path; the chat mode of the same shape its CPU is compared with (None for the chat
    modes); its targets when not the chat or protocol ones, and the ``x-leap-cache`` answer its
    requests get from a gateway with the cache on."""

    name: str
    path: str
    template: str
    expect: bytes  # in every whole answer, native or translated
    chat: str | None = None
    targets: tuple[str, ...] | None = None
    cache: str | None = None

    @property
    def unique(self) -> bool:
        """Whether every request sends a body of its own (its ``{n}`` filled in)."""
        return "{n}" in self.template

    def wire(self, model: str) -> str:
        """The body for ``model``, its ``{n}`` left in."""
        return self.template.replace("{model}", model)

    def body(self, model: str, n: str = "") -> bytes:
        return self.wire(model).replace("{n}", n).encode()


@dataclass(frozen=True)
class Target:
    """Where a run goes: a server, the model its bodies name, and the process keeping its
    state when that is not the server (its CPU and commands are measured too)."""

    name: str
    server: str
    model: str = NATIVE_MODEL
    helper: str | None = None


@dataclass(frozen=True)
class Setup:
    """A ``leapasgi serve`` server: what it adds to the plain gateway."""

    cache: bool = False  # the response cache on for every model
    limits: bool = False  # BENCH_RPM and BENCH_TPM on both providers
    backend: Literal["memory", "redis"] | None = None  # [state] backend; None: the default

    def config(
        self,
        upstream_port: int,
        port: int,
        *,
        redis_url: str | None = None,
        state: Mapping[str, str | float] | None = None,
    ) -> str:
        """The server's configuration; ``state`` adds keys to its ``[state]`` table."""
        table: dict[str, str | float] = {}
        if self.backend is not None:
            table["backend"] = self.backend
            if self.backend == "redis":
                if redis_url is None:
                    raise ValueError("a redis gateway needs redis_url")
                table["url"] = redis_url
            table.update(state or {})
        return gateway_config(
            upstream_port,
            port,
            protocols=True,
            cache=self.cache,
            limits=self.limits,
            state=table or None,
        )


# Bodies without their closing brace; "store": false keeps the gateway's response store empty.
_CHAT = '{"model":"{model}","messages":[{"role":"user","content":"hi"}]'
_UNIQUE_CHAT = '{"model":"{model}","messages":[{"role":"user","content":"hi {n}"}]'
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
        Mode("cache_hit", PATH, _CHAT + "}", b'"choices"', targets=CACHE_TARGETS, cache="hit"),
        Mode(
            "cache_hit_stream",
            PATH,
            _CHAT + _STREAM,
            b"data: [DONE]",
            targets=CACHE_TARGETS,
            cache="hit",
        ),
        Mode(
            "cache_miss",
            PATH,
            _UNIQUE_CHAT + "}",
            b'"choices"',
            targets=STATE_TARGETS,
            cache="miss",
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
        Target("cached", "cached"),
        Target("memory", "memory"),
        Target("redis", "redis", helper="redis-server"),
    )
}
# The gateway servers by name; "gateway" always runs, the others when a target needs them.
GATEWAYS = {
    "gateway": Setup(),
    "cached": Setup(cache=True),
    "memory": Setup(cache=True, limits=True, backend="memory"),
    "redis": Setup(cache=True, limits=True, backend="redis"),
}


def targets_of(mode: Mode) -> tuple[str, ...]:
    """The targets a mode runs against."""
    if mode.targets is not None:
        return mode.targets
    return CHAT_TARGETS if mode.chat is None else PROTOCOL_TARGETS


def servers_of(modes: Sequence[Mode]) -> set[str]:
    """The servers the targets of ``modes`` run on."""
    return {TARGETS[name].server for mode in modes for name in targets_of(mode)}


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
    # The target's state process (redis-server): its CPU and the commands it ran, per request.
    state_cpu_ms_per_request: float | None = None
    state_commands_per_request: float | None = None
    state_commands: dict[str, float] | None = None  # per request, by command
    # What the gateway's response cache did with the timed requests ("hit": count), if on.
    cache_results: dict[str, int] | None = None
    # Spells a shared state backend ran on local state during the timed run.
    degraded: int | None = None


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


def gateway_config(
    upstream_port: int,
    port: int,
    *,
    protocols: bool = False,
    cache: bool = False,
    limits: bool = False,
    state: Mapping[str, str | float] | None = None,
) -> str:
    """One provider, ``bench``, at the upstream; with ``protocols`` it speaks Messages and
    Responses natively, and a second, chat-only one serves the model ``bench-chat``. With
    ``cache`` the response cache is on for every model, with ``limits`` every provider has
    BENCH_RPM and BENCH_TPM, and ``state`` is the ``[state]`` table."""
    native = 'protocols = ["messages", "responses"]\n' if protocols else ""
    limited = f"rpm = {BENCH_RPM}\ntpm = {BENCH_TPM}\n" if limits else ""
    chat_only = (
        f"""
[[providers]]
name = "{CHAT_MODEL}"
base_url = "http://127.0.0.1:{upstream_port}/v1"
models = ["{CHAT_MODEL}"]
timeout = 30
{limited}"""
        if protocols
        else ""
    )
    sections = '\n[cache]\nenabled = true\nmodels = ["*"]\n' if cache else ""
    if state:
        sections += "\n[state]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in state.items())
    return f"""\
[[providers]]
name = "{NATIVE_MODEL}"
base_url = "http://127.0.0.1:{upstream_port}/v1"
models = ["{NATIVE_MODEL}"]
timeout = 30
{native}{limited}{chat_only}
[health]
interval = 0

[server]
host = "127.0.0.1"
port = {port}
{sections}"""


@contextmanager
def servers(workdir: Path, modes: Sequence[Mode]) -> Iterator[dict[str, Server]]:
    """The upstream, the forwarder, the gateway and the other servers ``modes`` need (a
    redis-server for the redis gateway), running and answering ``modes``; all stopped on the
    way out."""
    python = sys.executable
    needed = servers_of(modes)
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
        redis_url = None
        if "redis" in needed:
            port = free_port()
            start("redis-server", redis_command(port, workdir), port)
            redis_url = f"redis://127.0.0.1:{port}/0"
        for name, setup in GATEWAYS.items():
            if name != "gateway" and name not in needed:
                continue
            port = free_port()
            config = workdir / f"{name}.toml"
            config.write_text(setup.config(started["direct"].port, port, redis_url=redis_url))
            command = [python, "-m", "leapasgi", "serve", "--config", str(config)]
            start(name, [*command, "--workers", "1", "--port", str(port)], port)
        for mode in modes:
            for name in targets_of(mode):
                target = TARGETS[name]
                smoke_test(started[target.server], mode, target)
        yield started


def smoke_test(server: Server, mode: Mode, target: Target) -> None:
    """One request must come back whole, or the numbers would mean nothing; from a gateway
    with the cache on, a hit mode's second request must be a hit, a miss mode's first a miss."""
    body = mode.body(target.model, f"smoke-{nonce()}")
    cached = mode.cache is not None and GATEWAYS.get(target.server, Setup()).cache
    tries = 3 if cached and mode.cache == "hit" else 1
    for _ in range(tries):
        answer, result = _post(server.url(mode.path), body)
        if mode.expect not in answer or b"hello" not in answer:
            raise RuntimeError(f"{target.name} {mode.name}: unexpected answer {answer[:300]!r}")
        if not cached or result == mode.cache:
            return
        # The first request of a hit mode fills the entry; the next ones should hit.
        time.sleep(0.1)
    raise RuntimeError(f"{target.name} {mode.name}: x-leap-cache {result!r}, not {mode.cache!r}")


def _post(url: str, body: bytes) -> tuple[bytes, str | None]:
    """The answer to one POST of ``body``, and its x-leap-cache header."""
    headers = {"Content-Type": "application/json"}
    request = urllib.request.Request(url, data=body, headers=headers)
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.read(), response.headers.get("x-leap-cache")


def nonce() -> str:
    """A short random text: bodies made with different ones differ."""
    return os.urandom(4).hex()


def cache_results(server: Server) -> dict[str, int]:
    """What the gateway's response cache did so far, by result, from its ``/metrics``."""
    with urllib.request.urlopen(server.url("/metrics"), timeout=10) as response:
        text = response.read().decode()
    found = {result: int(float(n)) for result, n in _CACHE_METRIC.findall(text)}
    return {result: found.get(result, 0) for result in _CACHE_RESULTS}


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


def wrk(
    binary: str,
    url: str,
    *,
    script: Path,
    args: Sequence[str],
    connections: int,
    seconds: int,
    threads: int,
) -> str:
    command = [
        binary,
        f"-t{min(threads, connections)}",
        f"-c{connections}",
        f"-d{seconds}s",
        "--latency",
        "-s",
        str(script),
        url,
        "--",
        *args,
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
    helper: Server | None = None,
) -> Run:
    """A warm-up, then one timed wrk run with the serving process's CPU time around it (and
    the state process's, ``helper``, with the commands it ran)."""
    url = server.url(mode.path)
    script = UNIQUE_LUA if mode.unique else LUA
    wire = mode.wire(target.model)

    def args() -> list[str]:
        return [wire, nonce()] if mode.unique else [wire]

    def load(duration: int) -> str:
        return wrk(
            binary,
            url,
            script=script,
            args=args(),
            connections=connections,
            seconds=duration,
            threads=threads,
        )

    setup = GATEWAYS.get(target.server, Setup())
    shared = setup.backend == "redis"
    load(WARMUP)
    log_before = server.log.read_text() if shared else ""
    results_before = cache_results(server) if setup.cache else None
    helper_before = _usage(helper)
    before = cpu_seconds(server.pid)
    output = load(seconds)
    cpu = cpu_seconds(server.pid) - before
    helper_after = _usage(helper)
    requests, rps, p50, p99, errors = parse_wrk(output)
    run = Run(
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
    if helper_before is not None and helper_after is not None:
        (cpu_before, commands_before), (cpu_after, commands_after) = helper_before, helper_after
        run.state_cpu_ms_per_request = (cpu_after - cpu_before) * 1000 / max(requests, 1)
        run.state_commands = {
            command: (n - commands_before.get(command, 0)) / max(requests, 1)
            for command, n in sorted(commands_after.items(), key=lambda item: -item[1])
            if n > commands_before.get(command, 0)
        }
        run.state_commands_per_request = sum(run.state_commands.values())
    if shared:
        run.degraded = _degraded_spells(log_before, server.log.read_text())
    if results_before is not None:
        after = cache_results(server)
        run.cache_results = {k: after[k] - results_before[k] for k in _CACHE_RESULTS}
    return run


def _degraded_spells(before: str, after: str) -> int:
    """The spells on local state the log shows between two readings, one already begun
    at the first included."""
    begun = before.rfind(DEGRADED_LOG) > before.rfind(RESTORED_LOG)
    return after.count(DEGRADED_LOG) - before.count(DEGRADED_LOG) + begun


def _usage(helper: Server | None) -> tuple[float, dict[str, int]] | None:
    """A state process's CPU seconds and the commands it has run (None without one)."""
    if helper is None:
        return None
    return cpu_seconds(helper.pid), command_counts(helper.port)


def median_run(runs: list[Run]) -> Run:
    """Each measure's median over the rounds; requests, errors and cache results are totals."""
    first = runs[0]
    cache: dict[str, int] | None = None
    for r in runs:
        if r.cache_results is not None:
            cache = cache or dict.fromkeys(_CACHE_RESULTS, 0)
            for result, n in r.cache_results.items():
                cache[result] += n
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
        state_cpu_ms_per_request=_median(r.state_cpu_ms_per_request for r in runs),
        state_commands_per_request=_median(r.state_commands_per_request for r in runs),
        state_commands=_median_counts([r.state_commands for r in runs]),
        cache_results=cache,
        degraded=sum(r.degraded for r in runs if r.degraded is not None)
        if any(r.degraded is not None for r in runs)
        else None,
    )


def _median(values: Iterable[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.median(known) if known else None


def _median_counts(counts: list[dict[str, float] | None]) -> dict[str, float] | None:
    known = [c for c in counts if c is not None]
    if not known:
        return None
    names = dict.fromkeys(name for c in known for name in c)
    return {name: statistics.median(c.get(name, 0.0) for c in known) for name in names}


def compare(runs: list[Run]) -> None:
    """Fill in each gateway's ratio to the floor and the p50 added over direct at c=1."""
    index = {(r.target, r.mode, r.connections): r for r in runs}
    for run in runs:
        floor = index.get(("floor", run.mode, run.connections))
        if run.target not in ("direct", "floor") and floor is not None and floor.rps:
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
    return found + cache_checks(results.runs)


def cache_checks(runs: list[Run]) -> list[Check]:
    """Cache hits' req/s over the floor's and the Redis backend's CPU per request over the
    memory one's, at RATIO_CONNECTIONS (for the modes this sweep ran)."""
    index = {(r.target, r.mode, r.connections): r for r in runs}
    c = RATIO_CONNECTIONS
    found = []
    for name in ("cache_hit", "cache_hit_stream"):
        run = index.get(("cached", name, c))
        if run is not None:
            ratio = run.vs_floor or 0.0
            found.append(
                Check(
                    f"{name} req/s at c={c} >= {MIN_CACHE_HIT_RATIO}x floor",
                    f"{ratio:.2f}x",
                    ratio >= MIN_CACHE_HIT_RATIO,
                )
            )
    pair = redis_pairs(runs).get(c)
    if pair is not None:
        redis, memory = pair
        added = redis.cpu_ms_per_request - memory.cpu_ms_per_request
        found.append(
            Check(
                f"cache_miss redis CPU/req at c={c} <= memory + {MAX_REDIS_ADDED_CPU_MS} ms",
                _added_text(redis, memory),
                added <= MAX_REDIS_ADDED_CPU_MS and not redis.degraded,
            )
        )
    return found


def redis_pairs(runs: list[Run]) -> dict[int, tuple[Run, Run]]:
    """By connections: the redis and the memory gateway's runs on the cache-miss path."""
    index = {(r.target, r.mode, r.connections): r for r in runs}
    found = {}
    for connections in CONNECTIONS:
        memory = index.get(("memory", "cache_miss", connections))
        redis = index.get(("redis", "cache_miss", connections))
        if memory is not None and redis is not None:
            found[connections] = (redis, memory)
    return found


def _added_text(redis: Run, memory: Run) -> str:
    mine, theirs = redis.cpu_ms_per_request, memory.cpu_ms_per_request
    text = f"{mine - theirs:+.3f} ms ({mine:.3f} ms redis, {theirs:.3f} ms memory)"
    if redis.degraded:
        # Its figures are partly the fallback's: the memory backend's, without round trips.
        text += f"; redis fell back to local state {redis.degraded} times: not measured"
    return text


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
    return found + cache_reports(results.runs)


def cache_reports(runs: list[Run]) -> list[Report]:
    """What the cache checks leave out: the other connection counts, redis-server's own CPU
    and commands per request, and what the cache did with the timed requests."""
    c = RATIO_CONNECTIONS
    found = []
    for run in sorted(runs, key=_row_order):
        if run.target == "cached" and run.connections != c and run.vs_floor is not None:
            name = f"{run.mode} req/s at c={run.connections} over floor"
            found.append(Report(name, f"{run.vs_floor:.2f}x"))
    for connections, (redis, memory) in redis_pairs(runs).items():
        if connections != c:
            name = f"cache_miss redis CPU/req at c={connections} over memory"
            found.append(Report(name, _added_text(redis, memory)))
    for run in sorted(runs, key=_row_order):
        cpu, commands = run.state_cpu_ms_per_request, run.state_commands_per_request
        if cpu is not None and commands is not None:
            mix = ", ".join(f"{n:.2f} {c}" for c, n in (run.state_commands or {}).items())
            name = f"redis-server for {run.target} {run.mode} at c={run.connections}"
            text = f"{cpu:.3f} ms CPU/req, {commands:.2f} commands/req ({mix})"
            found.append(Report(name, text))
    totals: dict[tuple[str, str], dict[str, int]] = {}
    for run in runs:
        if run.cache_results is not None:
            total = totals.setdefault((run.target, run.mode), dict.fromkeys(_CACHE_RESULTS, 0))
            for result, n in run.cache_results.items():
                total[result] += n
    for (target, mode), total in totals.items():
        expected = MODES[mode].cache or ""
        share = total.get(expected, 0) / max(sum(total.values()), 1)
        counts = ", ".join(f"{n} {result}" for result, n in total.items())
        name = f"x-leap-cache of {target} {mode}'s timed requests"
        found.append(Report(name, f"{share:.2%} {expected} ({counts})"))
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
    """The chat modes by target, then each other mode with its targets together."""
    modes, targets = list(MODES), list(TARGETS)
    mode = modes.index(run.mode)
    chat = MODES[run.mode].chat is None and MODES[run.mode].targets is None
    group = 0 if chat else mode
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
                            helper=procs.get(target.helper) if target.helper else None,
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
