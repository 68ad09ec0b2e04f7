"""What an upstream sends back, read in one place: error responses, error payloads (in a 200
body or a stream event), stream events, and aiohttp failures, each translated once into the
leapasgi error it stands for, with any secret the upstream echoed scrubbed."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

import aiohttp
from pydantic import ValidationError

from ..exceptions import (
    ConfigurationError,
    ConnectRefusedError,
    ConnectResetError,
    ConnectTimeoutError,
    InvalidRequestError,
    LeapError,
    MalformedResponseError,
    MalformedStreamError,
    NameResolutionError,
    RateLimitError,
    StreamInterruptedError,
    UpstreamConnectionError,
    UpstreamStreamError,
    error_for_status,
)
from ..retry import parse_retry_after
from ..sse import SSEEvent
from ..types import ChatCompletionChunk
from .urls import ForbiddenAddressError

__all__ = [
    "MAX_ERROR_BODY",
    "error_from_payload",
    "error_from_response",
    "parse_event",
    "translate_client_error",
    "upstream_request_id",
]

# Upstream error bodies are read only this far: enough for any message, bounded for memory.
MAX_ERROR_BODY = 64 * 1024
# Characters of an upstream's plain-text (non-JSON) error kept in the message, after scrubbing.
MAX_ERROR_TEXT = 500


def translate_client_error(
    exc: aiohttp.ClientError, *, provider: str, in_body: bool = False
) -> LeapError:
    """The leapasgi error for an aiohttp failure; ``in_body`` when the response had begun."""
    where = f"provider {provider!r}"
    if isinstance(exc, aiohttp.ClientConnectorError) and isinstance(
        exc.os_error, ForbiddenAddressError
    ):
        return UpstreamConnectionError(
            f"The host of {where} resolves only to link-local or cloud metadata addresses; refused",
            provider=provider,
            retry_here=False,
        )
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return ConnectTimeoutError(f"Connecting to {where} timed out", provider=provider)
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        return NameResolutionError(f"The host of {where} does not resolve", provider=provider)
    if isinstance(exc, aiohttp.ClientSSLError):
        return UpstreamConnectionError(
            f"The TLS handshake with {where} failed", provider=provider, retryable=False
        )
    if isinstance(exc, aiohttp.ClientConnectorError):
        if isinstance(exc.os_error, ConnectionRefusedError):
            return ConnectRefusedError(
                f"{where.capitalize()} refused the connection", provider=provider
            )
        return UpstreamConnectionError(f"Could not connect to {where}", provider=provider)
    if isinstance(exc, aiohttp.InvalidURL):
        return ConfigurationError(f"The base URL of {where} is not a valid URL", provider=provider)
    if in_body and isinstance(exc, aiohttp.ClientPayloadError | aiohttp.ClientConnectionError):
        return StreamInterruptedError(
            f"The connection to {where} broke while the response was being read",
            provider=provider,
        )
    if isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientOSError):
        return ConnectResetError(
            f"{where.capitalize()} closed the connection before answering", provider=provider
        )
    if isinstance(exc, aiohttp.ClientResponseError):
        return MalformedResponseError(
            f"{where.capitalize()} sent a response that is not valid HTTP", provider=provider
        )
    return UpstreamConnectionError(
        f"The request to {where} failed ({type(exc).__name__})", provider=provider
    )


def error_from_response(
    status: int,
    headers: Mapping[str, str],
    body: bytes,
    *,
    provider: str,
    now: float,
    redact: Callable[[str], str],
) -> LeapError:
    """The error an upstream 4xx/5xx response stands for, with its message scrubbed of secrets
    (the whole text first, then cut: a cut could leave most of a key unscrubbed)."""
    detail = _error_detail(body)
    message = detail.get("message")
    if not isinstance(message, str) or not message:
        message = f"Provider {provider!r} answered HTTP {status}"
    elif detail.get("plain"):
        message = redact(message)[:MAX_ERROR_TEXT].strip()
    param = detail.get("param")
    code = detail.get("code")
    # The upstream's own verdict on retrying (as the openai SDK reads it) overrides the status.
    should_retry = headers.get("x-should-retry")
    return error_for_status(
        status,
        redact(message),
        provider=provider,
        retry_after=parse_retry_after(headers, now=now),
        param=redact(param) if isinstance(param, str) else None,
        code=redact(str(code)) if code is not None else None,
        request_id=upstream_request_id(headers, redact),
        retryable=should_retry == "true" if should_retry in ("true", "false") else None,
    )


def upstream_request_id(headers: Mapping[str, str], redact: Callable[[str], str]) -> str | None:
    """The upstream's ``x-request-id``, scrubbed (an upstream may echo the key it was sent);
    the gateway checks its shape before passing it on."""
    value = headers.get("x-request-id")
    return redact(value) if value else None


def _error_detail(body: bytes) -> dict[str, Any]:
    try:
        payload = json.loads(body[:MAX_ERROR_BODY])
    except ValueError:
        text = body[:MAX_ERROR_BODY].decode("utf-8", errors="replace").strip()
        return {"message": text, "plain": True} if text else {}
    if isinstance(payload, dict):
        inner = payload.get("error", payload)
        if isinstance(inner, dict):
            return inner
        if isinstance(inner, str):
            return {"message": inner}
    return {}


def parse_event(
    event: SSEEvent,
    *,
    provider: str | None = None,
    redact: Callable[[str], str] | None = None,
) -> ChatCompletionChunk | None:
    """The chunk in ``event``; None for ``[DONE]``. Error events and bad JSON raise; an error
    event's text passes ``redact`` (upstreams may echo the key they were sent)."""
    data = event.data
    if data == "[DONE]":
        return None
    try:
        chunk = ChatCompletionChunk.model_validate_json(data)
    except ValidationError as exc:
        raise _malformed(exc, data, provider) from None
    extra = chunk.model_extra
    if event.event == "error" or (extra and "error" in extra):
        raise error_from_payload(json.loads(data), provider=provider, redact=redact)
    return chunk


