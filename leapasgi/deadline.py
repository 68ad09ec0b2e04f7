"""A request's deadline, handed explicitly from the dispatcher to every provider call."""

from __future__ import annotations

from .clock import Clock

__all__ = ["Deadline"]


class Deadline:
    """The moment a request must be done by, on the clock it was set with.

    Providers may run on another clock than the dispatcher (tests drive one with a fake clock),
    so they read only ``remaining()``: the seconds left, which mean the same on any clock.
    """

    __slots__ = ("at", "clock")

    def __init__(self, at: float, clock: Clock) -> None:
        self.at = at
        self.clock = clock

    @classmethod
    def after(cls, seconds: float, clock: Clock) -> Deadline:
        """The deadline ``seconds`` from now."""
        return cls(clock.monotonic() + seconds, clock)

    def remaining(self) -> float:
        """Seconds left; 0 once it has passed."""
        return max(self.at - self.clock.monotonic(), 0.0)

    def within(self, seconds: float) -> float:
        """``seconds``, or the time left if that is shorter."""
        return min(seconds, self.remaining())

    def __repr__(self) -> str:
        return f"Deadline(remaining={self.remaining():.3f})"
