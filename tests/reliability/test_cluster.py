"""Row 16: many replicas as one. Two ``leapasgi serve`` processes share their state through a
real redis-server (started here on a free port) over three fake upstreams: breakers, rate
limits and the response cache are one cluster's, and Redis frozen or gone hangs nothing.

Models: ``m2`` is U2 then U3 (the ejection), ``m3`` is U3 with RPM 100, ``mc`` is U1 with the
cache on, ``m4``/``m6`` are U1 with RPM 10 (shared limits after Redis returns), ``m5`` is U1
with limits too high to refuse (load that goes through the limiter while Redis misbehaves).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.fake_upstream import Behavior, FakeUpstream, completion, error_body, text_stream
from tests.redis_server import RedisServer
from tests.reliability.harness import Figures

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parents[2]
TENANT_A = "sk-cluster-tenant-a-0123456789"
TENANT_B = "sk-cluster-tenant-b-0123456789"
ADMIN = "sk-cluster-admin-0123456789"
ROW = "16"
REDIS_PASSWORD = "cluster-redis-password-0123456789"

CONFIG = """
[server]
api_keys = ["{tenant_a}", "{tenant_b}"]
admin_key = "{admin}"

[state]
backend = "redis"
url = "{redis}"
replicas = 2
sync_interval = 0.2
recover_interval = 0.5

[cache]
enabled = true
models = ["mc"]

[routing]
request_timeout = 5

[routing.aliases.sticky-ms]
targets = ["u1/ms", "u3/ms"]
strategy = "round_robin"
sticky = true

[health]
interval = 0
failure_threshold = 3
base_ejection = 20
max_ejection = 40

[[providers]]
name = "u1"
base_url = "{u1}"
api_key = "sk-rel-u1-0123456789abcdef"
models = ["mc", "m4", "m5", "m6", "ms", "mw"]
model_limits.m4 = {{ rpm = 10 }}
model_limits.m5 = {{ rpm = 100000000, tpm = 10000000000 }}
model_limits.m6 = {{ rpm = 10 }}
model_limits.mw = {{ rpm = 10 }}

[[providers]]
name = "u2"
base_url = "{u2}"
api_key = "sk-rel-u2-0123456789abcdef"
models = ["m2"]
priority = 0
max_retries = 0

[[providers]]
name = "u3"
base_url = "{u3}"
api_key = "sk-rel-u3-0123456789abcdef"
models = ["m2", "m3", "ms"]
priority = 1
model_limits = {{ m3 = {{ rpm = 100 }} }}
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class UpstreamThread(threading.Thread):
    """The fake upstreams, served from an event loop of their own."""

    def __init__(self, fakes: list[FakeUpstream]) -> None:
        super().__init__(name="cluster-upstreams", daemon=True)
        self.fakes = fakes
        self._ready = threading.Event()
        self._stopping: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        async with contextlib.AsyncExitStack() as stack:
            for fake in self.fakes:
                await stack.enter_async_context(fake)
            self._ready.set()
            await self._stopping.wait()

    def start_and_wait(self) -> None:
        self.start()
        if not self._ready.wait(10):
            raise RuntimeError("the fake upstreams did not start")

    def stop(self) -> None:
        if self._loop is not None and self._stopping is not None:
            self._loop.call_soon_threadsafe(self._stopping.set)
        self.join(10)


@dataclass
class Cluster:
    redis: RedisServer
    fakes: list[FakeUpstream]
    replicas: list[str]  # base URLs of the two gateway processes
    logs: list[Path]  # what each replica wrote to stdout and stderr
    config: Path

    def client(self, key: str = TENANT_A, *, timeout: float = 10.0) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            headers={"authorization": f"Bearer {key}"},
            timeout=timeout,
            limits=httpx.Limits(max_connections=200),
        )


