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
    InvalidRequestError,
    LeapError,
    MalformedResponseError,
    MalformedStreamError,
    NameResolutionError,
    RateLimitError,
    StreamInterruptedError,
    UpstreamConnectionError,
    UpstreamStreamError,
    UpstreamUnavailableError,
)
from leapasgi.providers._upstream import (
    error_from_payload,
    error_from_response,
    parse_event,
    translate_client_error,
)
from leapasgi.sse import SSEEvent

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


def test_parse_event_done_chunk_and_errors() -> None:
    assert parse_event(SSEEvent("[DONE]")) is None
    parsed = parse_event(SSEEvent('{"id": "x", "choices": [], "vendor": 1}'))
    assert parsed is not None
    assert parsed.model_extra == {"vendor": 1}
    for bad in ("{nope", "[1, 2]", '{"choices": 5}'):
        with pytest.raises(MalformedStreamError):
            parse_event(SSEEvent(bad), provider="p")
    with pytest.raises(UpstreamStreamError) as caught:
        parse_event(SSEEvent('{"error": {"message": "boom", "type": "server_error"}}'))
    assert caught.value.message == "boom"
    with pytest.raises(UpstreamStreamError):
        parse_event(SSEEvent('{"message": "anthropic style"}', event="error"))


def test_error_payloads_map_to_the_right_class() -> None:
    assert isinstance(error_from_payload({"error": {"code": 503}}), UpstreamUnavailableError)
    limited = error_from_payload({"error": {"type": "rate_limit_error"}})
    assert isinstance(limited, RateLimitError)
    bad = error_from_payload({"error": {"type": "invalid_request_error", "param": "n"}})
    assert isinstance(bad, InvalidRequestError)
    assert bad.param == "n"
    assert not bad.retryable
    plain = error_from_payload({"error": "just text"})
    assert isinstance(plain, UpstreamStreamError)
    assert plain.message == "just text"
