"""Row 21: hostile input. Oversized bodies, JSON bombs, huge arrays, broken header syntax, and
the headers a client must never get to the upstream.

Requests go over raw sockets (so nothing is tidied up by a client library) or httpx to a
gateway served by uvicorn; what reached the upstream is what the fake upstreams recorded.
"""

from __future__ import annotations

import json
import select
import socket
import statistics
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from aiohttp import web
from pydantic import SecretStr

from leapasgi.config import ServerConfig
from leapasgi.providers.compatible import UPSTREAM_HEADERS
from tests.asgi.live_server import LiveGateway
from tests.fake_upstream import Behavior, FakeUpstream, completion, text_stream
from tests.reliability.harness import KEY_PREFIX, Figures, reliability_gateway

CHAT = "/v1/chat/completions"
API_KEY = "sk-gw-hostile-5e2a9c7f31"
LIMIT = 8 * 1024 * 1024
BODY: dict[str, Any] = {"model": "m1", "messages": [{"role": "user", "content": "hi"}]}
# A bound that holds on a loaded 2-core machine; the figure records the measured value.
GENEROUS = 1.0
DEEP = 10_000
LONG = 100_000
CHUNK = 64 * 1024


class _RoomyUpstream(FakeUpstream):
    """A fake upstream that takes bodies as large as the gateway does (aiohttp stops at 1 MiB),
    so a huge request is judged by the gateway, not refused by the upstream mid-upload."""

    def _app(self) -> web.Application:
        app = web.Application(client_max_size=2 * LIMIT)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        return app


@pytest.fixture(scope="module")
def live() -> Iterator[LiveGateway]:
    # The client's own Host header is one a deployment serves, so it gets past the Host
    # check: what is tested is that it never reaches an upstream.
    server = ServerConfig(
        api_keys=[SecretStr(API_KEY)],
        max_body_bytes=LIMIT,
        allowed_hosts=["client-host.example"],
    )
    upstreams = [_RoomyUpstream() for _ in range(3)]
    with reliability_gateway(upstreams=upstreams, server=server) as gateway:
        for fake in gateway.upstreams:
            fake.default = Behavior(json_body=completion("fine"))
        yield gateway


def _status(response: bytes) -> int | None:
    """The status of a raw HTTP response; None when the server sent nothing."""
    if not response.startswith(b"HTTP/"):
        return None
    return int(response.split(b" ", 2)[1])


def _read_response(sock: socket.socket) -> bytes:
    """One whole response (by Content-Length), or what came before the server closed."""
    data = b""
    while True:
        head, sep, body = data.partition(b"\r\n\r\n")
        if sep:
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length" and len(body) >= int(value):
                    return data
        try:
            more = sock.recv(65536)
        except (TimeoutError, ConnectionError):
            return data
        if not more:
            return data
        data += more