def _gateway(config: Path, port: int, log: Path, *, workers: int = 1) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
    command = [sys.executable, "-m", "leapasgi", "serve", "--config", str(config)]
    with log.open("wb") as out:
        return subprocess.Popen(
            [*command, "--port", str(port), "--workers", str(workers)],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def _wait_up(port: int) -> None:
    for _ in range(400):
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port)):
            return
        time.sleep(0.025)
    raise AssertionError("a gateway replica did not come up")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    workdir = tmp_path_factory.mktemp("cluster")
    fakes = [FakeUpstream(models=()) for _ in range(3)]
    upstreams = UpstreamThread(fakes)
    upstreams.start_and_wait()
    redis = RedisServer(workdir / "redis", password=REDIS_PASSWORD)
    processes: list[subprocess.Popen[bytes]] = []
    try:
        redis.start()
        config = workdir / "gateway.toml"
        config.write_text(
            CONFIG.format(
                tenant_a=TENANT_A,
                tenant_b=TENANT_B,
                admin=ADMIN,
                redis=redis.url,
                u1=fakes[0].base_url,
                u2=fakes[1].base_url,
                u3=fakes[2].base_url,
            )
        )
        ports = [_free_port(), _free_port()]
        logs = [workdir / f"replica{i}.log" for i in range(2)]
        for port, log in zip(ports, logs, strict=True):
            processes.append(_gateway(config, port, log))
        for port in ports:
            _wait_up(port)
        replicas = [f"http://127.0.0.1:{port}" for port in ports]
        yield Cluster(redis, fakes, replicas, logs, config)
    finally:
        for process in processes:
            process.send_signal(signal.SIGINT)
        for process in processes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()  # reaped: no process is left running past its test
        redis.stop()
        upstreams.stop()