def _malformed(exc: ValidationError, data: str, provider: str | None) -> LeapError:
    first = exc.errors(include_url=False, include_input=False)[0]
    if first["type"] == "json_invalid":
        what = "is not valid JSON"
    elif first["type"] == "model_type":
        what = "is not a JSON object"
    else:
        where = ".".join(str(part) for part in first["loc"]) or "root"
        what = f"does not fit the chunk format (at {where})"
    return MalformedStreamError(f"The upstream sent a stream event that {what}", provider=provider)


# Anthropic's in-stream error types, by the status the same error has as an HTTP answer.
_ANTHROPIC_STATUSES = {
    "authentication_error": 401,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
}


def error_from_payload(
    payload: dict[str, Any],
    *,
    provider: str | None = None,
    redact: Callable[[str], str] | None = None,
) -> LeapError:
    """The error an in-stream ``{"error": {...}}`` event stands for; its message, code and
    param pass ``redact``."""
    body = payload.get("error", payload)
    if not isinstance(body, dict):
        body = {"message": str(body)}
    message = str(body.get("message") or "The upstream reported an error in the stream")
    kind = str(body.get("type") or "")
    code = body.get("code")
    code_text = str(code) if code is not None else None
    param = body.get("param") if isinstance(body.get("param"), str) else None
    if redact is not None:
        message = redact(message)
        code_text = redact(code_text) if code_text is not None else None
        param = redact(param) if param is not None else None
    status = (
        body.get("status")
        or body.get("status_code")
        or (code if isinstance(code, int) else None)
        or _ANTHROPIC_STATUSES.get(kind)
    )
    if isinstance(status, int) and 400 <= status <= 599:
        return error_for_status(status, message, provider=provider, param=param, code=code_text)
    if "rate_limit" in kind or code_text in ("rate_limit_exceeded", "insufficient_quota"):
        return RateLimitError(message, provider=provider, code=code_text)
    if kind == "invalid_request_error":
        return InvalidRequestError(message, provider=provider, param=param, code=code_text)
    return UpstreamStreamError(message, provider=provider, code=code_text)
