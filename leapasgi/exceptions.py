"""The exception tree of leapasgi.

Every error knows the HTTP status and the OpenAI error body a client should get, and carries
structured fields (provider, upstream status, retry_after, retryable) instead of text glued into
its message. Foreign errors (aiohttp, upstream responses) are translated once, in the provider
layer, with ``raise Mapped(...) from exc``. An error is never changed once raised: the error a
request ends with is a copy made by ``for_request``, carrying its routing trail.

    LeapError
    ├── ConfigurationError               settings that cannot work (unknown preset, missing key)
    ├── HookError                        500 a request hook failed (names the hook)
    ├── InvalidRequestError              400 the request is malformed or asks for the impossible
    │   ├── RequestTooLargeError         413
    │   ├── UnprocessableEntityError     422
    │   ├── MisdirectedRequestError      421 the Host is not one the gateway answers to
    │   ├── UnsupportedFeatureError      400 no provider of the model has a feature it needs
    │   └── UnsupportedParameterError    400 no provider of the model can take a parameter as
    │                                        sent (n, logprobs, a response format); names it
    ├── AuthenticationError              401 the API key was refused
    ├── PermissionDeniedError            403
    ├── NotFoundError                    404
    │   └── ModelNotFoundError           404 model_not_found
    ├── ConflictError                    409 (retryable)
    ├── RateLimitError                   429 (retryable, carries retry_after)
    ├── NoProviderAvailableError         503 nothing can serve the request now (carries retry_after)
    │   └── ProviderBusyError            503 a provider is at its concurrency limit (local overflow)
    ├── UpstreamUnavailableError         500/502/503/504 (retryable)
    │   ├── MalformedResponseError       502 the upstream answered with something unreadable
    │   └── ResponseTooLargeError        502 the upstream's answer outgrew max_response_bytes
    ├── UpstreamConnectionError          502 no HTTP exchange happened (retryable)
    │   ├── ConnectRefusedError
    │   ├── ConnectResetError
    │   └── NameResolutionError
    ├── LeapTimeoutError                 504 (retryable)
    │   ├── ConnectTimeoutError
    │   ├── FirstByteTimeoutError
    │   ├── IdleTimeoutError
    │   ├── DeadlineExceededError        the total deadline, retries included, ran out
    │   └── UpstreamTimeoutError         408 from the upstream
    └── StreamError                      a stream broke after it began
        ├── MalformedStreamError         an event that is not valid JSON or not a chunk
        ├── StreamInterruptedError       the stream ended before every choice finished
        └── UpstreamStreamError          the upstream sent an error event in the stream
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar, Self

if TYPE_CHECKING:
    from .trail import RoutingTrail

__all__ = [
    "AuthenticationError",
    "BudgetExceededError",
    "ConfigurationError",
    "ConflictError",
    "ConnectRefusedError",
    "ConnectResetError",
    "ConnectTimeoutError",
    "DeadlineExceededError",
    "FirstByteTimeoutError",
    "HookError",
    "IdleTimeoutError",
    "InvalidRequestError",
    "LeapError",
    "LeapTimeoutError",
    "MalformedResponseError",
    "MalformedStreamError",
    "MisdirectedRequestError",
    "ModelNotFoundError",
    "NameResolutionError",
    "NoProviderAvailableError",
    "NotFoundError",
    "PermissionDeniedError",
    "ProviderBusyError",
    "RateLimitError",
    "RequestTooLargeError",
    "ResponseTooLargeError",
    "StoreUnavailableError",
    "StreamError",
    "StreamInterruptedError",
    "UnprocessableEntityError",
    "UnsupportedFeatureError",
    "UnsupportedParameterError",
    "UpstreamConnectionError",
    "UpstreamStreamError",
    "UpstreamTimeoutError",
    "UpstreamUnavailableError",
    "error_for_status",
]


class LeapError(Exception):
    """Raised for every failure leapasgi reports; the root of the tree."""

    status_code: ClassVar[int] = 500
    error_type: ClassVar[str] = "server_error"
    default_code: ClassVar[str | None] = None
    retryable_by_default: ClassVar[bool] = False
    # The WWW-Authenticate challenge a 401 or 403 carries (OAuth2's, with resource_metadata);
    # None: a plain "Bearer" on a 401.
    challenge: str | None = None

    def __init__(
        self,
        message: str,
        *,
        provider: str | None = None,
        upstream_status: int | None = None,
        retry_after: float | None = None,
        retryable: bool | None = None,
        retry_here: bool | None = None,
        param: str | None = None,
        code: str | None = None,
        request_id: str | None = None,
        attempts: int = 1,
        trail: RoutingTrail | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.provider = provider
        self.upstream_status = upstream_status
        self.retry_after = retry_after
        self.retryable = self.retryable_by_default if retryable is None else retryable
        # False when another attempt on the same provider is pointless now (a Retry-After hint
        # beyond the cap): the manager should fail over instead.
        self.retry_here = self.retryable if retry_here is None else retry_here
        self.param = param
        self.code = code if code is not None else self.default_code
        self.request_id = request_id
        # Upstream attempts the request made, and its routing trail (every provider tried
        # and why each failed), on the error a request ended with; None for errors raised
        # outside the dispatcher.
        self.attempts = attempts
        self.trail = trail

    def for_request(self, trail: RoutingTrail, *, retry_after: float | None = None) -> Self:
        """A copy of this error as the outcome of the request ``trail`` belongs to: with the
        trail, the number of attempts, and ``retry_after`` when given."""
        error = copy.copy(self)
        error.trail = trail
        error.attempts = trail.tries
        if retry_after is not None:
            error.retry_after = retry_after
        return error

    @property
    def http_status(self) -> int:
        """The HTTP status a gateway client should receive for this error."""
        return self.status_code

    def to_body(self) -> dict[str, Any]:
        """The OpenAI error envelope: all four keys present, null when not applicable."""
        return {
            "error": {
                "message": self.message,
                "type": self.error_type,
                "param": self.param,
                "code": self.code,
            }
        }

    def __repr__(self) -> str:
        fields = [f"{self.message!r}"]
        if self.provider is not None:
            fields.append(f"provider={self.provider!r}")
        if self.upstream_status is not None:
            fields.append(f"upstream_status={self.upstream_status}")
        if self.retry_after is not None:
            fields.append(f"retry_after={self.retry_after}")
        fields.append(f"retryable={self.retryable}")
        return f"{type(self).__name__}({', '.join(fields)})"


class ConfigurationError(LeapError):
    """Raised when provider or gateway settings cannot work."""

    error_type = "configuration_error"
    default_code = "invalid_configuration"


class HookError(LeapError):
    """Raised when a request hook fails with something other than a LeapError; ``hook``
    names it."""

    default_code = "hook_failed"

    def __init__(self, message: str, *, hook: str = "", **fields: Any) -> None:
        super().__init__(message, **fields)
        self.hook = hook


class InvalidRequestError(LeapError):
    """Raised when a request is malformed, fails validation, or the upstream refuses it (400)."""

    status_code = 400
    error_type = "invalid_request_error"

    @property
    def http_status(self) -> int:
        # An unusual 4xx from the upstream (405, 418, ...) goes back as it came.
        status = self.upstream_status
        if type(self) is InvalidRequestError and status is not None and 400 <= status <= 499:
            return status
        return self.status_code


class RequestTooLargeError(InvalidRequestError):
    """Raised when a request body is over the size limit (413)."""

    status_code = 413
    default_code = "request_too_large"


class UnprocessableEntityError(InvalidRequestError):
    """Raised when the upstream understood the request but cannot process it (422)."""

    status_code = 422


class MisdirectedRequestError(InvalidRequestError):
    """Raised when a request's Host header names a site the gateway does not answer to (421):
    a page reaching it through a name of its own (DNS rebinding)."""

    status_code = 421
    default_code = "invalid_host"


class UnsupportedFeatureError(InvalidRequestError):
    """Raised when no provider serving the model supports what the request needs (tools,
    vision, streaming...); ``param`` is "model"."""

    default_code = "unsupported_feature"


class UnsupportedParameterError(InvalidRequestError):
    """Raised when no provider serving the model can take one of the request's parameters as
    sent (``n`` above what it makes, ``logprobs``, a ``response_format`` it ignores), before
    any upstream call; ``param`` names it, the message says which providers and why."""

    default_code = "unsupported_parameter"


class AuthenticationError(LeapError):
    """Raised when an API key is missing or refused (401)."""

    status_code = 401
    error_type = "invalid_request_error"
    default_code = "invalid_api_key"


class PermissionDeniedError(LeapError):
    """Raised when the key is valid but not allowed to do this (403)."""

    status_code = 403
    error_type = "permission_denied"
    default_code = "permission_denied"


class NotFoundError(LeapError):
    """Raised when the upstream has no such resource (404)."""

    status_code = 404
    error_type = "invalid_request_error"
    default_code = "not_found"


class ModelNotFoundError(NotFoundError):
    """Raised when the requested model does not exist or is not served (404)."""

    default_code = "model_not_found"

    def __init__(self, message: str, **fields: Any) -> None:
        if fields.get("param") is None:
            fields["param"] = "model"
        super().__init__(message, **fields)


class ConflictError(LeapError):
    """Raised when the upstream reports a conflict (409); retryable."""

    status_code = 409
    error_type = "conflict_error"
    default_code = "conflict"
    retryable_by_default = True


class RateLimitError(LeapError):
    """Raised when the upstream rate-limits the request (429); ``retry_after`` holds its hint."""

    status_code = 429
    error_type = "rate_limit_error"
    default_code = "rate_limit_exceeded"
    retryable_by_default = True


class BudgetExceededError(RateLimitError):
    """Raised when a tenant's budget for the period is spent; ``retry_after`` is the time
    until the period ends (None for a total budget). Never retried by the gateway."""

    default_code = "budget_exceeded"
    retryable_by_default = False


class StoreUnavailableError(LeapError):
    """Raised when the store of keys, usage or spend cannot be reached: the request cannot be
    authorized or accounted now."""

    status_code = 503
    error_type = "server_error"
    default_code = "store_unavailable"
    retryable_by_default = True


class NoProviderAvailableError(LeapError):
    """Raised when no provider can take the request now (all inactive, draining or ejected)."""

    status_code = 503
    error_type = "server_error"
    default_code = "no_provider_available"
    retryable_by_default = True


class ProviderBusyError(NoProviderAvailableError):
    """Raised when a provider's slots and waiting line are full; the gateway's own overflow,
    never held against the provider. Another provider may serve, this one not now."""

    default_code = "provider_busy"

    def __init__(self, message: str, **fields: Any) -> None:
        fields.setdefault("retry_here", False)
        super().__init__(message, **fields)


class UpstreamUnavailableError(LeapError):
    """Raised when the upstream answers 5xx; ``upstream_status`` holds which."""

    status_code = 502
    error_type = "server_error"
    default_code = "upstream_unavailable"
    retryable_by_default = True

    @property
    def http_status(self) -> int:
        status = self.upstream_status
        return status if status is not None and 500 <= status <= 599 else self.status_code


class MalformedResponseError(UpstreamUnavailableError):
    """Raised when the upstream's answer is not the JSON the wire format requires."""

    default_code = "malformed_response"

    @property
    def http_status(self) -> int:
        return 502


