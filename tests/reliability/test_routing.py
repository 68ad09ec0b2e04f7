"""Rows 1, 2, 3, 6, 7, 8 and 9: routing under faults and load, on a live gateway.

Load comes from an async httpx client in the test's own event loop, at a fixed rate (open loop,
with a cap on requests in flight); U1-U3 and the gateway run in the server thread. The issue's
10 s windows are scaled down, and each figure's name says to what; ejection times are the
harness's test-scaled ones unless a test says otherwise. U1-U3 all have priority 0, so U1 is
tried first unless a test picks another strategy. Times are time.monotonic() on both sides
(one process), so upstream timestamps and breaker times compare directly.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from leapasgi.attempts import BUSY_RETRY_AFTER
from leapasgi.config import DEFAULT_MAX_ATTEMPTS
from leapasgi.health import BreakerState
from leapasgi.registry import ProviderStatus
from tests.asgi.live_server import LiveGateway
from tests.fake_upstream import Behavior, FakeUpstream, Seen, completion, error_body, text_stream
from tests.reliability.harness import MAX_EJECTION, TOTAL, Figures, reliability_gateway

CHAT = "/chat/completions"
BODY: dict[str, Any] = {"model": "m1", "messages": [{"role": "user", "content": "hi"}]}
# Longer than any request may take: a request still open by then counts as a hang.
CLIENT_TIMEOUT = TOTAL + 2.0
OK = Behavior(json_body=completion("fine"))
FAILING_500 = Behavior(status=500, json_body=error_body("boom", type="server_error"))
FAILING_503 = Behavior(status=503, json_body=error_body("overloaded", type="server_error"))


@dataclass
class Outcome:
    """One client request as the client saw it."""

    started: float
    ended: float
    status: int
    headers: httpx.Headers
    body: bytes
    stream: bool

    @property
    def latency(self) -> float:
        return self.ended - self.started

    @property
    def ok(self) -> bool:
        return self.status == 200 and (not self.stream or b"data: [DONE]" in self.body)

    @property
    def error(self) -> dict[str, Any] | None:
        """The OpenAI error object, if the body is an OpenAI error envelope."""
        try:
            payload = json.loads(self.body)
        except ValueError:
            return None
        error = payload.get("error") if isinstance(payload, dict) else None
        if isinstance(error, dict) and {"message", "type", "param", "code"} <= error.keys():
            return error
        return None


def _client(live: LiveGateway, concurrency: int = 32) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=live.base_url,
        timeout=CLIENT_TIMEOUT,
        headers={"Authorization": "Bearer k"},
        limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency),
    )


async def _send(client: httpx.AsyncClient, *, stream: bool = False) -> Outcome:
    body = {**BODY, "stream": True} if stream else BODY
    started = time.monotonic()
    try:
        async with client.stream("POST", CHAT, json=body) as response:
            data = await response.aread()
    except httpx.HTTPError as exc:
        return Outcome(started, time.monotonic(), 0, httpx.Headers(), repr(exc).encode(), stream)
    return Outcome(started, time.monotonic(), response.status_code, response.headers, data, stream)


async def _pace(
    client: httpx.AsyncClient,
    *,
    rate: float,
    seconds: float,
    concurrency: int = 32,
    stream_every: int = 0,
    at: Iterable[tuple[float, Callable[[], None]]] = (),
    stop: Callable[[], bool] | None = None,
) -> list[Outcome]:
    """Requests at ``rate`` per second for at most ``seconds`` (or until ``stop()``), at most
    ``concurrency`` open at once; every ``stream_every``-th one streams. ``at`` runs callbacks
    that many seconds in."""
    outcomes: list[Outcome] = []
    slots = asyncio.Semaphore(concurrency)
    tasks: list[asyncio.Task[None]] = []
    loop = asyncio.get_running_loop()
    timers = [loop.call_later(offset, callback) for offset, callback in at]

    async def one(stream: bool) -> None:
        try:
            outcomes.append(await _send(client, stream=stream))
        finally:
            slots.release()

    start = time.monotonic()
    for i in range(int(rate * seconds)):
        if stop is not None and stop():
            break
        delay = start + i / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        await slots.acquire()
        stream = bool(stream_every) and i % stream_every == 0
        tasks.append(asyncio.create_task(one(stream)))
    await asyncio.gather(*tasks)
    for timer in timers:
        timer.cancel()
    return outcomes


def _load(live: LiveGateway, **options: Any) -> tuple[list[Outcome], float]:
    """``_pace`` with a fresh client; also returns the rate requests were actually sent at."""

    async def main() -> list[Outcome]:
        async with _client(live, options.get("concurrency", 32)) as client:
            return await _pace(client, **options)

    outcomes = asyncio.run(main())
    starts = [o.started for o in outcomes]
    return outcomes, (len(starts) - 1) / max(max(starts) - min(starts), 1e-9)


def _one(live: LiveGateway) -> Outcome:
    async def main() -> Outcome:
        async with _client(live, 1) as client:
            return await _send(client)

    return asyncio.run(main())


def _chats(fake: FakeUpstream, since: float = 0.0, until: float = float("inf")) -> list[Seen]:
    return [s for s in fake.chat_requests if since <= s.started < until]


def _peak_concurrency(seen: Sequence[Seen]) -> int:
    events = sorted(
        [(s.started, 1) for s in seen] + [(s.finished or float("inf"), -1) for s in seen],
        key=lambda e: (e[0], e[1]),  # a finish before a start at the same instant
    )
    peak = current = 0
    for _, step in events:
        current += step
        peak = max(peak, current)
    return peak


def _retry_after(outcome: Outcome) -> int | None:
    value = outcome.headers.get("retry-after")
    return int(value) if value is not None and value.isdigit() else None


def test_row1_500s_from_u1_cost_no_client_errors_and_few_attempts(figures: Figures) -> None:
    rate, warm, window, after = 100, 0.5, 2.5, 0.5
    scale = f"{rate} req/s, 500s for {window:g} s (test-scaled from 10 s)"
    marks: dict[str, float] = {}
    with reliability_gateway() as live:
        u1 = live.upstreams[0]
        for fake in live.upstreams:
            fake.default = OK

        def fault(behavior: Behavior, mark: str) -> Callable[[], None]:
            def switch() -> None:
                marks[mark] = time.monotonic()
                u1.default = behavior

            return switch

        outcomes, achieved = _load(
            live,
            rate=rate,
            seconds=warm + window + after,
            at=[(warm, fault(FAILING_500, "on")), (warm + window, fault(OK, "off"))],
        )
        in_window = len(_chats(u1, marks["on"], marks["off"]))
        attempts = sum(len(fake.chat_requests) for fake in live.upstreams)

    errors = sum(1 for o in outcomes if not o.ok)
    ratio = attempts / len(outcomes)
    figures.record("1", f"client-visible errors ({scale})", errors, passed=errors == 0, target="0")
    figures.record(
        "1", "U1 requests in the fault window", in_window, passed=in_window <= 10, target="<= 10"
    )
    figures.record(
        "1", "upstream attempts per client request", ratio, passed=ratio <= 1.2, target="<= 1.2"
    )
    figures.record("1", "client requests per second sent", achieved, passed=True)
    assert errors == 0, [o.status for o in outcomes if not o.ok][:5]
    assert in_window <= 10
    assert ratio <= 1.2


def test_row2_ejections_grow_then_u1_heals_and_stays_in(figures: Figures) -> None:
    base, cap, rate = 0.25, 0.75, 40
    # ejected_at -> (times ejected, seconds the ejection lasts)
    ejections: dict[float, tuple[int, float]] = {}
    healed: dict[str, float] = {}
    with reliability_gateway(health={"base_ejection": base, "max_ejection": cap}) as live:
        u1 = live.upstreams[0]
        for fake in live.upstreams:
            fake.default = OK
        u1.default = FAILING_500
        breaker = live.gateway.manager.registry.get("u1").breaker

        async def watch() -> None:
            while True:
                # Read twice: the server thread may be mid-ejection.
                first = (breaker.ejected_at, breaker.open_until, breaker.times_ejected)
                again = (breaker.ejected_at, breaker.open_until, breaker.times_ejected)
                at, until, times = first
                if first == again and at is not None and until is not None and at not in ejections:
                    ejections[at] = (times, until - at)
                await asyncio.sleep(0.002)

        async def main() -> list[Outcome]:
            async with _client(live) as client:
                watcher = asyncio.create_task(watch())
                try:
                    failing = await _pace(
                        client, rate=rate, seconds=4.0, stop=lambda: len(ejections) >= 4
                    )
                    healed["at"] = time.monotonic()
                    u1.default = OK
                    ends = breaker.open_until or healed["at"]
                    healing = await _pace(client, rate=rate, seconds=ends - time.monotonic() + 1.2)
                finally:
                    watcher.cancel()
                return failing + healing

        outcomes = asyncio.run(main())
        snapshot = live.gateway.manager.registry.snapshot("u1")
        upstreams = list(live.upstreams)
        back = [s for s in _chats(u1, healed["at"]) if s.finished is not None]

    ordered = [ejections[at] for at in sorted(ejections)]
    grown = [times for times, _ in ordered[:4]] == [1, 2, 3, 4] and all(
        abs(seconds - min(base * times, cap)) < 1e-6 for times, seconds in ordered
    )
    last_at = max(at for at in ejections if at < healed["at"])
    last_end = last_at + ejections[last_at][1]
    first_back = min(s.started for s in back) - last_end if back else float("inf")
    since = last_end + first_back + 0.05
    share = len(_chats(u1, since)) / max(sum(len(_chats(f, since)) for f in upstreams), 1)
    new_ejections = sum(1 for at in ejections if at > healed["at"])
    errors = sum(1 for o in outcomes if not o.ok)
    durations = ", ".join(f"{seconds:g}" for _, seconds in ordered)
    figures.record(
        "2",
        f"ejection lengths in s (base {base:g} s x n, cap {cap:g} s; test-scaled)",
        durations,
        passed=grown,
        target="base x n, capped",
    )
    figures.record(
        "2",
        "U1 back in service after its last ejection ended, s",
        first_back,
        passed=first_back <= 0.25,
        target="<= 0.25 (next request)",
    )
    stays = new_ejections == 0 and share >= 0.9 and snapshot.status is ProviderStatus.ACTIVE
    figures.record(
        "2", "U1 share of requests in the 1 s after it healed", share, passed=stays, target=">= 0.9"
    )
    figures.record("2", "client-visible errors", errors, passed=errors == 0, target="0")
    assert grown, ordered
    assert first_back <= 0.25
    assert stays, (new_ejections, share, snapshot.status)
    assert errors == 0


def test_row3_every_client_gets_a_prompt_openai_503_when_all_upstreams_503(
    figures: Figures,
) -> None:
    with reliability_gateway() as live:
        for fake in live.upstreams:
            fake.default = FAILING_503
        outcomes, _ = _load(live, rate=20, seconds=2.0, concurrency=16, stream_every=4)
        attempts = sum(len(fake.chat_requests) for fake in live.upstreams)

    shaped = [o for o in outcomes if o.status == 503 and o.error is not None]
    hinted = [o for o in shaped if (_retry_after(o) or 0) >= 1]
    per_request = [int(o.headers.get("x-leap-attempts", "99")) for o in outcomes]
    slowest = max(o.latency for o in outcomes)
    hangs = sum(1 for o in outcomes if o.status == 0 or o.latency > TOTAL)
    figures.record(
        "3",
        f"OpenAI-shaped 503s with Retry-After ({len(outcomes)} requests, 1 in 4 streaming)",
        f"{len(hinted)}/{len(outcomes)}",
        passed=len(hinted) == len(outcomes),
        target="all",
    )
    figures.record(
        "3",
        "most upstream attempts for one request",
        max(per_request),
        passed=max(per_request) <= DEFAULT_MAX_ATTEMPTS,
        target=f"<= {DEFAULT_MAX_ATTEMPTS} (budget)",
    )
    figures.record(
        "3",
        "upstream attempts in all",
        attempts,
        passed=attempts <= DEFAULT_MAX_ATTEMPTS * len(outcomes),
        target=f"<= {DEFAULT_MAX_ATTEMPTS} x requests",
    )
    figures.record(
        "3", f"slowest answer, s (deadline {TOTAL:g} s)", slowest, passed=slowest <= TOTAL
    )
    figures.record("3", "hangs", hangs, passed=hangs == 0, target="0")
    assert len(hinted) == len(outcomes), [(o.status, o.body[:80]) for o in outcomes][:5]
    assert max(per_request) <= DEFAULT_MAX_ATTEMPTS
    assert attempts <= DEFAULT_MAX_ATTEMPTS * len(outcomes)
    assert slowest <= TOTAL
    assert hangs == 0


def _http_date(seconds_from_now: float) -> str:
    return email.utils.formatdate(time.time() + seconds_from_now, usegmt=True)


def _wall_to_monotonic(wall: float) -> float:
    return wall - (time.time() - time.monotonic())


# name -> (headers of U1's one 429, seconds of load after it)
HINTS: dict[str, tuple[Callable[[], dict[str, str]], float]] = {
    "seconds": (lambda: {"Retry-After": "1"}, 1.6),
    "ms": (lambda: {"retry-after-ms": "800"}, 1.4),
    "HTTP date": (lambda: {"Retry-After": _http_date(2.0)}, 2.4),
    "garbage": (lambda: {"Retry-After": "soon, maybe"}, 0.8),
    "9999": (lambda: {"Retry-After": "9999"}, 1.0),
}


def _hint_end(kind: str, headers: dict[str, str], answered: float) -> float | None:
    """Monotonic time U1's hint ends; None when it has none (garbage)."""
    if kind == "garbage":
        return None
    if kind == "HTTP date":
        return _wall_to_monotonic(
            email.utils.parsedate_to_datetime(headers["Retry-After"]).timestamp()
        )
    if kind == "ms":
        return answered + float(headers["retry-after-ms"]) / 1000
    return answered + float(headers["Retry-After"])


