"""The live gateways the SDK tests share, on asyncio's loop and on uvloop's (as ``leapasgi
serve`` runs). Here rather than imported: a fixture imported into a test module reads as an
unused name that its tests' parameters shadow."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.asgi.live_server import LOOPS, LiveGateway, Serve, gateways, live_gateway


@pytest.fixture(scope="module", params=LOOPS)
def live(request: pytest.FixtureRequest) -> Iterator[LiveGateway]:
    """One gateway with the mock provider, shared by a module's tests that only need the
    mock."""
    with live_gateway(loop=request.param) as gateway:
        yield gateway


@pytest.fixture(params=LOOPS)
def serve(request: pytest.FixtureRequest) -> Iterator[Serve]:
    """Start gateways with their own providers and upstreams; all stop after the test."""
    with gateways(loop=request.param) as start:
        yield start
