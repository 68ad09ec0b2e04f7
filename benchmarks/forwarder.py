"""The floor for any Python gateway: Starlette on uvicorn forwarding to one upstream, unparsed.

    python benchmarks/forwarder.py --port 8001 --upstream http://127.0.0.1:9000

POST /v1/chat/completions (and /v1/messages, /v1/responses: the floor for native pass-through)
sends the body bytes as they came through one pooled aiohttp session to the same path upstream
and returns the upstream's answer untouched: read whole when it is JSON, passed on piece by piece
as it arrives when it is an event stream. No validation, routing, retries, metrics or logging.
"""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import TypedDict

import aiohttp
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

PATH = "/v1/chat/completions"
PATHS = (PATH, "/v1/messages", "/v1/responses")
HEADERS = {"Content-Type": "application/json"}


class State(TypedDict):
    session: aiohttp.ClientSession


def build_app(upstream: str) -> Starlette:
    """The forwarder for the upstream at base URL ``upstream`` (without ``/v1``)."""

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[State]:
        connector = aiohttp.TCPConnector(limit=100)
        async with aiohttp.ClientSession(
            connector=connector, cookie_jar=aiohttp.DummyCookieJar()
        ) as session:
            yield {"session": session}

    base = upstream.rstrip("/")
    routes = [Route(path, forwarder(base + path), methods=["POST"]) for path in PATHS]
    return Starlette(routes=routes, lifespan=lifespan)


def forwarder(url: str) -> Callable[[Request], Awaitable[Response]]:
    """The endpoint passing its requests to ``url``."""

    async def forward(request: Request) -> Response:
        session: aiohttp.ClientSession = request.state.session
        body = await request.body()
        upstream = await session.post(url, data=body, headers=HEADERS)
        media_type = upstream.headers.get("Content-Type")
        if media_type is not None and media_type.startswith("text/event-stream"):
            return StreamingResponse(_relay(upstream), upstream.status, media_type=media_type)
        try:
            content = await upstream.read()
        finally:
            upstream.release()
        return Response(content, status_code=upstream.status, media_type=media_type)

    return forward


async def _relay(upstream: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
    try:
        async for piece in upstream.content.iter_any():
            yield piece
    finally:
        upstream.release()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--upstream", required=True, help="base URL, e.g. http://127.0.0.1:9000")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    args = parser.parse_args()
    # uvicorn's defaults pick uvloop and httptools when installed, as `leapasgi serve` does.
    uvicorn.run(
        build_app(args.upstream),
        host=args.host,
        port=args.port,
        workers=1,
        access_log=False,
        log_level="warning",
    )


if __name__ == "__main__":
    main()
