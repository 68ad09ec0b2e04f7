"""RedisState when Redis is frozen, killed, restarted or not there yet: nothing waits longer
than ``op_timeout``, everything runs on local state (limits divided by the replicas), one
warning says so, and shared state returns within seconds of Redis."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable

import pytest
from pydantic import SecretStr

from leapasgi.conversations import StoredResponse
from leapasgi.state.base import BreakerEvent, Bucket, Reservation
from leapasgi.state.redis import RedisState
from tests.redis_server import RedisServer, free_port

from .conftest import Replicas, eventually, raw, replica

pytestmark = pytest.mark.anyio

PASSWORD = "s3cret-Passw0rd"
# Short enough to show that nothing waits longer, long enough that a busy machine's stalls
# do not count as Redis failing.
OP_TIMEOUT = 0.25


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "leapasgi.state" and r.levelno == logging.WARNING
    ]


def every_operation(state: RedisState, n: int) -> list[Awaitable[object]]:
    """One of each operation a request may make, ``n`` times over, on fresh keys."""
    store = state.responses(ttl=10, max_entries=100, max_bytes=10**6)
    calls: list[Awaitable[object]] = []
    for i in range(n):
        calls += [
            state.limiter.reserve((Bucket(f"p:{i}", rpm=10, tpm=1000),), 1),
            state.cache.get(f"k{i}"),
            state.cache.put(f"k{i}", b"v", 10),
            state.cache.claim(f"c{i}", 10),
            state.cache.claimed(f"c{i}"),
            state.sticky.get(f"s{i}"),
            state.sticky.set(f"s{i}", "p", 10),
            state.lock.acquire(f"l{i}", 10),
            store.get(f"r{i}", owner=None),
            store.put(StoredResponse(f"r{i}", {"id": f"r{i}"}, ())),
        ]
    return calls


async def admitted(state: RedisState, bucket: Bucket, attempts: int) -> int:
    results = [await state.limiter.reserve((bucket,), 0) for _ in range(attempts)]
    return sum(isinstance(r, Reservation) for r in results)


async def sound(state: RedisState, n: int = 30) -> bool:
    """Whether answers reach the calls that asked (no connection left out of step)."""
    for i in range(n):
        await state.sticky.set(f"check{i}", f"p{i}", 10)
    got = await asyncio.gather(*(state.sticky.get(f"check{i}") for i in range(n)))
    return got == [f"p{i}" for i in range(n)]


async def test_a_frozen_server_hangs_nothing_and_shared_state_returns_after_thaw(
    replicas: Replicas, caplog: pytest.LogCaptureFixture
) -> None:
    state = await replicas.start(replicas=2, op_timeout=OP_TIMEOUT)
    assert await sound(state)
    replicas.server.freeze()
    began = time.monotonic()
    await asyncio.gather(*every_operation(state, 30))  # 300 calls in flight when it froze
    assert time.monotonic() - began < 1.0
    status = state.status()
    assert status.degraded
    assert not status.shared
    assert status.detail == "timed out"
    assert status.since is not None
    assert status.replicas == 2
    assert status.errors >= 1
    assert len(warnings_of(caplog)) == 1

    # Degraded, calls never touch Redis: no per-call timeout to wait out.
    began = time.monotonic()
    for _ in range(20):
        await asyncio.gather(*every_operation(state, 5))
    assert time.monotonic() - began < 0.5
    assert len(warnings_of(caplog)) == 1
    assert await admitted(state, Bucket("p:local", rpm=10), 10) == 5  # 10 / 2 replicas
    await state.cache.put("local", b"v", 10)
    assert await state.cache.get("local") == b"v"
    assert state.cache.usage() == (31, 31)  # the local store: 30 puts above, and this one

    replicas.server.thaw()
    took = await eventually(lambda: state.status().shared)
    assert took < 5
    assert "state is shared again" in warnings_of(caplog)[-1]
    errors = state.status().errors
    assert await sound(state)
    assert await admitted(state, Bucket("p:shared", rpm=10), 12) == 10
    assert state.status().errors == errors
    assert await state.cache.get("local") is None  # the local fallback's entries are gone


async def connections(url: str) -> list[bytes]:
    """The ids of the server's client connections, but the one asking."""
    listing: bytes = await raw(url, "CLIENT", "LIST")
    fields = [dict(f.split(b"=", 1) for f in line.split(b" ")) for line in listing.splitlines()]
    return [f[b"id"] for f in fields if f[b"cmd"] != b"client|list"]


