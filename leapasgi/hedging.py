"""Hedged requests: when the first attempt has produced no content after a delay, a second
goes to another provider, and the first to produce content wins (the other is cancelled).

Dean and Barroso's "The Tail at Scale": the p99 of a request is the slowest of its attempts;
one extra attempt for the slowest few percent cuts it to near the p95, for a few percent more
load. The extra load is bounded by a budget, like a retry budget (Envoy, Finagle): every
hedgeable request earns ``ratio`` of a hedge, a hedge spends one, and at most ``BURST`` are
saved up, so over any stretch of N requests at most ``ratio * N + BURST`` are hedged.

The delay is fixed, or the first provider's recent p95 time to first token (so only the
slowest 5% of its answers are hedged), never below ``MIN_DELAY``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from .registry import ProviderEntry

__all__ = ["BURST", "FALLBACK_DELAY", "MIN_DELAY", "HedgeBudget", "hedge_delay", "hedge_header"]

# Hedges saved up at most: a burst after a quiet spell stays small.
BURST = 10.0
# Seconds a "p95" hedge waits while the provider has no samples yet.
FALLBACK_DELAY = 1.0
# The shortest delay: below it a hedge would double ordinary requests, not the slow ones.
MIN_DELAY = 0.01


class HedgeBudget:
    """At most ``ratio`` of the requests that may be hedged are, over time."""

    __slots__ = ("hedged", "ratio", "requests", "tokens")

    def __init__(self, ratio: float) -> None:
        self.ratio = ratio
        self.tokens = min(1.0, BURST) if ratio > 0 else 0.0
        self.requests = 0  # requests that could have been hedged
        self.hedged = 0

    def earn(self) -> None:
        """A hedgeable request arrived."""
        self.requests += 1
        self.tokens = min(BURST, self.tokens + self.ratio)

    def take(self) -> bool:
        """Spend a hedge, if one is saved up."""
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        self.hedged += 1
        return True


_ON = frozenset({b"on", b"true", b"1", b"yes"})
_OFF = frozenset({b"off", b"false", b"0", b"no"})


def hedge_header(scope: Mapping[str, Any]) -> bool | None:
    """The client's ``x-leap-hedge``: True (on), False (off), None (absent or unknown: the
    config decides)."""
    for name, value in scope["headers"]:
        if name == b"x-leap-hedge":
            word = bytes(value).strip().lower()
            return True if word in _ON else False if word in _OFF else None
    return None


def hedge_delay(after: float | Literal["p95"], entry: ProviderEntry, *, stream: bool) -> float:
    """Seconds the first attempt on ``entry`` gets before it is hedged: for a stream, until
    its first content; for a plain request, until its answer."""
    if after != "p95":
        return max(MIN_DELAY, float(after))
    window = entry.stats.ttft if stream else entry.stats.latency
    quantiles = window.quantiles()
    return max(MIN_DELAY, quantiles.p95 if quantiles is not None else FALLBACK_DELAY)
