"""Small ASGI helpers: reading a size-capped body, sending JSON and OpenAI error bodies, and
the headers a request's outcome puts on its response."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from typing import Any

from starlette.types import Message, Receive, Scope, Send

from ..exceptions import BudgetExceededError, InvalidRequestError, LeapError, RequestTooLargeError
from ..outcome import Outcome

__all__ = [
    "error_headers",
    "outcome_headers",
    "read_body",
    "send_error",
    "send_json",
    "send_response",
]

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


def header_int(scope: Scope, name: bytes) -> int | None:
    """The integer a request header holds (``-3``, ``10``); None when it is absent or not a
    small integer."""
    for key, value in scope["headers"]:
        if key == name:
            text = bytes(value).strip()
            if 0 < len(text) <= 4 and text.lstrip(b"-").isdigit():
                return int(text)
            return None
    return None


def error_headers(error: LeapError) -> list[tuple[bytes, bytes]]:
    """Retry-After when the error has a hint; x-should-retry false once the gateway retried;
    WWW-Authenticate on every 401 (RFC 9110 requires it)."""
    headers: list[tuple[bytes, bytes]] = []
    status = error.http_status
    if error.retry_after is not None and status in (429, 503):
        headers.append((b"retry-after", str(max(1, math.ceil(error.retry_after))).encode()))
    elif status == 401 or error.challenge is not None:
        headers.append((b"www-authenticate", (error.challenge or "Bearer").encode()))
    trail = error.trail
    if (trail is not None and trail.tries > 1) or type(error) is BudgetExceededError:
        # We already retried and failed over, or the budget is spent until its period ends:
        # SDK clients must not multiply the attempts.
        headers.append((b"x-should-retry", b"false"))
    return headers


def outcome_headers(outcome: Outcome) -> list[tuple[bytes, bytes]]:
    """The request's id, how many attempts it took, which provider served it, the gateway's
    own time so far, and what the response cache did (when it is on)."""
    trail = outcome.trail
    headers = [
        (b"x-request-id", outcome.request_id.encode()),
        (b"x-leap-attempts", str(trail.tries).encode()),
    ]
    served = trail.served_by
    if served is not None:
        headers.append((b"x-leap-provider", served.provider.encode()))
    headers.append((b"x-leap-overhead-ms", f"{outcome.overhead() * 1000:.2f}".encode()))
    if outcome.cache is not None:
        headers.append((b"x-leap-cache", outcome.cache.encode()))
    if outcome.cost_usd is not None:
        headers.append((b"x-leap-cost-usd", f"{outcome.cost_usd:.9f}".encode()))
    return headers


async def send_error(send: Send, error: LeapError, outcome: Outcome) -> None:
    """Answer ``error`` as an OpenAI error body with its HTTP status; the request's outcome
    notes it."""
    outcome.failed(error)
    headers = [*error_headers(error), *outcome_headers(outcome)]
    await send_json(send, error.http_status, error.to_body(), headers=headers)
