from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from tests.asgi.live_server import LOOPS, Serve, gateways
from tests.tenants.issuer import IssuerThread, OAuthIssuer


@pytest.fixture
async def oauth_issuer() -> AsyncIterator[OAuthIssuer]:
    """A local OAuth issuer on 127.0.0.1 minting tokens on the system clock."""
    async with OAuthIssuer() as issuer:
        yield issuer


@pytest.fixture
def issuer_thread() -> Iterator[IssuerThread]:
    """A local OAuth issuer served from a thread of its own, for blocking clients."""
    with IssuerThread() as thread:
        yield thread


@pytest.fixture(params=LOOPS)
def serve(request: pytest.FixtureRequest) -> Iterator[Serve]:
    """Start live gateways (on asyncio's loop, then uvloop's); all stop after the test."""
    with gateways(loop=request.param) as start:
        yield start