async def test_degraded_mode_gives_up_its_connection_and_recovers_on_a_fresh_one(
    replicas: Replicas,
) -> None:
    state = await replicas.start(op_timeout=OP_TIMEOUT)
    url = replicas.server.url
    await state.sticky.set("s", "p", 10)
    (before,) = await connections(url)
    replicas.server.freeze()
    await state.sticky.get("s")  # times out: degraded
    assert state.status().degraded

    replicas.server.thaw()
    await eventually(lambda: state.status().shared)
    assert await state.sticky.get("s") == "p"
    (after,) = await connections(url)  # the frozen one was closed, never used again
    assert after != before


class Silencer:
    """A TCP proxy to a server whose open connections can be silenced (half-open: what is
    sent is swallowed, nothing answers, nothing closes) while new ones still pass."""

    def __init__(self, port: int) -> None:
        self.port = port
        self._round = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: list[asyncio.StreamWriter] = []
        self._server: asyncio.Server | None = None

    async def start(self) -> str:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        return f"redis://127.0.0.1:{self._server.sockets[0].getsockname()[1]}/0"

    def silence(self) -> None:
        self._round += 1

    async def aclose(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for writer in self._writers:
            writer.close()
        await self._server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.port)
        self._writers += (writer, up_writer)
        for source, sink in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._pump(source, sink, self._round))
            self._tasks.add(task)

    async def _pump(
        self, source: asyncio.StreamReader, sink: asyncio.StreamWriter, born: int
    ) -> None:
        while data := await source.read(65536):
            if self._round == born:
                sink.write(data)


async def test_a_half_open_connection_is_never_used_again(replicas: Replicas) -> None:
    proxy = Silencer(replicas.server.port)
    state = await replicas.start(await proxy.start(), op_timeout=OP_TIMEOUT)
    try:
        await state.sticky.set("s", "p", 10)
        proxy.silence()
        await state.sticky.get("s")  # times out: degraded
        assert state.status().degraded
        await eventually(lambda: state.status().shared, within=2)  # on a new connection
        assert await state.sticky.get("s") == "p"
    finally:
        await state.aclose()
        await proxy.aclose()


async def test_an_error_reply_is_named_by_its_code_alone(replicas: Replicas) -> None:
    state = await replicas.start(op_timeout=OP_TIMEOUT)
    await raw(replicas.server.url, "HSET", "leap:s:odd", "field", "value")  # not a string
    assert await state.sticky.get("odd") is None  # answered locally
    status = state.status()
    assert status.degraded
    assert status.detail == "server replied WRONGTYPE"


async def test_a_killed_and_restarted_server_is_used_again(
    replicas: Replicas, caplog: pytest.LogCaptureFixture
) -> None:
    a = await replicas.start(op_timeout=OP_TIMEOUT)
    b = await replicas.start(op_timeout=OP_TIMEOUT)
    assert isinstance(await a.limiter.reserve((Bucket("p:x", rpm=5),), 0), Reservation)
    replicas.server.kill()
    began = time.monotonic()
    await asyncio.gather(*every_operation(a, 10), *every_operation(b, 10))
    assert time.monotonic() - began < 0.5
    assert a.status().degraded
    assert b.status().degraded
    assert a.status().detail == "ConnectionError"

    replicas.server.restart()  # empty: scripts and data are gone
    await eventually(lambda: a.status().shared and b.status().shared)
    errors = a.status().errors + b.status().errors
    assert await sound(a)
    assert await sound(b)
    bucket = Bucket("p:after", rpm=4)
    assert await admitted(a, bucket, 3) + await admitted(b, bucket, 3) == 4
    await a.cache.put("k", b"v", 10)
    assert await b.cache.get("k") == b"v"
    assert a.status().errors + b.status().errors == errors
    assert len([w for w in warnings_of(caplog) if "local state" in w]) == 2  # one each


