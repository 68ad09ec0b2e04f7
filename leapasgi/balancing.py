"""Balancing strategies: the order in which to try the providers able to serve a request.

Pure code: no I/O, no clock; randomness comes from the caller's ``random.Random``.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import assert_never

__all__ = [
    "DEFAULT_LATENCY",
    "Candidate",
    "Strategy",
    "order",
]

# tower's default RTT: pessimistic, so a new provider is not flooded before a baseline exists.
DEFAULT_LATENCY = 1.0


class Strategy(StrEnum):
    """How the candidates for one request are ordered."""

    PRIORITY = "priority"  # lowest number first; ties keep the given order
    ROUND_ROBIN = "round_robin"  # the given order, rotated by ``cursor``
    WEIGHTED = "weighted"  # random by weight, without replacement; weight <= 0 last
    LEAST_LATENCY = "least_latency"  # P2C over peak-EWMA latency x (in_flight + 1), probes first
    LEAST_IN_FLIGHT = "least_in_flight"  # fewest in flight first; ties at random


@dataclass(frozen=True, slots=True)
class Candidate:
    """A routing snapshot of one provider able to serve the request."""

    name: str
    priority: int = 0
    weight: float = 1.0
    # Peak EWMA in seconds, error penalties included; None = no samples yet.
    latency: float | None = None
    in_flight: int = 0
    # Due for a probe: least-latency sends it first. Its estimate only moves with samples, so a
    # provider that once looked slow would otherwise never be tried again.
    probe: bool = False


def order(
    strategy: Strategy,
    candidates: Sequence[Candidate],
    *,
    rng: random.Random,
    cursor: int = 0,
) -> list[Candidate]:
    """Every candidate once, in the order to try them.

    The first is the pick, the rest the failover order. ``cursor`` only matters for round-robin.
    """
    if len(candidates) < 2:
        return list(candidates)
    match strategy:
        case Strategy.PRIORITY:
            return sorted(candidates, key=_priority)
        case Strategy.ROUND_ROBIN:
            start = cursor % len(candidates)
            return [*candidates[start:], *candidates[:start]]
        case Strategy.WEIGHTED:
            return _weighted(candidates, rng)
        case Strategy.LEAST_LATENCY:
            return _least_latency(candidates, rng)
        case Strategy.LEAST_IN_FLIGHT:
            return _least_in_flight(candidates, rng)
        case _:
            assert_never(strategy)


def _cost(candidate: Candidate) -> float:
    latency = DEFAULT_LATENCY if candidate.latency is None else candidate.latency
    return latency * (candidate.in_flight + 1)


def _priority(candidate: Candidate) -> int:
    return candidate.priority


def _weighted(candidates: Sequence[Candidate], rng: random.Random) -> list[Candidate]:
    # Efraimidis-Spirakis with exponential keys: ascending Exp(1)/w equals descending u**(1/w),
    # without underflow for small weights.
    keyed: list[tuple[float, int]] = []
    unweighted: list[Candidate] = []
    for index, candidate in enumerate(candidates):
        if candidate.weight > 0:
            keyed.append((rng.expovariate(1.0) / candidate.weight, index))
        else:
            unweighted.append(candidate)
    keyed.sort()
    return [candidates[index] for _, index in keyed] + unweighted


def _least_latency(candidates: Sequence[Candidate], rng: random.Random) -> list[Candidate]:
    for index, candidate in enumerate(candidates):
        if candidate.probe:
            rest = [*candidates[:index], *candidates[index + 1 :]]
            return [candidate, *(rest if len(rest) < 2 else _power_of_two_choices(rest, rng))]
    return _power_of_two_choices(candidates, rng)


def _power_of_two_choices(candidates: Sequence[Candidate], rng: random.Random) -> list[Candidate]:
    costs = [_cost(candidate) for candidate in candidates]
    n = len(candidates)
    a = rng.randrange(n)
    b = rng.randrange(n - 1)
    if b >= a:
        b += 1
    if costs[b] < costs[a] or (costs[b] == costs[a] and rng.random() < 0.5):
        a, b = b, a
    if n == 2:
        return [candidates[a], candidates[b]]
    rest = sorted((index for index in range(n) if index != a), key=costs.__getitem__)
    return [candidates[a], *(candidates[index] for index in rest)]


def _least_in_flight(candidates: Sequence[Candidate], rng: random.Random) -> list[Candidate]:
    keyed = sorted((c.in_flight, rng.random(), index) for index, c in enumerate(candidates))
    return [candidates[index] for _, _, index in keyed]
