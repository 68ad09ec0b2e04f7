"""Retry policy: which failures are worth another attempt, and how long to wait first.

Pure code: no I/O, no clock reads except through arguments. The dispatcher applies it to every
provider it routes to; ``Retrying`` applies it to one provider used on its own.
"""

from __future__ import annotations

import email.utils
import math
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from .exceptions import DeadlineExceededError, LeapError

__all__ = [
    "DEFAULT_MAX_RETRIES",
    "INITIAL_RETRY_DELAY",
    "MAX_RETRY_AFTER",
    "MAX_RETRY_DELAY",
    "RetryPolicy",
    "is_final",
    "parse_retry_after",
]

INITIAL_RETRY_DELAY = 0.5
MAX_RETRY_DELAY = 8.0
# A Retry-After hint above this means "not here, not soon": fail over instead of waiting.
MAX_RETRY_AFTER = 60.0
# Retries of one provider within one request, after its first attempt.
DEFAULT_MAX_RETRIES = 2


def is_final(error: LeapError) -> bool:
    """True when ``error`` goes back to the caller as it is, neither retried nor failed over:
    the request's own fault (400, 401, 404, 413, 422...) or its deadline."""
    return not error.retryable or isinstance(error, DeadlineExceededError)


def parse_retry_after(headers: Mapping[str, str], *, now: float) -> float | None:
    """Seconds to wait from ``retry-after-ms`` or ``Retry-After`` (seconds or HTTP date).

    ``now`` is the wall-clock time (unix seconds) an HTTP date is measured from. Unparseable,
    negative or non-finite values give None; a date in the past gives 0.
    """
    ms = _header(headers, "retry-after-ms")
    if ms is not None:
        value = _parse_float(ms)
        if value is not None:
            return value / 1000.0
    raw = _header(headers, "retry-after")
    if raw is None:
        return None
    value = _parse_float(raw)
    if value is not None:
        return value
    try:
        when = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - now)


def _header(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)
    if value is None:
        value = next((v for k, v in headers.items() if k.lower() == name), None)
    return value.strip() if value is not None else None


def _parse_float(raw: str) -> float | None:
    try:
        value = float(raw)
    except ValueError:
        return None
    if not math.isfinite(value) or value < 0:
        return None
    return value


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Bounds for retrying one provider: attempts, backoff window and the largest hint honoured."""

    max_retries: int = DEFAULT_MAX_RETRIES
    initial_delay: float = INITIAL_RETRY_DELAY
    max_delay: float = MAX_RETRY_DELAY
    max_retry_after: float = MAX_RETRY_AFTER

    def backoff(self, retry: int, *, rng: Callable[[], float] = random.random) -> float:
        """Capped exponential backoff with full jitter for retry number ``retry`` (0-based)."""
        ceiling = min(self.max_delay, self.initial_delay * (2.0 ** min(retry, 62)))
        return ceiling * rng()

    def delay(
        self,
        retry: int,
        *,
        retry_after: float | None,
        rng: Callable[[], float] = random.random,
    ) -> float | None:
        """How long to wait before retry number ``retry``; None means do not retry here.

        A server hint wins over backoff when it is within ``max_retry_after``; a longer hint
        means the provider should not be retried now.
        """
        if retry >= self.max_retries:
            return None
        if retry_after is not None:
            if retry_after > self.max_retry_after:
                return None
            return retry_after
        return self.backoff(retry, rng=rng)

    def after(
        self, error: LeapError, retry: int, *, rng: Callable[[], float] = random.random
    ) -> float | None:
        """How long to wait before retry number ``retry`` of the provider that raised
        ``error``; None when it must not be retried there (final, not retryable here, out of
        retries, or a Retry-After beyond ``max_retry_after``)."""
        if not error.retry_here or is_final(error):
            return None
        return self.delay(retry, retry_after=error.retry_after, rng=rng)
