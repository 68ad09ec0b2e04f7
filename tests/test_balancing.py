from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence

import pytest
from hypothesis import given
from hypothesis import strategies as st

from leapasgi.balancing import DEFAULT_LATENCY, Candidate, Strategy, order

PICKS = 10_000
TOLERANCE = 0.02


def _first_picks(
    strategy: Strategy, candidates: Sequence[Candidate], *, seed: int = 0
) -> Counter[str]:
    rng = random.Random(seed)
    return Counter(order(strategy, candidates, rng=rng)[0].name for _ in range(PICKS))


def _names(candidates: Sequence[Candidate]) -> list[str]:
    return [candidate.name for candidate in candidates]


class _UntouchableRandom(random.Random):
    def random(self) -> float:
        raise AssertionError("rng used")

    def getrandbits(self, k: int) -> int:
        raise AssertionError("rng used")


def test_strategies_parse_from_config_strings() -> None:
    assert [Strategy(s.value) for s in Strategy] == list(Strategy)
    assert Strategy("least_latency") is Strategy.LEAST_LATENCY


@pytest.mark.parametrize("strategy", list(Strategy))
def test_empty_input_gives_empty_order(strategy: Strategy) -> None:
    assert order(strategy, [], rng=random.Random(0)) == []


@pytest.mark.parametrize("strategy", list(Strategy))
def test_single_candidate_is_returned_without_touching_rng(strategy: Strategy) -> None:
    only = Candidate("only", weight=0.0)

    assert order(strategy, (only,), rng=_UntouchableRandom(), cursor=7) == [only]


def test_priority_orders_lowest_number_first_and_keeps_ties_in_given_order() -> None:
    candidates = [
        Candidate("c", priority=2),
        Candidate("a1", priority=0),
        Candidate("b", priority=1),
        Candidate("a2", priority=0),
        Candidate("z", priority=-1),
    ]

    result = order(Strategy.PRIORITY, candidates, rng=random.Random(0))

    assert _names(result) == ["z", "a1", "a2", "b", "c"]


def test_round_robin_rotates_the_start_by_cursor() -> None:
    candidates = [Candidate(name) for name in "abcd"]
    n = len(candidates)
    rng = random.Random(0)

    for cursor in range(2 * n + 1):
        start = cursor % n
        expected = _names(candidates)[start:] + _names(candidates)[:start]
        assert _names(order(Strategy.ROUND_ROBIN, candidates, rng=rng, cursor=cursor)) == expected


def test_round_robin_accepts_a_negative_cursor() -> None:
    candidates = [Candidate(name) for name in "abc"]

    result = order(Strategy.ROUND_ROBIN, candidates, rng=random.Random(0), cursor=-1)

    assert _names(result) == ["c", "a", "b"]


_candidates = st.lists(
    st.builds(
        Candidate,
        name=st.text(max_size=3),
        priority=st.integers(-3, 3),
        weight=st.floats(-1.0, 10.0, allow_nan=False) | st.sampled_from([0.0, float("inf")]),
        latency=st.none() | st.floats(0.0, 10.0),
        in_flight=st.integers(0, 50),
    ),
    max_size=8,
)


@given(
    strategy=st.sampled_from(Strategy),
    candidates=_candidates,
    seed=st.integers(0, 2**32),
    cursor=st.integers(-100, 100),
)
def test_every_strategy_returns_a_permutation_of_the_input(
    strategy: Strategy, candidates: list[Candidate], seed: int, cursor: int
) -> None:
    before = list(candidates)
    as_tuple = tuple(candidates)

    result = order(strategy, candidates, rng=random.Random(seed), cursor=cursor)

    assert sorted(map(id, result)) == sorted(map(id, candidates))
    assert candidates == before
    assert order(strategy, as_tuple, rng=random.Random(seed), cursor=cursor) == result


def test_weighted_first_pick_follows_the_weights() -> None:
    candidates = [Candidate("a", weight=1), Candidate("b", weight=2), Candidate("c", weight=7)]

    firsts = _first_picks(Strategy.WEIGHTED, candidates)

    for name, share in {"a": 0.1, "b": 0.2, "c": 0.7}.items():
        assert firsts[name] / PICKS == pytest.approx(share, abs=TOLERANCE)


def test_weighted_second_pick_is_drawn_from_the_rest_by_weight() -> None:
    candidates = [Candidate("a", weight=1), Candidate("b", weight=2), Candidate("c", weight=7)]
    rng = random.Random(1)
    # Without replacement: P(x second) = sum over y != x of P(y first) * w_x / (10 - w_y).
    expected = {
        "a": 0.2 * 1 / 8 + 0.7 * 1 / 3,
        "b": 0.1 * 2 / 9 + 0.7 * 2 / 3,
        "c": 0.1 * 7 / 9 + 0.2 * 7 / 8,
    }

    seconds = Counter(order(Strategy.WEIGHTED, candidates, rng=rng)[1].name for _ in range(PICKS))

    for name, share in expected.items():
        assert seconds[name] / PICKS == pytest.approx(share, abs=TOLERANCE)


def test_weighted_puts_non_positive_weights_last() -> None:
    candidates = [
        Candidate("zero", weight=0.0),
        Candidate("a", weight=0.01),
        Candidate("negative", weight=-1.0),
        Candidate("b", weight=5.0),
    ]
    rng = random.Random(2)

    for _ in range(1_000):
        result = _names(order(Strategy.WEIGHTED, candidates, rng=rng))
        assert set(result[:2]) == {"a", "b"}
        assert result[2:] == ["zero", "negative"]