def chat(model: str, text: str = "hi", **fields: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": text}], **fields}


async def provider_status(client: httpx.AsyncClient, replica: str, name: str) -> str:
    answer = await client.get(
        f"{replica}/v1/providers", headers={"authorization": f"Bearer {ADMIN}"}
    )
    (provider,) = [p for p in answer.json()["data"] if p["name"] == name]
    status: str = provider["status"]
    return status


async def state_of(client: httpx.AsyncClient, replica: str) -> dict[str, Any]:
    admin = {"authorization": f"Bearer {ADMIN}"}
    answer = await client.get(f"{replica}/health/ready", headers=admin)
    state: dict[str, Any] = answer.json()["state"]
    return state


async def test_an_ejection_is_seen_by_the_other_replica_within_1_s(
    cluster: Cluster, figures: Figures
) -> None:
    a, b = cluster.replicas
    cluster.fakes[1].push(
        *[Behavior(status=500, json_body=error_body("down", type="server_error"))] * 3
    )
    async with cluster.client() as client:
        statuses = [
            (await client.post(f"{a}/v1/chat/completions", json=chat("m2"))).status_code
            for _ in range(3)
        ]
        ejected_at = time.monotonic()
        seen_after = None
        while time.monotonic() - ejected_at < 3:
            if await provider_status(client, b, "u2") == "unhealthy":
                seen_after = time.monotonic() - ejected_at
                break
            await asyncio.sleep(0.02)
        on_a = await provider_status(client, a, "u2")

    assert statuses == [200, 200, 200]  # U3 served while U2 failed
    assert on_a == "unhealthy"
    figures.record(
        ROW,
        "U2 ejected on replica A: seen as ejected by replica B after s",
        round(seen_after, 3) if seen_after is not None else "never",
        passed=seen_after is not None and seen_after <= 1.0,
        target="<= 1",
    )
    assert seen_after is not None
    assert seen_after <= 1.0


async def test_an_rpm_limit_of_100_holds_across_both_replicas(
    cluster: Cluster, figures: Figures
) -> None:
    a, b = cluster.replicas
    async with cluster.client() as client:
        answers = await asyncio.gather(
            *(
                client.post(f"{(a, b)[i % 2]}/v1/chat/completions", json=chat("m3", f"n{i}"))
                for i in range(160)
            )
        )
    statuses = [answer.status_code for answer in answers]
    refused = [answer for answer in answers if answer.status_code == 429]

    figures.record(
        ROW,
        "RPM 100 on U3, 160 concurrent requests over both replicas: 200s, 429s",
        f"{statuses.count(200)}, {len(refused)}",
        passed=statuses.count(200) == 100 and len(refused) == 60,
        target="100, 60",
    )
    assert statuses.count(200) == 100
    assert len(refused) == 60
    assert all(int(r.headers["retry-after"]) >= 1 for r in refused)
    assert all(r.json()["error"]["type"] == "rate_limit_error" for r in refused)


async def test_a_cached_answer_is_served_by_the_other_replica(
    cluster: Cluster, figures: Figures
) -> None:
    a, b = cluster.replicas
    u1 = cluster.fakes[0]
    plain = chat("mc", "cached plain")
    streamed = chat("mc", "cached stream", stream=True)
    u1.push(Behavior(json_body=completion("the plain answer")))
    async with cluster.client() as client:
        before = len(u1.chat_requests)
        miss = await client.post(f"{a}/v1/chat/completions", json=plain)
        hit = await client.post(f"{b}/v1/chat/completions", json=plain)
        plain_calls = len(u1.chat_requests) - before

        u1.push(Behavior(events=text_stream(["the ", "streamed ", "answer"])))
        before = len(u1.chat_requests)
        stream_miss = await client.post(f"{a}/v1/chat/completions", json=streamed)
        stream_hit = await client.post(f"{b}/v1/chat/completions", json=streamed)
        stream_calls = len(u1.chat_requests) - before

        before = len(u1.chat_requests)
        async with cluster.client(TENANT_B) as other:
            other_tenant = await other.post(f"{b}/v1/chat/completions", json=plain)
        tenant_calls = len(u1.chat_requests) - before

    assert (miss.headers["x-leap-cache"], hit.headers["x-leap-cache"]) == ("miss", "hit")
    assert hit.json()["choices"][0]["message"]["content"] == "the plain answer"
    assert (stream_miss.headers["x-leap-cache"], stream_hit.headers["x-leap-cache"]) == (
        "miss",
        "hit",
    )
    assert stream_hit.text == stream_miss.text
    assert stream_hit.text.rstrip().endswith("data: [DONE]")
    figures.record(
        ROW,
        "cached on replica A, asked of replica B: plain, streamed: x-leap-cache, upstream calls",
        f"{hit.headers['x-leap-cache']}, {stream_hit.headers['x-leap-cache']}; "
        f"{plain_calls}, {stream_calls}",
        passed=plain_calls == 1 and stream_calls == 1,
        target="hit, hit; 1, 1",
    )
    figures.record(
        ROW,
        "the same request from another tenant: x-leap-cache, upstream calls",
        f"{other_tenant.headers['x-leap-cache']}, {tenant_calls}",
        passed=other_tenant.headers["x-leap-cache"] == "miss" and tenant_calls == 1,
        target="miss, 1",
    )
    assert (plain_calls, stream_calls) == (1, 1)
    assert other_tenant.headers["x-leap-cache"] == "miss"
    assert tenant_calls == 1


async def test_30_identical_misses_at_once_make_one_upstream_call(
    cluster: Cluster, figures: Figures
) -> None:
    a, b = cluster.replicas
    u1 = cluster.fakes[0]
    u1.push(Behavior(json_body=completion("one answer for all"), before=0.5))
    body = chat("mc", "thirty at once")
    before = len(u1.chat_requests)
    async with cluster.client() as client:
        answers = await asyncio.gather(
            *(client.post(f"{(a, b)[i % 2]}/v1/chat/completions", json=body) for i in range(30))
        )
    calls = len(u1.chat_requests) - before
    contents = {answer.json()["choices"][0]["message"]["content"] for answer in answers}

    figures.record(
        ROW,
        "30 identical concurrent misses over both replicas: upstream calls",
        calls,
        passed=calls == 1,
        target="1",
    )
    assert [answer.status_code for answer in answers] == [200] * 30
    assert contents == {"one answer for all"}
    assert calls == 1


async def test_a_conversation_goes_on_at_the_other_replica(
    cluster: Cluster, figures: Figures
) -> None:
    a, b = cluster.replicas
    u1 = cluster.fakes[0]
    async with cluster.client() as client:
        first = await client.post(f"{a}/v1/responses", json={"model": "m5", "input": "first turn"})
        follow_up = await client.post(
            f"{b}/v1/responses",
            json={
                "model": "m5",
                "input": "second turn",
                "previous_response_id": first.json()["id"],
            },
        )
        async with cluster.client(TENANT_B) as other:
            foreign = await other.post(
                f"{b}/v1/responses",
                json={"model": "m5", "input": "x", "previous_response_id": first.json()["id"]},
            )
    history = [m["content"] for m in u1.chat_requests[-1].json["messages"]]

    figures.record(
        ROW,
        "a Responses turn stored by replica A, continued at replica B: status; "
        "another tenant naming it: status",
        f"{follow_up.status_code}; {foreign.status_code}",
        passed=follow_up.status_code == 200 and foreign.status_code == 404,
        target="200; 404",
    )
    assert first.status_code == 200
    assert follow_up.status_code == 200
    assert history[0] == "first turn"
    assert history[-1] == "second turn"
    assert foreign.status_code == 404


async def test_a_session_stays_on_one_provider_whichever_replica_it_reaches(
    cluster: Cluster, figures: Figures
) -> None:
    served: dict[str, set[str]] = {}
    async with cluster.client() as client:
        for session in ("s-1", "s-2", "s-3", "s-4"):
            for i in range(6):
                answer = await client.post(
                    f"{cluster.replicas[i % 2]}/v1/chat/completions",
                    json=chat("sticky-ms", f"turn {i}"),
                    headers={"x-session-id": session},
                )
                assert answer.status_code == 200
                served.setdefault(session, set()).add(answer.headers["x-leap-provider"])
    providers = {session: sorted(names) for session, names in served.items()}

    figures.record(
        ROW,
        "sticky alias (round robin over U1, U3), 4 sessions x 6 turns alternating replicas: "
        "providers per session",
        ", ".join(f"{s}: {'+'.join(p)}" for s, p in providers.items()),
        passed=all(len(p) == 1 for p in providers.values()),
        target="one each",
    )
    assert all(len(names) == 1 for names in providers.values())


async def test_serve_with_workers_shares_limits_between_them(
    cluster: Cluster, figures: Figures, tmp_path: Path
) -> None:
    port = _free_port()
    log = tmp_path / "workers.log"
    process = _gateway(cluster.config, port, log, workers=2)
    try:
        _wait_up(port)
        async with cluster.client() as client:
            answers = await asyncio.gather(
                *(
                    client.post(
                        f"http://127.0.0.1:{port}/v1/chat/completions", json=chat("mw", f"w{i}")
                    )
                    for i in range(20)
                )
            )
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=20)
    admitted = [answer.status_code for answer in answers].count(200)

    figures.record(
        ROW,
        "leapasgi serve --workers 2 on Redis, RPM 10, 20 concurrent requests: admitted",
        admitted,
        passed=admitted == 10,
        target="10",
    )
    assert admitted == 10