@pytest.mark.parametrize("kind", list(HINTS))
def test_row6_no_request_reaches_u1_before_its_retry_after(kind: str, figures: Figures) -> None:
    make_headers, seconds = HINTS[kind]
    with reliability_gateway() as live:
        u1 = live.upstreams[0]
        for fake in live.upstreams:
            fake.default = OK
        headers = make_headers()
        u1.push(
            Behavior(
                status=429, json_body=error_body("quota", type="rate_limit_error"), headers=headers
            )
        )
        first = _one(live)
        limited = u1.chat_requests[0]
        held = live.gateway.manager.registry.get("u1").breaker.held_until
        held_for = None if held is None else held - time.monotonic()
        outcomes, _ = _load(live, rate=40, seconds=seconds)

    assert limited.finished is not None
    end = _hint_end(kind, headers, limited.finished)
    errors = sum(1 for o in [first, *outcomes] if not o.ok)
    after_first = _chats(u1, first.ended)
    figures.record("6", f"{kind}: client-visible errors", errors, passed=errors == 0, target="0")
    if end is None:
        # No usable hint: nothing is held, U1 takes traffic again at once.
        passed = held is None and len(after_first) > 0
        figures.record(
            "6",
            f"{kind}: hint ignored, U1 requests in the next {seconds:g} s",
            len(after_first),
            passed=passed,
            target="> 0 (no hold)",
        )
        assert passed, (held_for, len(after_first))
    elif kind == "9999":
        early = len(after_first)
        passed = (
            early == 0 and held_for is not None and MAX_EJECTION - 0.5 <= held_for <= MAX_EJECTION
        )
        figures.record(
            "6",
            f"9999: U1 requests in the next {seconds:g} s (hold capped at max_ejection "
            f"{MAX_EJECTION:g} s, test-scaled)",
            early,
            passed=passed,
            target="0",
        )
        assert passed, (early, held_for)
    else:
        early = len(_chats(u1, first.ended, end - 0.02))
        back = len(_chats(u1, end))
        figures.record(
            "6", f"{kind}: U1 requests before the hint ended", early, passed=early == 0, target="0"
        )
        figures.record(
            "6", f"{kind}: U1 requests after the hint", back, passed=back > 0, target="> 0"
        )
        assert early == 0
        assert back > 0
    assert errors == 0, [(o.status, o.body[:80]) for o in [first, *outcomes] if not o.ok][:5]


