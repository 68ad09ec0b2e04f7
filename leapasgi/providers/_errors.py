"""Translating aiohttp failures and upstream error responses into leapasgi errors, once."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

import aiohttp

from ..exceptions import (
    ConfigurationError,
    ConnectRefusedError,
    ConnectResetError,
    ConnectTimeoutError,
    LeapError,
    MalformedResponseError,
    NameResolutionError,
    StreamInterruptedError,
    UpstreamConnectionError,
    error_for_status,
)
from ..retry import parse_retry_after

__all__ = ["error_from_response", "translate_client_error"]

# Upstream error bodies are read only this far: enough for any message, bounded for memory.
MAX_ERROR_BODY = 64 * 1024


def translate_client_error(
    exc: aiohttp.ClientError, *, provider: str, in_body: bool = False
) -> LeapError:
    """The leapasgi error for an aiohttp failure; ``in_body`` when the response had begun."""
    where = f"provider {provider!r}"
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
    """The error an upstream 4xx/5xx response stands for, with its message scrubbed of secrets."""
    detail = _error_detail(body)
    message = detail.get("message")
    if not isinstance(message, str) or not message:
        message = f"Provider {provider!r} answered HTTP {status}"
    param = detail.get("param")
    code = detail.get("code")
    error = error_for_status(
        status,
        redact(message),
        provider=provider,
        retry_after=parse_retry_after(headers, now=now),
        param=redact(param) if isinstance(param, str) else None,
        code=redact(str(code)) if code is not None else None,
        request_id=headers.get("x-request-id"),
    )
    # The upstream's own verdict on retrying (as the openai SDK reads it) overrides the status.
    should_retry = headers.get("x-should-retry")
    if should_retry in ("true", "false"):
        error.retryable = error.retry_here = should_retry == "true"
    return error


def _error_detail(body: bytes) -> dict[str, Any]:
    try:
        payload = json.loads(body[:MAX_ERROR_BODY])
    except ValueError:
        text = body[:500].decode("utf-8", errors="replace").strip()
        return {"message": text} if text else {}
    if isinstance(payload, dict):
        inner = payload.get("error", payload)
        if isinstance(inner, dict):
            return inner
        if isinstance(inner, str):
            return {"message": inner}
    return {}