def _exchange(live: LiveGateway, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", live.port), timeout=5.0) as sock:
        sock.sendall(request)
        return _read_response(sock)


def _head(*lines: str, path: str = CHAT) -> bytes:
    """A request head with the gateway key; ``lines`` are further header lines."""
    head = [
        f"POST {path} HTTP/1.1",
        "Host: 127.0.0.1",
        f"Authorization: Bearer {API_KEY}",
        "Content-Type: application/json",
        *lines,
    ]
    return ("\r\n".join(head) + "\r\n\r\n").encode()


def _error_json(response: bytes) -> dict[str, Any]:
    body = json.loads(response.partition(b"\r\n\r\n")[2])
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    return dict(body["error"])


def _root(live: LiveGateway) -> str:
    return f"http://127.0.0.1:{live.port}"


def _chat_requests(live: LiveGateway) -> int:
    return sum(len(fake.chat_requests) for fake in live.upstreams)


def test_row21_a_declared_oversized_body_is_refused_before_it_is_read(
    live: LiveGateway, figures: Figures
) -> None:
    before = _chat_requests(live)
    started = time.perf_counter()
    # The head only: had the gateway waited for the body it announced, this would time out.
    response = _exchange(live, _head(f"Content-Length: {8 * LIMIT}", "Connection: close"))
    elapsed = time.perf_counter() - started
    figures.record(
        "21",
        "declared 64 MiB body (Content-Length, 8 MiB limit): status, body bytes read",
        f"{_status(response)}, 0",
        passed=_status(response) == 413,
        target="413 before reading",
    )
    assert _status(response) == 413
    assert _error_json(response)["code"] == "request_too_large"
    assert elapsed < GENEROUS
    assert _chat_requests(live) == before


def test_row21_a_chunked_oversized_body_is_refused_while_it_arrives(
    live: LiveGateway, figures: Figures
) -> None:
    before = _chat_requests(live)
    piece = b"%x\r\n" % CHUNK + b"x" * CHUNK + b"\r\n"
    sent = 0
    response = b""
    with socket.create_connection(("127.0.0.1", live.port), timeout=5.0) as sock:
        sock.sendall(_head("Transfer-Encoding: chunked"))
        # Never the closing "0" chunk: only a refusal while it arrives ends this.
        while sent < 4 * LIMIT:
            readable, _, _ = select.select([sock], [], [], 0)
            if readable:
                break
            try:
                sock.sendall(piece)
            except (TimeoutError, ConnectionError):
                break
            sent += CHUNK
        response = _read_response(sock)
    figures.record(
        "21",
        f"chunked body over the {LIMIT >> 20} MiB limit: status, MiB sent before the answer",
        f"{_status(response)}, {sent / 2**20:.1f}",
        passed=_status(response) == 413,
        target="413 while it arrives",
    )
    assert _status(response) == 413
    assert _error_json(response)["code"] == "request_too_large"
    assert sent < 4 * LIMIT
    assert _chat_requests(live) == before


def _nested(depth: int, open_: str, close: str, inner: str = "") -> str:
    return open_ * depth + inner + close * depth


DEEP_BODIES: dict[str, str] = {
    "10,000 nested arrays in a field": json.dumps(BODY)[:-1]
    + ', "x": '
    + _nested(DEEP, "[", "]")
    + "}",
    "10,000 nested objects in a field": json.dumps(BODY)[:-1]
    + ', "x": '
    + _nested(DEEP, '{"a": ', "}", "1")
    + "}",
    "10,000 nested arrays as the body": _nested(DEEP, "[", "]"),
    "10,000 nested messages content": '{"model": "m1", "messages": '
    + _nested(DEEP, "[", "]")
    + "}",
    "10,000 unclosed arrays": "[" * DEEP,
}


def test_row21_deeply_nested_json_is_a_quick_400(live: LiveGateway, figures: Figures) -> None:
    before = _chat_requests(live)
    medians: dict[str, float] = {}
    statuses: set[int] = set()
    with httpx.Client(base_url=live.base_url, timeout=10.0) as http:
        headers = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
        for name, body in DEEP_BODIES.items():
            times = []
            for _ in range(5):
                started = time.perf_counter()
                response = http.post("/chat/completions", content=body, headers=headers)
                times.append(time.perf_counter() - started)
                statuses.add(response.status_code)
                assert response.json()["error"]["type"] == "invalid_request_error"
            medians[name] = statistics.median(times)
    slowest = max(medians.values()) * 1000
    figures.record(
        "21",
        "JSON nested 10,000 deep (5 shapes): statuses",
        ", ".join(map(str, sorted(statuses))),
        passed=statuses == {400},
        target="400",
    )
    figures.record(
        "21",
        "JSON nested 10,000 deep: slowest median round trip (ms)",
        round(slowest, 1),
        passed=slowest < 50,
        target="< 50 ms",
    )
    assert statuses == {400}
    assert slowest < GENEROUS * 1000
    assert _chat_requests(live) == before


def _long_bodies() -> dict[str, bytes]:
    message = {"role": "user", "content": "x"}
    part = {"type": "text", "text": "x"}
    return {
        "100,000 messages": json.dumps({**BODY, "messages": [message] * LONG}).encode(),
        "100,000 content parts": json.dumps(
            {**BODY, "messages": [{"role": "user", "content": [part] * LONG}]}
        ).encode(),
        "100,000 numbers in an unknown field": json.dumps(
            {**BODY, "x": list(range(LONG))}
        ).encode(),
        "100,000 stop sequences": json.dumps({**BODY, "stop": ["s"] * LONG}).encode(),
    }


def test_row21_huge_arrays_are_handled_without_a_5xx(live: LiveGateway, figures: Figures) -> None:
    results: dict[str, tuple[int, float]] = {}
    with httpx.Client(base_url=_root(live), timeout=30.0) as http:
        headers = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
        for name, body in _long_bodies().items():
            started = time.perf_counter()
            response = http.post(CHAT, content=body, headers=headers)
            results[name] = (response.status_code, time.perf_counter() - started)
            if response.status_code != 200:
                error = response.json()["error"]
                assert error["type"] == "invalid_request_error", (name, error)
        after = http.get("/health")
    for name, (status, seconds) in results.items():
        figures.record(
            "21",
            f"{name}: status, seconds",
            f"{status}, {seconds:.2f}",
            passed=status < 500,
            target="< 500",
        )
    assert all(status < 500 for status, _ in results.values())
    assert after.status_code == 200


BROKEN: dict[str, bytes] = {
    "CR inside a header value": _head("X-Evil: a\rInjected: 1", "Content-Length: 2") + b"{}",
    "bare LF inside a header value": _head("X-Evil: a\nInjected: 1", "Content-Length: 2") + b"{}",
    "NUL inside a header value": _head("X-Evil: a\0b", "Content-Length: 2") + b"{}",
    "CR in the Authorization value": _head(
        f"Authorization: Bearer {API_KEY}\rInjected: 1", "Content-Length: 2"
    )
    + b"{}",
    "obsolete line folding": _head("X-Evil: a", "  Injected: 1", "Content-Length: 2") + b"{}",
    "space in a header name": _head("Bad Header: 1", "Content-Length: 2") + b"{}",
    "header line without a colon": _head("NoColon", "Content-Length: 2") + b"{}",
    "Content-Length not a number": _head("Content-Length: abc") + b"{}",
    "negative Content-Length": _head("Content-Length: -1") + b"{}",
    "two different Content-Lengths": _head("Content-Length: 2", "Content-Length: 5") + b"{}",
    "Content-Length and chunked together": _head("Content-Length: 2", "Transfer-Encoding: chunked")
    + b"0\r\n\r\n",
    "chunk size not hex": _head("Transfer-Encoding: chunked") + b"zz\r\n{}\r\n0\r\n\r\n",
    "CR in the request target": b"POST /v1/chat/completions\rInjected: 1 HTTP/1.1\r\n"
    b"Host: x\r\nContent-Length: 2\r\n\r\n{}",
    "64 KiB header value": _head("X-Big: " + "a" * 65536, "Content-Length: 2") + b"{}",
    "HTTP/0.9 request": b"GET /health\r\n\r\n",
}


def test_row21_broken_header_syntax_never_gets_a_5xx(live: LiveGateway, figures: Figures) -> None:
    statuses: dict[str, int | None] = {}
    for name, request in BROKEN.items():
        statuses[name] = _status(_exchange(live, request))
    alive = httpx.get(_root(live) + "/health", timeout=10.0).status_code
    server_errors = [name for name, status in statuses.items() if status and status >= 500]
    injected = [
        s for fake in live.upstreams for s in fake.seen if "injected" in map(str.lower, s.headers)
    ]
    answered = sorted({str(s) if s else "closed" for s in statuses.values()})
    figures.record(
        "21",
        f"malformed requests (CR/LF, NUL, folding, smuggling; {len(BROKEN)}): 5xx",
        len(server_errors),
        passed=not server_errors and alive == 200,
        target="0",
    )
    figures.record("21", "malformed requests: answers", ", ".join(answered), passed=True)
    assert server_errors == []
    assert injected == []
    assert alive == 200


CLIENT_HEADERS = {
    "Cookie": "session=client-cookie-value",
    "X-Forwarded-For": "203.0.113.9",
    "X-Forwarded-Host": "client-forwarded-host.example",
    "X-Forwarded-Proto": "client-proto",
    "Forwarded": "for=203.0.113.9;host=client-forwarded.example",
    "X-Real-IP": "203.0.113.10",
    "Proxy-Authorization": "Basic client-proxy-credential",
    "Proxy-Connection": "keep-alive",
    "Keep-Alive": "timeout=99",
    "TE": "trailers",
    "Connection": "keep-alive, X-Hop-Listed",
    "X-Hop-Listed": "client-hop-value",
    "OpenAI-Organization": "org-client-value",
    "OpenAI-Project": "proj-client-value",
    "X-Api-Key": "client-x-api-key",
    "X-Request-Id": "client-request-id",
    "User-Agent": "client-agent/1.0",
    "Accept-Encoding": "client-encoding",
    "Host": "client-host.example",
}


def _chunked(body: dict[str, Any]) -> Iterator[bytes]:
    data = json.dumps(body).encode()
    yield data[:10]
    yield data[10:]


def test_row21_the_upstream_gets_only_allow_listed_headers_and_its_own_key(
    live: LiveGateway, figures: Figures
) -> None:
    for fake in live.upstreams:
        fake.seen.clear()
    headers = {**CLIENT_HEADERS, "Authorization": f"Bearer {API_KEY}"}
    with httpx.Client(base_url=live.base_url, timeout=10.0) as http:
        for stream in (False, True):
            body = {**BODY, "stream": stream}
            for fake in live.upstreams:
                fake.default = (
                    Behavior(events=text_stream(["ok"]))
                    if stream
                    else Behavior(json_body=completion("ok"))
                )
            for content in (json.dumps(body).encode(), _chunked(body)):
                response = http.post("/chat/completions", content=content, headers=headers)
                assert response.status_code == 200
        # Upgrade asks for another protocol on this connection; it must not reach upstream.
        plain = json.dumps(BODY).encode()
        upgrade_head = _head(
            "Connection: Upgrade, close", "Upgrade: h2c", f"Content-Length: {len(plain)}"
        )
        upgrade = _exchange(live, upgrade_head + plain)
    seen = [s for fake in live.upstreams for s in fake.chat_requests]
    outside = sorted(
        {name for s in seen for name in map(str.lower, s.headers) if name not in UPSTREAM_HEADERS}
    )
    client_values = [value for name, value in headers.items() if name != "Accept-Encoding"]
    carried = [
        value for s in seen for value in s.headers.values() for c in client_values if c in value
    ]
    own_key = [s for s in seen if s.headers["Authorization"].startswith(f"Bearer {KEY_PREFIX}")]
    figures.record(
        "21",
        f"upstream headers outside the allow-list ({len(seen)} requests)",
        len(outside),
        passed=not outside,
        target="0",
    )
    figures.record(
        "21",
        "client header values (Authorization, Cookie, X-Forwarded-*, hop-by-hop) upstream",
        len(carried),
        passed=not carried,
        target="0",
    )
    figures.record(
        "21",
        "upstream requests carrying the provider's own key",
        f"{len(own_key)}/{len(seen)}",
        passed=len(own_key) == len(seen),
    )
    assert outside == []
    assert carried == []
    assert len(own_key) == len(seen) >= 4
    assert (_status(upgrade) or 0) < 500
    assert all(s.headers["Host"] == f"127.0.0.1:{s_port}" for s, s_port in _hosts(live))


def _hosts(live: LiveGateway) -> list[tuple[Any, int]]:
    return [(s, fake.port) for fake in live.upstreams for s in fake.chat_requests]
