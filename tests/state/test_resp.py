"""The pipelined Redis connection against a real redis-server: replies in order, errors as
errors, scripts loaded when Redis does not know them, a caller's timeout leaving the
connection in step, a lost connection failing its callers and coming back, and the URL's
password never shown."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from pydantic import SecretStr

from leapasgi.state._resp import RedisClient, RedisError, ReplyError, Script, encode
from tests.redis_server import RedisServer

pytestmark = pytest.mark.anyio


@pytest.fixture
def server() -> Iterator[RedisServer]:
    with RedisServer(password="resp-test-password") as redis:
        yield redis


def client(server: RedisServer, *, url: str | None = None) -> RedisClient:
    return RedisClient(SecretStr(url or server.url), connect_timeout=1)


def test_commands_are_framed_as_resp_arrays() -> None:
    assert (
        encode((b"SET", "k", 5, 0.5)) == b"*4\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\n5\r\n$3\r\n0.5\r\n"
    )


async def test_many_callers_share_one_connection_and_get_their_own_replies(
    server: RedisServer,
) -> None:
    redis = client(server)
    await asyncio.gather(*(redis.execute("SET", f"k{i}", i) for i in range(200)))

    values = await asyncio.gather(*(redis.execute("GET", f"k{i}") for i in range(200)))

    assert values == [str(i).encode() for i in range(200)]
    clients = await redis.execute("CLIENT", "LIST")
    assert clients.count(b"cmd=") == 1  # one connection did all of it
    await redis.aclose()


async def test_an_error_reply_raises_and_the_next_command_still_works(server: RedisServer) -> None:
    redis = client(server)
    await redis.execute("SET", "s", "text")

    with pytest.raises(ReplyError, match="WRONGTYPE") as caught:
        await redis.execute("LPUSH", "s", "x")
    assert caught.value.code == "WRONGTYPE"
    assert await redis.execute("GET", "s") == b"text"
    await redis.aclose()


async def test_a_script_unknown_to_redis_is_loaded_then_run_by_its_digest(
    server: RedisServer,
) -> None:
    redis = client(server)
    script = Script("return {KEYS[1], ARGV[1]}")

    first = await redis.run(script, ["key"], ["arg"])
    known = await redis.execute("SCRIPT", "EXISTS", script.sha)

    assert first == [b"key", b"arg"]
    assert known == [1]
    assert await redis.run(script, ["k2"], [2]) == [b"k2", b"2"]
    await redis.aclose()


async def test_a_caller_that_gives_up_leaves_the_connection_in_step(server: RedisServer) -> None:
    redis = client(server)
    await redis.execute("SET", "a", "1")
    server.freeze()
    try:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.1):
                await redis.execute("GET", "late")
    finally:
        server.thaw()

    # The late reply to GET late (nil) is dropped; this caller gets its own.
    assert await redis.execute("GET", "a") == b"1"
    await redis.aclose()


async def test_a_lost_connection_fails_its_callers_and_the_next_command_reconnects(
    server: RedisServer,
) -> None:
    redis = client(server)
    await redis.execute("SET", "a", "1")
    server.kill()

    with pytest.raises(RedisError) as caught:
        await redis.execute("GET", "a")
    assert not isinstance(caught.value, ReplyError)
    server.restart()

    assert await redis.execute("SET", "a", "2") == b"OK"
    await redis.aclose()


async def test_nothing_listening_is_a_redis_error(server: RedisServer) -> None:
    server.kill()
    redis = client(server)

    with pytest.raises(RedisError, match="cannot connect"):
        await redis.execute("PING")
    await redis.aclose()


async def test_a_wrong_password_is_refused_without_showing_it(server: RedisServer) -> None:
    url = f"redis://:not-the-password-123@127.0.0.1:{server.port}/0"
    redis = client(server, url=url)

    with pytest.raises(RedisError) as caught:
        await redis.execute("PING")

    assert "not-the-password-123" not in str(caught.value)
    assert "not-the-password-123" not in repr(redis)
    await redis.aclose()


async def test_the_database_in_the_url_is_selected(server: RedisServer) -> None:
    redis = client(server, url=server.url.rsplit("/", 1)[0] + "/3")
    await redis.execute("SET", "in-db-3", "yes")

    info = await redis.execute("CLIENT", "INFO")

    assert b"db=3" in info
    await redis.aclose()


def test_only_redis_urls_are_accepted() -> None:
    with pytest.raises(ValueError, match="redis://"):
        RedisClient(SecretStr("http://127.0.0.1:6379"), connect_timeout=1)
