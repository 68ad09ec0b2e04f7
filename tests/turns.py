"""Waiting for other tasks in a test without sleeping: a bounded number of event-loop turns."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

__all__ = ["until"]

TURNS = 100


async def until(condition: Callable[[], object]) -> None:
    """Let other tasks run until ``condition()`` holds (at most TURNS loop turns)."""
    for _ in range(TURNS):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition never held")
