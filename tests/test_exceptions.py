import inspect

import pytest

import leapasgi.exceptions as exceptions
from leapasgi.exceptions import (
    AuthenticationError,
    ConflictError,
    InvalidRequestError,
    LeapError,
    LeapTimeoutError,
    ModelNotFoundError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    RequestTooLargeError,
    UnprocessableEntityError,
    UpstreamConnectionError,
    UpstreamTimeoutError,
    UpstreamUnavailableError,
    error_for_status,
)

STATUS_CLASSES = [
    (400, InvalidRequestError),
    (401, AuthenticationError),
    (403, PermissionDeniedError),
    (404, NotFoundError),
    (408, UpstreamTimeoutError),
    (409, ConflictError),
    (413, RequestTooLargeError),
    (418, InvalidRequestError),
    (422, UnprocessableEntityError),
    (429, RateLimitError),
    (500, UpstreamUnavailableError),
    (502, UpstreamUnavailableError),
    (503, UpstreamUnavailableError),
    (504, UpstreamUnavailableError),
]


def exception_classes() -> list[type[Exception]]:
    return [
        value
        for value in vars(exceptions).values()
        if inspect.isclass(value) and issubclass(value, Exception)
    ]


@pytest.mark.parametrize(("status", "cls"), STATUS_CLASSES)
def test_error_for_status_maps_each_status(status: int, cls: type[LeapError]) -> None:
    error = error_for_status(status, "upstream said no", provider="acme")

    assert type(error) is cls
    assert error.http_status == status
    assert error.upstream_status == status
    assert error.provider == "acme"
    assert error.retryable is (status in (408, 409, 429) or status >= 500)
    body = error.to_body()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["message"] == "upstream said no"
    assert isinstance(body["error"]["type"], str)


def test_404_with_model_not_found_code_is_a_model_not_found_error() -> None:
    error = error_for_status(404, "The model `x` does not exist", code="model_not_found")

    assert type(error) is ModelNotFoundError
    assert isinstance(error, NotFoundError)
    assert error.http_status == 404
    assert error.to_body()["error"]["code"] == "model_not_found"
    assert error.to_body()["error"]["param"] == "model"


def test_upstream_param_and_code_are_kept() -> None:
    error = error_for_status(400, "too long", param="messages", code="context_length_exceeded")

    assert error.to_body()["error"] == {
        "message": "too long",
        "type": "invalid_request_error",
        "param": "messages",
        "code": "context_length_exceeded",
    }


def test_retry_after_is_kept() -> None:
    error = error_for_status(429, "slow down", retry_after=2.5)

    assert error.retry_after == 2.5
    assert error.retryable
    assert error.retry_here


def test_repr_shows_structured_fields_and_nothing_else() -> None:
    error = error_for_status(
        429,
        "slow down",
        provider="acme",
        retry_after=1.0,
        request_id="req-secret-123",
        param="p-secret",
        code="c-secret",
    )

    text = repr(error)

    assert text == (
        "RateLimitError('slow down', provider='acme', upstream_status=429, "
        "retry_after=1.0, retryable=True)"
    )


def test_retryable_can_be_overridden() -> None:
    assert not RateLimitError("quota", retryable=False).retryable
    assert InvalidRequestError("odd", retryable=True).retryable


def test_every_exception_subclasses_leap_error() -> None:
    classes = exception_classes()

    assert len(classes) > 20
    assert all(issubclass(cls, LeapError) for cls in classes)


def test_connection_errors_and_timeouts_are_retryable() -> None:
    retryable_roots = (UpstreamConnectionError, LeapTimeoutError)

    for cls in exception_classes():
        if issubclass(cls, retryable_roots):
            assert cls("down").retryable, cls
            assert cls("down").http_status in (408, 502, 504), cls


def test_client_errors_are_not_retryable() -> None:
    for cls in (InvalidRequestError, AuthenticationError, PermissionDeniedError, NotFoundError):
        assert not cls("no").retryable


def test_all_is_sorted_and_lists_every_public_name() -> None:
    public = {name for name in vars(exceptions) if not name.startswith("_")}
    exported = {cls.__name__ for cls in exception_classes()} | {"error_for_status"}

    assert exceptions.__all__ == sorted(exceptions.__all__)
    assert set(exceptions.__all__) == exported
    assert exported <= public
