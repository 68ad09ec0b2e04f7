from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.fake_upstream import FakeUpstream


@pytest.fixture
def anyio_backend() -> str:
    # aiohttp runs on asyncio only.
    return "asyncio"


@pytest.fixture
async def upstream() -> AsyncIterator[FakeUpstream]:
    async with FakeUpstream() as fake:
        yield fake
