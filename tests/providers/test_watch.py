from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from leapasgi.providers._watch import Expired, ReadWatch

pytestmark = pytest.mark.anyio


async def never() -> bytes:
    await asyncio.sleep(3600)
    return b""


def after(seconds: float, data: bytes = b"x") -> Callable[[], Awaitable[bytes]]:
    async def read() -> bytes:
        await asyncio.sleep(seconds)
        return data

    return read


async def test_silence_longer_than_idle_expires_the_read() -> None:
    watch = ReadWatch(idle=0.05, remaining=10)
    with pytest.raises(Expired) as caught:
        await watch.read(never)
    watch.close()
    assert caught.value.kind == "idle"


async def test_a_slow_consumer_between_reads_is_not_upstream_silence() -> None:
    watch = ReadWatch(idle=0.05, remaining=10)
    for _ in range(3):
        assert await watch.read(after(0.01)) == b"x"
        await asyncio.sleep(0.08)  # longer than idle, but nobody is reading
    watch.close()


async def test_the_deadline_stops_a_drip_that_never_goes_idle() -> None:
    watch = ReadWatch(idle=0.05, remaining=0.2)

    async def drip() -> None:
        while True:
            await watch.read(after(0.01))

    with pytest.raises(Expired) as caught:
        await drip()
    assert caught.value.kind == "deadline"
    with pytest.raises(Expired):
        await watch.read(after(0))
    watch.close()


async def test_an_outside_cancellation_stays_a_cancellation() -> None:
    watch = ReadWatch(idle=5, remaining=10)
    task = asyncio.create_task(watch.read(never))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    watch.close()
