"""Row 12: a client that goes away cancels its upstream request at once, however it leaves and
whatever the gateway is mounted in; the in-flight gauge comes back to 0.

The client is a raw socket, so the moment it closes is known exactly; the fake upstream notes
when it saw its request's connection go.
"""

from __future__ import annotations

import contextlib
import json
import socket
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Mount, Route

from leapasgi import Gateway
from tests.asgi.live_server import AppFactory, LiveGateway
from tests.fake_upstream import Behavior, chunk, completion, sse
from tests.reliability.harness import Figures, reliability_gateway

BODY = {"model": "m1", "messages": [{"role": "user", "content": "hi"}]}
NOTICE_WITHIN = 1.0
SLOW = 30.0  # longer than any test: only a cancellation ends these upstream calls
ONE_PROVIDER = {"u2": {"models": ["other"]}, "u3": {"models": ["other"]}}
# A long, slow stream: a chunk every 50 ms for 30 s.
SLOW_STREAM = Behavior(
    events=sse(chunk({"role": "assistant", "content": ""}), *[chunk({"content": "x"})] * 600),
    delay=0.05,
)


class _Tag(BaseHTTPMiddleware):
    async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        response = await call_next(request)
        response.headers["x-host"] = "yes"
        return response


def _host_app(gateway: Gateway) -> Any:
    """A host app behind BaseHTTPMiddleware with the gateway mounted at /llm."""

    async def home(request: Request) -> Response:
        return PlainTextResponse("host")

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with gateway:  # mounted apps get no lifespan: the host runs the gateway's
            yield

    return Starlette(
        routes=[Route("/", home), Mount("/llm", app=gateway.app)],
        middleware=[Middleware(_Tag)],
        lifespan=lifespan,
    )


def _request(path: str, body: dict[str, Any], port: int) -> socket.socket:
    payload = json.dumps(body).encode()
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\n\r\n"
    ).encode()
    sock.sendall(head + payload)
    return sock


def _read_until(sock: socket.socket, marker: bytes) -> bytes:
    received = b""
    while marker not in received:
        data = sock.recv(65536)
        if not data:
            raise AssertionError(f"closed before {marker!r}: {received[-300:]!r}")
        received += data
    return received


def _wait_for(check: Callable[[], bool], within: float) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.01)
    return check()


Leave = Callable[[socket.socket], None]


def _after_two_chunks(sock: socket.socket) -> None:
    _read_until(sock, b'"x"')  # a chunk after the first: the stream is well under way


def _at_once(sock: socket.socket) -> None:
    time.sleep(0.3)  # the request is in flight upstream, nothing came back yet


VARIANTS: dict[str, tuple[Behavior, bool, Leave, str]] = {
    "mid-stream": (SLOW_STREAM, True, _after_two_chunks, ""),
    "before the first token": (Behavior(events=sse(chunk({})), before=SLOW), True, _at_once, ""),
    "non-streaming call": (
        Behavior(json_body=completion("late"), before=SLOW),
        False,
        _at_once,
        "",
    ),
    "mid-stream, mounted under BaseHTTPMiddleware": (SLOW_STREAM, True, _after_two_chunks, "/llm"),
    "non-streaming, mounted under BaseHTTPMiddleware": (
        Behavior(json_body=completion("late"), before=SLOW),
        False,
        _at_once,
        "/llm",
    ),
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_row12_the_upstream_sees_the_client_leave_within_a_second(
    figures: Figures, variant: str
) -> None:
    behavior, stream, leave, prefix = VARIANTS[variant]
    host: AppFactory | None = _host_app if prefix else None
    with reliability_gateway(provider_options=ONE_PROVIDER, app=host) as live:
        upstream = live.upstreams[0]
        upstream.default = behavior
        path = f"{prefix}/v1/chat/completions"
        with _request(path, {**BODY, "stream": stream}, live.port) as sock:
            assert _wait_for(lambda: bool(upstream.chat_requests), 5.0)
            leave(sock)
        closed = time.monotonic()
        seen = upstream.chat_requests[0]
        noticed = _wait_for(lambda: seen.client_went_away, NOTICE_WITHIN + 1.0)
        after = (seen.finished or time.monotonic()) - closed
        drained = _wait_for(lambda: _in_flight(live) == 0, NOTICE_WITHIN)
    ok = noticed and after <= NOTICE_WITHIN and drained
    figures.record("12", f"{variant}: upstream saw the close after s", round(after, 3), passed=ok)
    assert noticed
    assert after <= NOTICE_WITHIN
    assert drained


def _in_flight(live: LiveGateway) -> int:
    return sum(e.stats.in_flight for e in live.gateway.manager.registry)