def _early_requests(fake: FakeUpstream, hint: float) -> int:
    """Requests that reached ``fake`` while one of its 429s was holding (after the gateway
    could have read it: 50 ms of slack, since requests already on their way are not early)."""
    seen = sorted(fake.chat_requests, key=lambda s: s.started)
    early = 0
    for request in seen:
        for answered in (s.finished for s in seen if s.finished is not None):
            if answered + 0.05 < request.started < answered + hint - 0.02:
                early += 1
                break
    return early


def test_row6_when_all_three_429_the_client_gets_429_with_the_smallest_hint(
    figures: Figures,
) -> None:
    hints = {"u1": 3, "u2": 1, "u3": 2}
    # Holds are capped at max_ejection: raise it above the longest hint.
    with reliability_gateway(routing={"max_attempts": 3}, health={"max_ejection": 4.0}) as live:
        for name, fake in zip(hints, live.upstreams, strict=True):
            fake.default = Behavior(
                status=429,
                json_body=error_body("quota", type="rate_limit_error"),
                headers={"Retry-After": str(hints[name])},
            )
        first = _one(live)
        outcomes, _ = _load(live, rate=4, seconds=1.5, concurrency=8)
        early = {
            name: _early_requests(fake, hints[name])
            for name, fake in zip(hints, live.upstreams, strict=True)
        }

    everything = [first, *outcomes]
    smallest = [o for o in everything if o.status == 429 and _retry_after(o) == min(hints.values())]
    slowest = max(o.latency for o in everything)
    figures.record(
        "6",
        "all 429 (hints 3, 1, 2 s): client answers that are 429 with Retry-After 1",
        f"{len(smallest)}/{len(everything)}",
        passed=len(smallest) == len(everything),
        target="all",
    )
    figures.record(
        "6",
        "all 429: requests that reached an upstream before its hint ended",
        sum(early.values()),
        passed=not any(early.values()),
        target="0",
    )
    assert len(smallest) == len(everything), [(o.status, _retry_after(o)) for o in everything]
    assert not any(early.values()), early
    assert slowest <= TOTAL + 0.5