@contextlib.asynccontextmanager
async def steady_load(cluster: Cluster, rate: float) -> AsyncIterator[list[Any]]:
    """Requests at ``rate`` per second over both replicas, through the limiter (m5) and the
    cache (mc, every one a miss) until the block ends; yields the results as they come:
    a status, or "hung" for a request with no answer within 10 s. ``slowest`` holds the
    longest a request took, in seconds."""
    results: list[Any] = []
    slowest = [0.0]
    stop = asyncio.Event()

    async def one(client: httpx.AsyncClient, i: int) -> None:
        replica = cluster.replicas[i % 2]
        body = chat("m5", f"load {i}") if i % 3 else chat("mc", f"miss {i} {time.time()}")
        started = time.monotonic()
        try:
            answer = await client.post(f"{replica}/v1/chat/completions", json=body)
            results.append(answer.status_code)
        except httpx.TimeoutException:
            results.append("hung")
        slowest[0] = max(slowest[0], time.monotonic() - started)

    async def run() -> None:
        async with cluster.client(timeout=10) as client, asyncio.TaskGroup() as group:
            i = 0
            while not stop.is_set():
                group.create_task(one(client, i))
                i += 1
                await asyncio.sleep(1 / rate)

    task = asyncio.create_task(run())
    try:
        yield results
    finally:
        stop.set()
        await task
        results.append(("slowest", slowest[0]))


async def back_to_shared(cluster: Cluster, since: float) -> float | None:
    """Seconds from ``since`` until both replicas run on shared state again (None: not in 10 s)."""
    async with cluster.client() as client:
        while time.monotonic() - since < 10:
            states = [await state_of(client, replica) for replica in cluster.replicas]
            if all(state["shared"] and not state["degraded"] for state in states):
                return time.monotonic() - since
            await asyncio.sleep(0.05)
    return None


