import email.utils
import math
import random

import pytest
from multidict import CIMultiDict

from leapasgi.exceptions import error_for_status
from leapasgi.retry import (
    DEFAULT_MAX_RETRIES,
    INITIAL_RETRY_DELAY,
    MAX_RETRY_AFTER,
    MAX_RETRY_DELAY,
    RetryPolicy,
    parse_retry_after,
)

NOW = 1_733_000_000.0


def test_retryable_statuses_are_408_409_429_and_5xx() -> None:
    retryable = {status for status in range(400, 600) if error_for_status(status, "x").retryable}

    assert retryable == {408, 409, 429, *range(500, 600)}


@pytest.mark.parametrize("retry", range(11))
def test_backoff_stays_in_its_window_and_fills_it(retry: int) -> None:
    policy = RetryPolicy()
    ceiling = min(MAX_RETRY_DELAY, INITIAL_RETRY_DELAY * 2**retry)
    rng = random.Random(retry).random

    delays = [policy.backoff(retry, rng=rng) for _ in range(10_000)]

    assert all(0 <= delay <= ceiling for delay in delays)
    assert max(delays) > 0.99 * ceiling
    assert min(delays) < 0.01 * ceiling
    assert 0.45 * ceiling < sum(delays) / len(delays) < 0.55 * ceiling


def test_backoff_is_capped_for_huge_retry_numbers() -> None:
    assert RetryPolicy().backoff(10_000, rng=lambda: 0.999) <= MAX_RETRY_DELAY


def test_delay_gives_up_after_max_retries() -> None:
    policy = RetryPolicy()

    assert policy.delay(DEFAULT_MAX_RETRIES - 1, retry_after=None) is not None
    assert policy.delay(DEFAULT_MAX_RETRIES, retry_after=None) is None
    assert policy.delay(DEFAULT_MAX_RETRIES, retry_after=1.0) is None
    assert RetryPolicy(max_retries=0).delay(0, retry_after=None) is None


def test_delay_honours_retry_after_up_to_the_cap() -> None:
    policy = RetryPolicy()

    assert policy.delay(0, retry_after=2.0) == 2.0
    assert policy.delay(0, retry_after=MAX_RETRY_AFTER) == MAX_RETRY_AFTER
    # Beyond the cap: do not wait here, fail over.
    assert policy.delay(0, retry_after=MAX_RETRY_AFTER + 1) is None


def test_delay_without_hint_is_backoff() -> None:
    policy = RetryPolicy(max_retries=10, initial_delay=1.0, max_delay=4.0)

    assert policy.delay(1, retry_after=None, rng=lambda: 0.5) == 1.0
    assert policy.delay(5, retry_after=None, rng=lambda: 0.5) == 2.0


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"retry-after": "2"}, 2.0),
        ({"retry-after": "1.5"}, 1.5),
        ({"retry-after": " 3 "}, 3.0),
        ({"retry-after": "0"}, 0.0),
        ({"retry-after": "9999"}, 9999.0),
        ({"retry-after-ms": "250", "retry-after": "3"}, 0.25),
        ({"retry-after-ms": "soon", "retry-after": "3"}, 3.0),
        ({"Retry-After": "4"}, 4.0),
        ({"Retry-After-Ms": "1500", "Retry-After": "4"}, 1.5),
        ({"retry-after": "soon"}, None),
        ({"retry-after": ""}, None),
        ({"retry-after": "-1"}, None),
        ({"retry-after-ms": "-5"}, None),
        ({"retry-after": "inf"}, None),
        ({"retry-after": "nan"}, None),
        ({"retry-after-ms": "inf"}, None),
        ({"retry-after": "Mon, 99 Foo 2024 99:99:99 GMT"}, None),
        ({}, None),
        ({"content-type": "application/json"}, None),
    ],
)
def test_parse_retry_after(headers: dict[str, str], expected: float | None) -> None:
    assert parse_retry_after(headers, now=NOW) == expected


def test_parse_retry_after_http_date_in_the_future() -> None:
    headers = {"retry-after": email.utils.formatdate(NOW + 30, usegmt=True)}

    assert parse_retry_after(headers, now=NOW) == pytest.approx(30.0)


def test_parse_retry_after_http_date_in_the_past_is_zero() -> None:
    headers = {"retry-after": email.utils.formatdate(NOW - 3600, usegmt=True)}

    assert parse_retry_after(headers, now=NOW) == 0.0


def test_parse_retry_after_reads_case_insensitive_headers() -> None:
    headers = CIMultiDict({"RETRY-AFTER": "7", "RETRY-AFTER-MS": "700"})

    assert parse_retry_after(headers, now=NOW) == 0.7


def test_parse_retry_after_reads_upper_case_keys_of_a_plain_dict() -> None:
    assert parse_retry_after({"RETRY-AFTER": "7"}, now=NOW) == 7.0


def test_parse_retry_after_never_raises_on_arbitrary_text() -> None:
    rng = random.Random(20240601)
    alphabet = "0123456789 .,:+-eEinfatGMTUZ\t\x00\u00e9\u0660\u4e00\U0001f600abcxyz"
    words = ["Mon,", "01", "Jan", "99999", "GMT", "+9999", "-0000", "24:61:61", "1e400", "nan"]
    for _ in range(20_000):
        if rng.random() < 0.5:
            text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 24)))
        else:
            text = " ".join(rng.choice(words) for _ in range(rng.randint(0, 7)))
        for name in ("retry-after", "retry-after-ms"):
            value = parse_retry_after({name: text}, now=NOW)
            assert value is None or (math.isfinite(value) and value >= 0), text