# U1's answer time in row 7; U2 and U3 answer ten times faster. Long enough that a stall of the
# loaded test machine does not make U2 and U3 look as slow as U1.
SLOW = 0.4


def test_row7_least_latency_sends_little_to_a_10x_slower_u1_but_still_probes_it(
    figures: Figures,
) -> None:
    rate, warm, measured = 100, 1.0, 3.0
    marks: dict[str, float] = {}
    with reliability_gateway(routing={"strategy": "least_latency"}) as live:
        u1, u2, u3 = live.upstreams
        u1.default = Behavior(json_body=completion("slow"), before=SLOW)
        for fake in (u2, u3):
            fake.default = Behavior(json_body=completion("fast"), before=SLOW / 10)
        outcomes, achieved = _load(
            live,
            rate=rate,
            seconds=warm + measured,
            at=[(warm, lambda: marks.setdefault("warm", time.monotonic()))],
        )
        after = {f: len(_chats(f, marks["warm"])) for f in live.upstreams}

    share = after[u1] / max(sum(after.values()), 1)
    errors = sum(1 for o in outcomes if not o.ok)
    figures.record(
        "7",
        f"U1 share after {warm:g} s warm-up ({rate} req/s for {measured:g} s; U1 {SLOW:g} s, "
        f"others {SLOW / 10:g} s)",
        share,
        passed=share <= 0.05,
        target="<= 5%",
    )
    figures.record("7", "U1 probes after warm-up", after[u1], passed=after[u1] > 0, target="> 0")
    figures.record("7", "client-visible errors", errors, passed=errors == 0, target="0")
    figures.record("7", "client requests per second sent", achieved, passed=True)
    assert share <= 0.05
    assert after[u1] > 0
    assert errors == 0