class ResponseTooLargeError(UpstreamUnavailableError):
    """Raised when an upstream's answer, decompressed, is larger than the provider allows."""

    default_code = "response_too_large"

    @property
    def http_status(self) -> int:
        return 502


class UpstreamConnectionError(LeapError):
    """Raised when no HTTP exchange with the upstream happened."""

    status_code = 502
    error_type = "server_error"
    default_code = "upstream_connection_error"
    retryable_by_default = True


class ConnectRefusedError(UpstreamConnectionError):
    """Raised when the upstream refused the TCP connection."""

    default_code = "connection_refused"


class ConnectResetError(UpstreamConnectionError):
    """Raised when the upstream reset or closed the connection before answering."""

    default_code = "connection_reset"


class NameResolutionError(UpstreamConnectionError):
    """Raised when the upstream host name does not resolve."""

    default_code = "name_resolution_failed"


class LeapTimeoutError(LeapError):
    """Raised when one of the timeouts fires; each clock has its own subclass."""

    status_code = 504
    error_type = "timeout_error"
    default_code = "timeout"
    retryable_by_default = True


class ConnectTimeoutError(LeapTimeoutError):
    """Raised when the TCP/TLS connection is not up within the connect timeout."""

    default_code = "connect_timeout"


class FirstByteTimeoutError(LeapTimeoutError):
    """Raised when the upstream sends no response headers within the first-byte timeout."""

    default_code = "first_byte_timeout"