async def test_an_unreachable_server_at_start_means_degraded_then_shared_once_it_is_up(
    caplog: pytest.LogCaptureFixture,
) -> None:
    port = free_port()
    server = RedisServer(port=port)
    state = replica(server.url, replicas=3, op_timeout=OP_TIMEOUT)
    try:
        began = time.monotonic()
        await state.start(lambda event: None)  # never raises
        assert time.monotonic() - began < 0.5
        status = state.status()
        assert status.degraded
        assert status.detail == "ConnectionError"
        assert "unreachable at start" in warnings_of(caplog)[0]
        assert await admitted(state, Bucket("p:x", rpm=9), 9) == 3
        server.start()
        took = await eventually(lambda: state.status().shared)
        assert took < 5
        assert await sound(state)
    finally:
        await state.aclose()
        server.stop()


async def test_work_done_while_degraded_is_not_lost_when_redis_returns(
    replicas: Replicas,
) -> None:
    a = await replicas.start(op_timeout=OP_TIMEOUT)
    b = await replicas.start(op_timeout=OP_TIMEOUT)
    bucket = (Bucket("p:x", rpm=2),)
    held = [await a.limiter.reserve(bucket, 0) for _ in range(2)]
    assert all(isinstance(r, Reservation) for r in held)
    store = a.responses(ttl=10, max_entries=10, max_bytes=10**6)

    replicas.server.freeze()
    await a.sticky.get("anything")  # this times out: a is degraded
    assert a.status().degraded
    for reservation in held:
        assert isinstance(reservation, Reservation)
        a.limiter.settle(reservation, None)  # kept until Redis is back
    local = await a.limiter.reserve(bucket, 0)
    assert isinstance(local, Reservation)
    assert local.id.startswith("m")
    await store.put(StoredResponse("r1", {"id": "r1"}, (), owner="alice"))
    a.board.publish(BreakerEvent("openai", at=time.time(), open_until=time.time() + 30))
    assert a.status().details["pending_settlements"] == 2

    replicas.server.thaw()
    await eventually(lambda: a.status().shared)
    a.limiter.settle(local, None)  # made by the fallback: settled there
    await a.limiter.flush()
    assert a.status().details["pending_settlements"] == 0
    assert await admitted(b, bucket[0], 3) == 2  # both releases reached Redis
    got = await store.get("r1", owner="alice")  # kept by the fallback
    assert got is not None
    assert got.response == {"id": "r1"}
    await eventually(lambda: [e.provider for e in replicas.applied[1]] == ["openai"], within=2)


async def test_the_url_and_its_password_are_never_shown(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    with RedisServer(password=PASSWORD) as server:
        good = replica(server.url, op_timeout=OP_TIMEOUT)
        wrong = replica(server.url.replace(PASSWORD, PASSWORD[::-1]), op_timeout=OP_TIMEOUT)
        try:
            await good.start(lambda event: None)
            await wrong.start(lambda event: None)
            assert good.status().shared
            assert await sound(good)
            assert wrong.status().degraded
            server.freeze()
            await good.cache.get("k")
            assert good.status().degraded
            server.thaw()
            await eventually(lambda: good.status().shared)
            shown = [
                caplog.text,
                repr(good.status()),
                repr(wrong.status()),
                repr(good),
                repr(vars(good)),
                repr(vars(good.limiter)),
                repr(vars(good.cache)),
            ]
            for text in shown:
                assert PASSWORD not in text
                assert PASSWORD[::-1] not in text
        finally:
            await good.aclose()
            await wrong.aclose()


async def test_aclose_returns_promptly_even_with_the_server_frozen(
    replicas: Replicas,
) -> None:
    state = await replicas.start(op_timeout=OP_TIMEOUT)
    await state.cache.put("k", b"v", 10)
    reservation = await state.limiter.reserve((Bucket("p:x", rpm=5),), 0)
    assert isinstance(reservation, Reservation)
    replicas.server.freeze()
    state.limiter.settle(reservation, None)  # its batch is in flight at close
    await asyncio.sleep(0.01)
    began = time.monotonic()
    await state.aclose()
    assert time.monotonic() - began < 1.0


async def test_an_unusable_url_is_a_configuration_error_without_the_url() -> None:
    from leapasgi.exceptions import ConfigurationError

    with pytest.raises(ConfigurationError) as caught:
        RedisState(SecretStr(f"http://user:{PASSWORD}@host:1/0"))
    assert PASSWORD not in str(caught.value)
    assert caught.value.__cause__ is None
    assert caught.value.__suppress_context__
