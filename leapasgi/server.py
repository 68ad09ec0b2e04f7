"""Serving the gateway on uvicorn with the limits a public server needs.

uvicorn's httptools protocol keeps every header a client sends, with no size or count limit and
no clock on the request head: one connection that sends header lines forever, or many that send
a few bytes and stall (slowloris), can take the process's memory or its file descriptors.
``GuardedHttpToolsProtocol`` adds what is missing at no cost per request:

- a request head (request line and headers) larger than ``max_head_bytes`` or with more than
  ``max_headers`` headers gets a 431 and the connection is closed;
- a head not complete within ``head_timeout`` of the connection opening, or of the request's
  first byte on a kept-alive connection, gets a 408 and the connection is closed (one timer per
  connection, re-armed only when it fires); idle kept-alive connections close after
  ``keep_alive_timeout`` (uvicorn's own timer);
- past ``max_connections``, the connection that has waited longest for its head is closed to
  make room, so probes and normal clients are still served.

``leapasgi serve`` and ``leapmcp --http`` run with it; a host app can pass
``http=GuardedHttpToolsProtocol`` to its own uvicorn.
"""

from __future__ import annotations

import json
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.supervisors import Multiprocess

from .config import ConnectionLimits

__all__ = ["GuardedHttpToolsProtocol", "run_server"]


def _answer(status: bytes, code: str, message: str) -> bytes:
    body = json.dumps(
        {
            "error": {
                "message": message,
                "type": "invalid_request_error",
                "param": None,
                "code": code,
            }
        }
    ).encode()
    head = (
        b"HTTP/1.1 " + status + b"\r\ncontent-type: application/json\r\n"
        b"connection: close\r\ncontent-length: " + str(len(body)).encode() + b"\r\n\r\n"
    )
    return head + body


_TOO_LARGE = _answer(
    b"431 Request Header Fields Too Large",
    "request_header_too_large",
    "The request head (request line and headers) is too large, or has too many headers",
)
_TOO_SLOW = _answer(
    b"408 Request Timeout", "request_timeout", "The request head did not arrive in time"
)
_BUSY = _answer(
    b"503 Service Unavailable", "too_many_connections", "Too many connections; try again"
)


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with bounded request heads, a clock on them, and a bound
    on connections (see the module docstring). ``head_since`` is the loop time the head now
    being read began, None between requests."""

    def __init__(self, config: uvicorn.Config, *args: Any, **kwargs: Any) -> None:
        super().__init__(config, *args, **kwargs)
        limits: ConnectionLimits = getattr(config, "leap_limits", None) or ConnectionLimits()
        self.limits = limits
        self.head_since: float | None = None
        self._head_bytes = 0
        self._head_timer: Any = None
        self._refusal: bytes | None = None

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        self.head_since = self.loop.time()
        self._head_timer = self.loop.call_later(self.limits.head_timeout, self._check_head)
        if len(self.connections) > self.limits.connection_cap():
            self._make_room()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        # Still inside a head once the parser has seen this read: it all counts against it.
        if self.head_since is not None and self._refusal is None:
            self._head_bytes += len(data)
            if self._head_bytes > self.limits.max_head_bytes:
                self.refuse(_TOO_LARGE)

    def on_message_begin(self) -> None:
        if self.head_since is None:
            self.head_since = self.loop.time()
        self._head_bytes = 0
        super().on_message_begin()

    def on_headers_complete(self) -> None:
        self.head_since = None
        if len(self.headers) > self.limits.max_headers:
            self._refusal = _TOO_LARGE
            # Raising stops the parser; uvicorn answers 400, which send_400_response turns
            # into this 431.
            raise ValueError("too many headers")
        super().on_headers_complete()

    def send_400_response(self, msg: str) -> None:
        if self._refusal is not None:
            self.refuse(self._refusal)
            return
        super().send_400_response(msg)

    def refuse(self, answer: bytes) -> None:
        """Answer ``answer`` (a whole HTTP response) and close the connection."""
        self._refusal = answer
        self.head_since = None
        if not self.transport.is_closing():
            self.transport.write(answer)
            self.transport.close()

    def _check_head(self) -> None:
        self._head_timer = None
        if self.transport.is_closing():
            return
        timeout = self.limits.head_timeout
        since = self.head_since
        now = self.loop.time()
        if since is not None and now - since >= timeout:
            self.refuse(_TOO_SLOW)
            return
        delay = timeout if since is None else since + timeout - now
        self._head_timer = self.loop.call_later(delay, self._check_head)

    def _make_room(self) -> None:
        """Close the connection that has waited longest for its head; none waiting: this one."""
        slowest: GuardedHttpToolsProtocol | None = None
        for other in self.connections:
            if not isinstance(other, GuardedHttpToolsProtocol):
                continue
            since = other.head_since
            if since is not None and (slowest is None or since < (slowest.head_since or 0.0)):
                slowest = other
        if slowest is None or slowest is self:
            self.refuse(_BUSY)
        else:
            slowest.refuse(_TOO_SLOW)


def run_server(
    app: Any,
    *,
    host: str,
    port: int,
    limits: ConnectionLimits | None = None,
    workers: int = 1,
    **options: Any,
) -> None:
    """Serve ``app`` (an ASGI app, or an import string for ``workers`` > 1) on uvicorn with
    ``GuardedHttpToolsProtocol`` and ``limits``; ``options`` are uvicorn's."""
    limits = limits or ConnectionLimits()
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        workers=workers,
        http=GuardedHttpToolsProtocol,
        timeout_keep_alive=int(limits.keep_alive_timeout),
        **options,
    )
    # The protocol reads its limits here; the config travels to every worker process.
    config.leap_limits = limits  # type: ignore[attr-defined]
    server = uvicorn.Server(config)
    # As uvicorn.run: the server re-raises the signal that stopped it once it has shut down.
    try:
        if config.workers > 1:
            Multiprocess(config, sockets=[config.bind_socket()]).run()
            return
        server.run()
    except KeyboardInterrupt:
        return
    if not server.started:
        raise SystemExit(3)  # uvicorn's startup failure (the port taken, say)