class IdleTimeoutError(LeapTimeoutError):
    """Raised when a response goes silent for longer than the idle timeout."""

    default_code = "idle_timeout"


class DeadlineExceededError(LeapTimeoutError):
    """Raised when the total deadline, which includes every retry, runs out."""

    default_code = "deadline_exceeded"


class UpstreamTimeoutError(LeapTimeoutError):
    """Raised when the upstream itself answers 408."""

    status_code = 408
    default_code = "upstream_timeout"


class StreamError(LeapError):
    """Raised when a stream breaks after it began."""

    status_code = 502
    error_type = "server_error"
    default_code = "stream_error"
    retryable_by_default = True


class MalformedStreamError(StreamError):
    """Raised when a stream event is not valid JSON or not a chat completion chunk."""

    default_code = "malformed_stream"


class StreamInterruptedError(StreamError):
    """Raised when a stream ends before every choice reported a finish_reason."""

    default_code = "stream_interrupted"


class UpstreamStreamError(StreamError):
    """Raised when the upstream sends an error event inside a stream."""

    default_code = "upstream_stream_error"


_STATUS_CLASSES: Mapping[int, type[LeapError]] = {
    400: InvalidRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    408: UpstreamTimeoutError,
    409: ConflictError,
    413: RequestTooLargeError,
    422: UnprocessableEntityError,
    429: RateLimitError,
}


def error_for_status(
    status: int,
    message: str,
    *,
    provider: str | None = None,
    retry_after: float | None = None,
    param: str | None = None,
    code: str | None = None,
    request_id: str | None = None,
    retryable: bool | None = None,
) -> LeapError:
    """Map an upstream HTTP error status to the matching error, keeping the upstream's words;
    ``retryable`` overrides what the status says (an upstream's ``x-should-retry``)."""
    cls = _STATUS_CLASSES.get(status)
    if cls is None:
        if status >= 500:
            cls = UpstreamUnavailableError
        elif status >= 400:
            cls = InvalidRequestError
        else:
            cls = MalformedResponseError
    if cls is NotFoundError and code == "model_not_found":
        cls = ModelNotFoundError
    return cls(
        message,
        provider=provider,
        upstream_status=status,
        retry_after=retry_after,
        param=param,
        code=code,
        request_id=request_id,
        retryable=retryable,
    )