async def shared_limit_admits(cluster: Cluster, model: str) -> int:
    """How many of 20 concurrent requests over both replicas an RPM 10 limit lets through."""
    async with cluster.client() as client:
        answers = await asyncio.gather(
            *(
                client.post(
                    f"{cluster.replicas[i % 2]}/v1/chat/completions", json=chat(model, f"s{i}")
                )
                for i in range(20)
            )
        )
    return [answer.status_code for answer in answers].count(200)


def check_outage(
    figures: Figures,
    outage: str,
    after: str,
    results: list[Any],
    *,
    degraded: list[dict[str, Any]],
    recovered: float | None,
    admitted: int,
) -> None:
    """Record and check what the load saw through an outage, and how state came back."""
    (_, slowest) = results.pop()
    hung = results.count("hung")
    errors = len([r for r in results if r != 200 and r != "hung"])
    figures.record(
        ROW,
        f"{outage} under 20 req/s: requests, hung, errors, slowest (s)",
        f"{len(results)}, {hung}, {errors}, {slowest:.2f}",
        passed=hung == 0 and errors == 0 and len(results) >= 100,
        target="0 hung, 0 errors",
    )
    figures.record(
        ROW,
        f"{after}: both replicas on shared state again after s; RPM 10 over both admits",
        f"{recovered if recovered is None else round(recovered, 2)}; {admitted} of 20",
        passed=recovered is not None and recovered <= 5 and admitted == 10,
        target="<= 5; 10 of 20",
    )
    assert all(state["degraded"] for state in degraded)
    assert hung == 0
    assert errors == 0
    assert recovered is not None
    assert recovered <= 5
    assert admitted == 10


async def test_redis_frozen_hangs_nothing_and_shared_limits_return(
    cluster: Cluster, figures: Figures
) -> None:
    async with steady_load(cluster, 20) as results:
        await asyncio.sleep(1)
        cluster.redis.freeze()
        try:
            await asyncio.sleep(4)
            async with cluster.client() as client:
                degraded = [await state_of(client, replica) for replica in cluster.replicas]
            await asyncio.sleep(4)
        finally:
            cluster.redis.thaw()
        thawed = time.monotonic()
        recovered = await back_to_shared(cluster, thawed)
        await asyncio.sleep(0.5)
    admitted = await shared_limit_admits(cluster, "m4")

    check_outage(
        figures,
        "Redis frozen (SIGSTOP) 8 s",
        "after SIGCONT",
        results,
        degraded=degraded,
        recovered=recovered,
        admitted=admitted,
    )


async def test_redis_killed_and_restarted_hangs_nothing_and_shared_limits_return(
    cluster: Cluster, figures: Figures
) -> None:
    async with steady_load(cluster, 20) as results:
        await asyncio.sleep(1)
        cluster.redis.kill()
        await asyncio.sleep(4)
        async with cluster.client() as client:
            degraded = [await state_of(client, replica) for replica in cluster.replicas]
        cluster.redis.restart()
        restarted = time.monotonic()
        recovered = await back_to_shared(cluster, restarted)
        await asyncio.sleep(0.5)
    admitted = await shared_limit_admits(cluster, "m6")

    check_outage(
        figures,
        "Redis killed for 4 s, then restarted,",
        "after the restart",
        results,
        degraded=degraded,
        recovered=recovered,
        admitted=admitted,
    )


async def test_the_redis_password_never_reaches_a_log_or_an_answer(
    cluster: Cluster, figures: Figures
) -> None:
    async with cluster.client() as client:
        states = [await state_of(client, replica) for replica in cluster.replicas]
        metrics = [(await client.get(f"{r}/metrics")).text for r in cluster.replicas]
    logs = [log.read_text(errors="replace") for log in cluster.logs]
    seen = sum(text.count(REDIS_PASSWORD) for text in [*logs, *metrics, repr(states)])

    figures.record(
        ROW,
        "the Redis password in replica logs (with their degraded-mode warnings), /metrics and "
        "readiness",
        seen,
        passed=seen == 0,
        target="0",
    )
    assert any("Redis" in text or "redis" in text for text in logs)
    assert seen == 0
