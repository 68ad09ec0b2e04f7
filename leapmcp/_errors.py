"""Gateway errors as the text a model reads in a tool error: what failed, and what to do next."""

from __future__ import annotations

from collections.abc import Iterable

from leapasgi import (
    AuthenticationError,
    InvalidRequestError,
    LeapError,
    ModelNotFoundError,
    NoProviderAvailableError,
    NotFoundError,
    PermissionDeniedError,
    RoutingTrail,
)

__all__ = ["describe"]

# Names listed in an unknown-model error; the rest are counted, list_models has them all.
MAX_NAMES = 20
# Characters of each failed attempt's reason kept in an error's account of the attempts.
MAX_REASON = 200


def describe(error: LeapError, *, known_models: Iterable[str] = ()) -> str:
    """The message of the tool error for ``error``."""
    if isinstance(error, ModelNotFoundError):
        return f"{_sentence(error.message)} {_known(sorted(known_models))}"
    if isinstance(error, AuthenticationError | PermissionDeniedError) and error.provider:
        text = f"Provider {error.provider!r} refused the gateway's credentials: {error.message}"
    elif isinstance(error, AuthenticationError | PermissionDeniedError):
        text = f"The gateway refused the request: {error.message}"  # the caller's own policy
    elif isinstance(error, InvalidRequestError):
        text = f"The request was refused: {error.message}"
    elif isinstance(error, NoProviderAvailableError):
        text = f"{_sentence(error.message)} list_providers shows each one's status and breaker"
    elif isinstance(error, NotFoundError):
        text = error.message
    else:
        text = f"The chat failed: {error.message}"
    parts = [_sentence(text)]
    if error.retry_after is not None and error.retryable:
        parts.append(f"Retry after {error.retry_after:g} s.")
    attempts = _attempts(error.trail)
    if attempts:
        parts.append(attempts)
    return " ".join(parts)


def _sentence(text: str) -> str:
    return text if text.endswith((".", "!", "?")) else f"{text}."


def _known(names: list[str]) -> str:
    if not names:
        return "No provider serves any model right now."
    listed = ", ".join(names[:MAX_NAMES])
    more = len(names) - MAX_NAMES
    if more > 0:
        listed += f" and {more} more (see list_models)"
    return f"Models and aliases you can use: {listed}."


def _attempts(trail: RoutingTrail | None) -> str:
    if trail is None or not trail.attempts:
        return ""
    lines = []
    for number, attempt in enumerate(trail.attempts, 1):
        line = f"{number}. {attempt.provider}/{attempt.model}: {attempt.outcome}"
        if attempt.status is not None:
            line += f" ({attempt.status})"
        if attempt.message:
            line += f": {attempt.message[:MAX_REASON]}"
        lines.append(line)
    return "Attempts: " + "; ".join(lines) + "."
