from __future__ import annotations

import pytest

from leapasgi.clock import FakeClock, sleep_until

pytestmark = pytest.mark.anyio


class EarlyClock(FakeClock):
    """Sleeps wake at 90% of what was asked, as an event loop's timers may."""

    async def sleep(self, seconds: float) -> None:
        await super().sleep(seconds * 0.9)


async def test_sleep_until_sleeps_again_until_the_time_has_come() -> None:
    clock = EarlyClock(start=100.0)
    await sleep_until(clock, 101.0)
    assert clock.monotonic() >= 101.0
    assert len(clock.sleeps) > 1


async def test_sleep_until_a_time_already_past_does_not_sleep() -> None:
    clock = FakeClock(start=100.0)
    await sleep_until(clock, 99.0)
    await sleep_until(clock, 100.0)
    assert clock.sleeps == []
