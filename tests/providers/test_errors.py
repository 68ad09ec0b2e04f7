from __future__ import annotations

import socket

import aiohttp
import pytest
from aiohttp.client_reqrep import ConnectionKey

from leapasgi.exceptions import (
    ConfigurationError,
    ConnectRefusedError,
    ConnectResetError,
    ConnectTimeoutError,
    LeapError,
    MalformedResponseError,
    NameResolutionError,
    RateLimitError,
    StreamInterruptedError,
    UpstreamConnectionError,
)
from leapasgi.providers._errors import error_from_response, translate_client_error

KEY = ConnectionKey("api.example.test", 443, True, True, None, None, None, None)


def connector_error(cls: type[aiohttp.ClientConnectorError], os_error: OSError) -> Exception:
    return cls(KEY, os_error)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("error", "expected", "retryable"),
    [
        (aiohttp.ConnectionTimeoutError(), ConnectTimeoutError, True),
        (
            connector_error(aiohttp.ClientConnectorDNSError, socket.gaierror(-2, "unknown")),
            NameResolutionError,
            True,
        ),
        (
            connector_error(aiohttp.ClientConnectorError, ConnectionRefusedError()),
            ConnectRefusedError,
            True,
        ),
        (
            connector_error(aiohttp.ClientConnectorError, OSError(101, "unreachable")),
            UpstreamConnectionError,
            True,
        ),
        (
            connector_error(aiohttp.ClientSSLError, OSError("bad cert")),
            UpstreamConnectionError,
            False,
        ),
        (aiohttp.ServerDisconnectedError(), ConnectResetError, True),
        (aiohttp.ClientOSError(104, "reset by peer"), ConnectResetError, True),
        (aiohttp.InvalidURL("http://x:bad"), ConfigurationError, False),
    ],
)
def test_aiohttp_failures_become_their_own_classes(
    error: aiohttp.ClientError, expected: type[LeapError], retryable: bool
) -> None:
    mapped = translate_client_error(error, provider="p")
    assert type(mapped) is expected
    assert mapped.provider == "p"
    assert mapped.retryable is retryable
    assert "api.example.test" not in mapped.message


@pytest.mark.parametrize(
    "error", [aiohttp.ClientPayloadError("cut"), aiohttp.ServerDisconnectedError()]
)
def test_a_break_while_reading_the_body_is_an_interrupted_stream(
    error: aiohttp.ClientError,
) -> None:
    mapped = translate_client_error(error, provider="p", in_body=True)
    assert isinstance(mapped, StreamInterruptedError)


def test_error_responses_keep_the_upstream_words_and_hints() -> None:
    body = b'{"error": {"message": "Slow down", "type": "requests", "code": "rate_limit_exceeded"}}'
    headers = {"retry-after": "3", "x-request-id": "req_1"}
    error = error_from_response(429, headers, body, provider="p", now=0.0, redact=str)
    assert isinstance(error, RateLimitError)
    assert (error.message, error.code, error.retry_after, error.request_id) == (
        "Slow down",
        "rate_limit_exceeded",
        3.0,
        "req_1",
    )


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "Provider 'p' answered HTTP 503"),
        (b"<html>Service Unavailable</html>", "<html>Service Unavailable</html>"),
        (b'{"error": "overloaded"}', "overloaded"),
        (b'{"message": "flat body"}', "flat body"),
        (b"[1, 2]", "Provider 'p' answered HTTP 503"),
    ],
)
def test_error_bodies_of_every_shape_give_a_message(body: bytes, message: str) -> None:
    error = error_from_response(503, {}, body, provider="p", now=0.0, redact=str)
    assert error.message == message
    assert error.http_status == 503


def test_an_unexpected_success_status_is_malformed() -> None:
    error = error_from_response(302, {}, b"", provider="p", now=0.0, redact=str)
    assert isinstance(error, MalformedResponseError)
