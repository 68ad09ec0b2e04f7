"""The request deadline, handed from the manager to providers that honour it.

The manager sets it around each attempt; a provider that reads it stops at the earlier of its
own total timeout and the request's deadline, so the manager needs no timer of its own.
"""

from __future__ import annotations

from contextvars import ContextVar

from .clock import Clock

__all__ = ["REQUEST_DEADLINE", "deadline_for"]

# (the clock it is measured on, the monotonic time it falls at)
REQUEST_DEADLINE: ContextVar[tuple[Clock, float] | None] = ContextVar(
    "leapasgi_request_deadline", default=None
)


def deadline_for(clock: Clock, total: float) -> float:
    """``total`` seconds from now on ``clock``, or the request's deadline if that is sooner."""
    deadline = clock.monotonic() + total
    request = REQUEST_DEADLINE.get()
    if request is not None and request[0] is clock and request[1] < deadline:
        return request[1]
    return deadline
