"""Small ASGI helpers: reading a size-capped body, sending JSON and OpenAI error bodies."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from typing import Any

from starlette.types import Message, Receive, Scope, Send

from ..exceptions import InvalidRequestError, LeapError, RequestTooLargeError

__all__ = ["error_headers", "read_body", "send_error", "send_json", "send_response"]

JSON = b"application/json"


async def read_body(receive: Receive, scope: Scope, limit: int) -> bytes:
    """The request body; RequestTooLargeError as soon as it is known to exceed ``limit``.

    A declared Content-Length over the limit is refused before reading anything, and a body
    sent without one is counted while it arrives, so it is never held whole when too big.
    """
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                declared = int(value)
            except ValueError:
                raise InvalidRequestError("Content-Length is not a number") from None
            if declared > limit:
                raise _too_large(limit)
            break
    parts: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunk = message.get("body", b"")
        if chunk:
            size += len(chunk)
            if size > limit:
                raise _too_large(limit)
            parts.append(chunk)
        if not message.get("more_body", False):
            break
    return parts[0] if len(parts) == 1 else b"".join(parts)


class ClientGone(Exception):
    """Raised when the client disconnected before its request was read."""


def _too_large(limit: int) -> RequestTooLargeError:
    return RequestTooLargeError(f"The request body is larger than the {limit} byte limit")


async def send_response(
    send: Send,
    status: int,
    body: bytes,
    *,
    content_type: bytes = JSON,
    headers: Iterable[tuple[bytes, bytes]] = (),
) -> None:
    """A whole response in two ASGI messages."""
    raw = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
    raw.extend(headers)
    start: Message = {"type": "http.response.start", "status": status, "headers": raw}
    await send(start)
    await send({"type": "http.response.body", "body": body})


async def send_json(
    send: Send, status: int, payload: Any, *, headers: Iterable[tuple[bytes, bytes]] = ()
) -> None:
    """``payload`` as a JSON response."""
    body = json.dumps(payload, separators=(",", ":")).encode()
    await send_response(send, status, body, headers=headers)


def error_headers(error: LeapError) -> list[tuple[bytes, bytes]]:
    """Retry-After when the error has a hint; x-should-retry false once the gateway retried."""
    headers: list[tuple[bytes, bytes]] = []
    if error.retry_after is not None and error.http_status in (429, 503):
        headers.append((b"retry-after", str(max(1, math.ceil(error.retry_after))).encode()))
    if error.request_id is not None:
        headers.append((b"x-request-id", error.request_id.encode()))
    trail = error.trail
    if trail is not None:
        headers.append((b"x-leap-attempts", str(trail.tries).encode()))
        if trail.tries > 1:
            # We already retried and failed over: SDK clients must not multiply the attempts.
            headers.append((b"x-should-retry", b"false"))
    return headers


async def send_error(
    send: Send, error: LeapError, *, headers: Iterable[tuple[bytes, bytes]] = ()
) -> None:
    """The OpenAI error body for ``error`` with its HTTP status."""
    await send_json(
        send, error.http_status, error.to_body(), headers=[*error_headers(error), *headers]
    )