@pytest.mark.parametrize("strategy", ["least_latency", "round_robin"])
def test_row8_a_fast_failing_u1_gets_a_small_share_and_costs_no_errors(
    strategy: str, figures: Figures
) -> None:
    rate, seconds = 100, 2.5
    with reliability_gateway(routing={"strategy": strategy}) as live:
        u1 = live.upstreams[0]
        for fake in live.upstreams:
            fake.default = OK
        u1.default = FAILING_503
        outcomes, _ = _load(live, rate=rate, seconds=seconds)
        to_u1 = len(u1.chat_requests)

    share = to_u1 / len(outcomes)
    errors = sum(1 for o in outcomes if not o.ok)
    figures.record(
        "8",
        f"{strategy}: U1 share of {len(outcomes)} requests ({rate} req/s for {seconds:g} s)",
        share,
        passed=share <= 0.05,
        target="<= 5%",
    )
    figures.record(
        "8", f"{strategy}: client-visible errors", errors, passed=errors == 0, target="0"
    )
    assert share <= 0.05
    assert errors == 0


def _burst(live: LiveGateway, count: int, *, stream: bool) -> list[Outcome]:
    async def main() -> list[Outcome]:
        async with _client(live, count) as client:
            return list(await asyncio.gather(*(_send(client, stream=stream) for _ in range(count))))

    return asyncio.run(main())