def test_weighted_with_only_non_positive_weights_keeps_the_given_order() -> None:
    candidates = [
        Candidate("a", weight=0.0),
        Candidate("b", weight=-2.0),
        Candidate("c", weight=0.0),
    ]

    result = order(Strategy.WEIGHTED, candidates, rng=random.Random(0))

    assert _names(result) == ["a", "b", "c"]


def test_least_latency_never_sends_first_to_a_ten_times_slower_provider() -> None:
    candidates = [
        Candidate("fast1", latency=0.1),
        Candidate("slow", latency=1.0),
        Candidate("fast2", latency=0.1),
    ]
    rng = random.Random(3)

    orders = [_names(order(Strategy.LEAST_LATENCY, candidates, rng=rng)) for _ in range(PICKS)]
    firsts = Counter(result[0] for result in orders)

    # P2C: the slow one loses every comparison, so it is never first; the fast pair split
    # 1/3 (drawn together, coin flip) * 1/2 + 1/3 (drawn with the slow one) = 1/2 each.
    assert firsts["slow"] == 0
    assert firsts["fast1"] / PICKS == pytest.approx(0.5, abs=TOLERANCE)
    assert all(result[-1] == "slow" for result in orders)


def test_least_latency_first_pick_matches_power_of_two_choices() -> None:
    candidates = [
        Candidate("worst", latency=0.9),
        Candidate("best", latency=0.1),
        Candidate("middle", latency=0.5),
    ]

    firsts = _first_picks(Strategy.LEAST_LATENCY, candidates, seed=4)

    # Each of the three pairs is drawn with probability 1/3; the lower cost of the pair wins.
    assert firsts["worst"] == 0
    assert firsts["best"] / PICKS == pytest.approx(2 / 3, abs=TOLERANCE)
    assert firsts["middle"] / PICKS == pytest.approx(1 / 3, abs=TOLERANCE)


def test_least_latency_failover_order_is_ascending_cost_not_the_p2c_loser() -> None:
    candidates = [
        Candidate("d", latency=0.4),
        Candidate("a", latency=0.1),
        Candidate("c", latency=0.3),
        Candidate("b", latency=0.2),
    ]
    rng = random.Random(5)

    orders = {tuple(_names(order(Strategy.LEAST_LATENCY, candidates, rng=rng))) for _ in range(500)}

    assert orders == {("a", "b", "c", "d"), ("b", "a", "c", "d"), ("c", "a", "b", "d")}


def test_least_latency_does_not_reward_a_provider_that_fails_fast() -> None:
    candidates = [
        Candidate("steady1", latency=0.8),
        Candidate("failing", latency=2.001),
        Candidate("steady2", latency=1.2),
    ]

    firsts = _first_picks(Strategy.LEAST_LATENCY, candidates, seed=6)

    assert firsts["failing"] == 0


@pytest.mark.parametrize(
    ("known_latency", "new_first"),
    [(0.2, False), (DEFAULT_LATENCY / 2, False), (3.0, True), (DEFAULT_LATENCY * 2, True)],
)
def test_least_latency_treats_a_new_provider_as_default_latency(
    known_latency: float, new_first: bool
) -> None:
    candidates = [Candidate("new"), Candidate("known", latency=known_latency)]

    firsts = _first_picks(Strategy.LEAST_LATENCY, candidates, seed=7)

    assert firsts["new"] == (PICKS if new_first else 0)


def test_least_latency_counts_requests_in_flight() -> None:
    candidates = [
        Candidate("fast_but_busy", latency=0.1, in_flight=30),
        Candidate("slower_idle", latency=0.2),
    ]

    firsts = _first_picks(Strategy.LEAST_LATENCY, candidates, seed=8)

    assert firsts["slower_idle"] == PICKS


def test_least_latency_breaks_ties_at_random() -> None:
    candidates = [Candidate("a", latency=0.3), Candidate("b", latency=0.3)]

    firsts = _first_picks(Strategy.LEAST_LATENCY, candidates, seed=9)

    assert firsts["a"] / PICKS == pytest.approx(0.5, abs=TOLERANCE)


def test_least_in_flight_picks_the_minimum_and_orders_the_rest_ascending() -> None:
    candidates = [
        Candidate("three", in_flight=3),
        Candidate("zero", in_flight=0),
        Candidate("seven", in_flight=7),
        Candidate("one", in_flight=1),
    ]
    rng = random.Random(10)

    for _ in range(100):
        result = _names(order(Strategy.LEAST_IN_FLIGHT, candidates, rng=rng))
        assert result == ["zero", "one", "three", "seven"]


def test_least_in_flight_spreads_ties_evenly() -> None:
    candidates = [
        Candidate("busy", in_flight=4),
        Candidate("a", in_flight=1),
        Candidate("b", in_flight=1),
        Candidate("c", in_flight=1),
    ]

    firsts = _first_picks(Strategy.LEAST_IN_FLIGHT, candidates, seed=11)

    assert firsts["busy"] == 0
    for name in "abc":
        assert firsts[name] / PICKS == pytest.approx(1 / 3, abs=TOLERANCE)
