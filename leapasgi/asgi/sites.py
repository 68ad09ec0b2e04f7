"""Which sites may talk to the gateway, on every route: the Host a request was sent to, the
Origin of the page that sent it, and CORS for the origins that are allowed.

A page on another site can make a browser send a simple request (a ``text/plain`` POST) to a
gateway on the user's own machine, or reach it under a name of its own that resolves to
127.0.0.1 (DNS rebinding). So:

- **Origin.** A request that carries one is refused (403) unless it is the page's own site
  (the Origin's host is the Host it was sent to), a loopback origin, or configured in
  ``server.allowed_origins``. Requests without one (SDKs, curl) are not browsers' and pass.
- **Host.** When the gateway is reached on a loopback address, or ``server.allowed_hosts`` is
  set, the Host header must be a loopback name or a configured one (else 421).
- **CORS.** Configured origins get the ``Access-Control-*`` headers on every answer, streams
  included, and preflight ``OPTIONS`` requests are answered. Nothing else is cross-origin.

Entries: ``name`` (any port), ``name:port``, ``*`` (any host); origins ``https://name``,
``https://name:port``, ``https://name:*``, or ``*``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from starlette.types import Message, Scope, Send

from ..exceptions import LeapError, MisdirectedRequestError, PermissionDeniedError

__all__ = ["LOOPBACK_NAMES", "CorsSend", "SiteGuard", "preflight_headers"]

LOOPBACK_NAMES = frozenset({"127.0.0.1", "localhost", "[::1]"})
_LOOPBACK_ADDRESSES = frozenset({"127.0.0.1", "::1"})
_METHODS = b"GET, POST, PUT, OPTIONS"
# Headers a browser page may read from an answer.
_EXPOSED = b"x-request-id, x-leap-provider, x-leap-attempts, x-leap-overhead-ms, retry-after"
_MAX_AGE = b"600"
# Accepted Host values remembered (a deployment has a few; a client cannot grow it past this).
_GOOD_HOSTS = 64


def _split(hostport: str) -> tuple[str, str]:
    """("name", "port") of ``name:port`` (IPv6 in brackets); the port is "" when absent."""
    if hostport.startswith("["):
        name, _, rest = hostport.partition("]")
        return name + "]", rest.removeprefix(":")
    name, _, port = hostport.partition(":")
    return name, port


class SiteGuard:
    """The Host and Origin checks of one gateway, and its CORS origins."""

    __slots__ = ("_any_host", "_any_origin", "_good_hosts", "_hosts", "_origins", "_require_host")

    def __init__(
        self, *, allowed_hosts: Iterable[str] = (), allowed_origins: Iterable[str] = ()
    ) -> None:
        hosts = [h.strip().lower() for h in allowed_hosts if h.strip()]
        origins = [o.strip().lower().rstrip("/") for o in allowed_origins if o.strip()]
        self._any_host = "*" in hosts
        self._require_host = bool(hosts) and not self._any_host
        # (name, port); port "" or "*" means any port.
        self._hosts = {_split(h) for h in hosts if h != "*"}
        self._any_origin = "*" in origins
        self._origins = {o for o in origins if o != "*"}
        # Host header values already accepted (a few per deployment): one lookup per request.
        self._good_hosts: set[bytes] = set()

    def check(self, scope: Scope) -> tuple[LeapError | None, bytes | None]:
        """(the refusal, if any; the Origin to answer with CORS headers, if any)."""
        host = origin = None
        for name, value in scope["headers"]:
            if name == b"host":
                host = value
            elif name == b"origin":
                origin = value
        if (
            host not in self._good_hosts
            and (self._require_host or _loopback_server(scope))
            and not self._accept_host(host)
        ):
            return MisdirectedRequestError(
                "This gateway does not answer to that Host name (configure it in "
                "server.allowed_hosts)",
                code="invalid_host",
            ), None
        if origin is None:
            return None, None
        text_host = host.decode("latin-1").lower() if host is not None else ""
        text_origin = origin.decode("latin-1").lower()
        if self._configured_origin(text_origin):
            return None, origin
        scheme, sep, netloc = text_origin.partition("://")
        if sep and scheme in ("http", "https") and (netloc == text_host or _loopback(netloc)):
            return None, None  # the page's own site, or a page served on this machine
        return PermissionDeniedError(
            "Requests from this origin are not allowed (configure it in server.allowed_origins)",
            code="origin_not_allowed",
        ), None

    def _accept_host(self, host: bytes | None) -> bool:
        if host is None or not self._host_ok(host.decode("latin-1").lower()):
            return False
        if len(self._good_hosts) < _GOOD_HOSTS:
            self._good_hosts.add(host)
        return True

    def _host_ok(self, hostport: str) -> bool:
        if self._any_host:
            return True
        name, port = _split(hostport)
        if name in LOOPBACK_NAMES:
            return True
        hosts = self._hosts
        return (name, port) in hosts or (name, "") in hosts or (name, "*") in hosts

    def _configured_origin(self, origin: str) -> bool:
        if self._any_origin or origin in self._origins:
            return True
        scheme, _, netloc = origin.partition("://")
        name, _ = _split(netloc)
        return f"{scheme}://{name}:*" in self._origins


def _loopback(hostport: str) -> bool:
    return _split(hostport)[0] in LOOPBACK_NAMES


def _loopback_server(scope: Scope) -> bool:
    server = scope.get("server")
    return server is not None and server[0] in _LOOPBACK_ADDRESSES


def preflight_headers(origin: bytes, scope: Scope) -> list[tuple[bytes, bytes]]:
    """The answer to a CORS preflight from ``origin``: the methods, and the headers asked."""
    asked = next((v for k, v in scope["headers"] if k == b"access-control-request-headers"), b"")
    headers = [
        (b"access-control-allow-origin", origin),
        (b"access-control-allow-methods", _METHODS),
        (b"access-control-max-age", _MAX_AGE),
        (b"vary", b"Origin"),
    ]
    if asked:
        headers.append((b"access-control-allow-headers", asked))
    return headers


class CorsSend:
    """An ASGI ``send`` that adds the CORS headers for ``origin`` to the response start."""

    __slots__ = ("_origin", "_send")

    def __init__(self, send: Send, origin: bytes) -> None:
        self._send = send
        self._origin = origin

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            headers: list[Any] = list(message.get("headers", ()))
            headers += [
                (b"access-control-allow-origin", self._origin),
                (b"access-control-expose-headers", _EXPOSED),
                (b"vary", b"Origin"),
            ]
            message = {**message, "headers": headers}
        await self._send(message)
