"""The routing trail of one request: which providers were tried, and why each failed."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["CANCELLED", "MAX_SHORT", "OK", "Attempt", "RoutingTrail"]

OK = "ok"
# The outcome of a hedged attempt cancelled because the other one answered first.
CANCELLED = "cancelled"


@dataclass(slots=True)
class Attempt:
    """One try of one provider; ``outcome`` is "ok", an error kind, or why it was skipped."""

    provider: str
    model: str
    outcome: str
    status: int | None = None
    latency: float = 0.0
    message: str | None = None
    skipped: bool = False


@dataclass(slots=True)
class RoutingTrail:
    """Every attempt of one request, in order, and the request's id. Holds names, statuses and
    messages; no secrets."""

    attempts: list[Attempt] = field(default_factory=list)
    request_id: str | None = None
    # A request in another protocol: the providers it was translated to chat for, and what
    # its chat form could not carry ("dropped cache_control", ...).
    translated: set[str] = field(default_factory=set)
    notes: list[str] = field(default_factory=list)
    # The provider a hedged request's second attempt went to (None: not hedged).
    hedged: str | None = None
    # Seconds spent in providers' lines for a concurrency slot, over every attempt.
    queued: float = 0.0

    @property
    def served_by(self) -> Attempt | None:
        """The attempt that succeeded, if one did (a hedge cancelled after it comes later)."""
        attempts = self.attempts
        if not attempts:
            return None
        last = attempts[-1]
        if last.outcome == OK:
            return last
        if self.hedged is None:
            return None
        for attempt in reversed(attempts):
            if attempt.outcome != CANCELLED:
                return attempt if attempt.outcome == OK else None
        return None

    @property
    def upstream_seconds(self) -> float:
        """Time spent waiting on providers, over every attempt."""
        return sum(a.latency for a in self.attempts if not a.skipped)

    @property
    def tries(self) -> int:
        """Attempts that reached a provider (skips not counted)."""
        return sum(1 for attempt in self.attempts if not attempt.skipped)

    def summary(self) -> str:
        """A one-line account for logs: ``groq/llama: RateLimitError (429); mock/m: ok``."""
        parts = []
        for a in self.attempts:
            status = f" ({a.status})" if a.status is not None else ""
            via = " (translated)" if a.provider in self.translated else ""
            parts.append(f"{a.provider}/{a.model}{via}: {a.outcome}{status}")
        if self.notes:
            parts.append("notes: " + ", ".join(self.notes))
        return "; ".join(parts)

    def short(self) -> str:
        """The trail in short for the access log: ``u1:503 -> u2:ok``; each step is the
        upstream's status, else what happened (``timeout``, ``ejected``, ``cancelled``),
        and at most MAX_SHORT steps are shown. Empty when nothing was tried."""
        attempts = self.attempts
        steps = [f"{a.provider}:{_step(a)}" for a in attempts[:MAX_SHORT]]
        if len(attempts) > MAX_SHORT:
            steps.append(f"+{len(attempts) - MAX_SHORT} more")
        return " -> ".join(steps)


# The most steps the short trail shows.
MAX_SHORT = 8
# What a step without an upstream status shows, by error kind (others: the kind, shortened).
_WORDS = {
    "ConnectTimeoutError": "connect-timeout",
    "FirstByteTimeoutError": "first-byte-timeout",
    "IdleTimeoutError": "idle-timeout",
    "DeadlineExceededError": "deadline",
    "UpstreamTimeoutError": "timeout",
    "ProviderBusyError": "busy",
    "RateLimitError": "rate-limited",
}


def _step(attempt: Attempt) -> str:
    outcome = attempt.outcome
    if attempt.status is not None and not attempt.skipped:
        return str(attempt.status)
    word = _WORDS.get(outcome)
    if word is not None:
        return word
    if outcome.endswith("Error"):
        return outcome[: -len("Error")].lower()
    return outcome