# Upstream answer time in row 9 (a waiter is served by 2 x ANSWER, within the deadline), and how
# soon overflow must be answered: before any slot frees, so nobody waited for one.
ANSWER = 1.0
FAST = 0.75 * ANSWER


def test_row9_a_providers_limit_holds_and_overflow_fails_fast(figures: Figures) -> None:
    limit, waiting, clients = 2, 1, 24
    options = {"max_in_flight": limit, "max_waiting": waiting, "first_byte_timeout": 2 * ANSWER}
    with reliability_gateway(
        provider_options={u: dict(options) for u in ("u1", "u2", "u3")}
    ) as live:
        for fake in live.upstreams:
            fake.default = Behavior(json_body=completion("slow"), before=ANSWER)
        plain = _burst(live, clients, stream=False)
        for fake in live.upstreams:
            # Six events (role, three pieces, finish, [DONE]) over ANSWER seconds.
            fake.default = Behavior(events=text_stream(["a", "b", "c"]), delay=ANSWER / 6)
        streamed = _burst(live, clients, stream=True)
        peaks = [_peak_concurrency(fake.chat_requests) for fake in live.upstreams]
        snapshots = live.gateway.manager.registry.snapshots()

    for kind, outcomes in (("JSON", plain), ("streaming", streamed)):
        served = [o for o in outcomes if o.ok]
        turned_away = [o for o in outcomes if not o.ok]
        busy = [
            o
            for o in turned_away
            if o.status == 503
            and _retry_after(o) == BUSY_RETRY_AFTER
            and (o.error or {}).get("code") == "provider_busy"
        ]
        slowest = max((o.latency for o in busy), default=0.0)
        fits = 3 * limit <= len(served) <= 3 * (limit + waiting)
        figures.record(
            "9",
            f"{kind}: {clients} clients at once, 3 providers x ({limit} in flight + {waiting} "
            "waiting): served",
            len(served),
            passed=fits,
            target=f"{3 * limit}-{3 * (limit + waiting)}",
        )
        figures.record(
            "9",
            f"{kind}: overflow answered 503 + Retry-After",
            f"{len(busy)}/{len(turned_away)}",
            passed=len(busy) == len(turned_away),
            target="all",
        )
        figures.record(
            "9",
            f"{kind}: slowest overflow answer, s (upstreams take {ANSWER:g} s)",
            slowest,
            passed=slowest <= FAST,
            target=f"<= {FAST:g}",
        )
        assert fits, len(served)
        assert len(busy) == len(turned_away), [(o.status, o.body[:80]) for o in turned_away][:5]
        assert slowest <= FAST
    figures.record(
        "9",
        "most requests an upstream saw at once",
        max(peaks),
        passed=max(peaks) <= limit,
        target=f"<= {limit}",
    )
    untouched = all(
        s.status is ProviderStatus.ACTIVE
        and s.breaker is BreakerState.CLOSED
        and s.times_ejected == 0
        and not s.errors
        for s in snapshots
    )
    overflows = sum(s.overflows for s in snapshots)
    figures.record(
        "9",
        f"providers ejected or charged an error after {overflows} local overflows",
        sum(1 for s in snapshots if s.times_ejected or s.errors),
        passed=untouched,
        target="0",
    )
    assert max(peaks) <= limit, peaks
    assert untouched, snapshots
