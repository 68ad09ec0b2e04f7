"""What the batch tests share."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

__all__ = ["until"]


async def until(check: Callable[[], Awaitable[bool]]) -> None:
    """Once ``check`` holds, polled on the loop (the 20 s deadline only bounds a failing
    test)."""
    async with asyncio.timeout(20):
        while True:
            if await check():
                return
            await asyncio.sleep(0.005)
