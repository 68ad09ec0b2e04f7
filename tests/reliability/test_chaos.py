"""Row 25, chaos: seeded random faults on U1-U3 while clients send a steady mix of plain and
streaming requests (CI: 10 s; ``python benchmarks/soak.py --chaos`` runs it for 60 s).

Each upstream draws a fault for every request it gets from its own seeded RNG: statuses
(retryable or not, 429 with Retry-After), resets, hangs, stalls before the first byte, garbage
bodies, one byte every 0.8 s, and for streams cuts, resets, stalls, error events and malformed
lines mid-stream. Which request meets which fault depends on timing; the mix does not.

Invariants, not outputs: every request ends within the deadline + 1 s as a success or one
well-formed error; a stream's content comes from exactly one upstream answer, in order, with
no chunk twice; the gateway's attempt counters equal what the upstreams saw.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web
from pydantic import SecretStr

from leapasgi.config import ServerConfig
from leapasgi.sse import SSEDecoder
from tests.fake_upstream import Behavior, FakeUpstream, chunk, completion, error_body, sse
from tests.reliability.harness import TOTAL, Figures, reliability_gateway

ROW = "25"
SECONDS = float(os.environ.get("LEAP_CHAOS_SECONDS", "10"))
SEED = int(os.environ.get("LEAP_CHAOS_SEED", "25"))
RATE = 20.0
STREAM_SHARE = 0.3
PIECES = 4
GRACE = 1.0
ADMIN_KEY = "sk-chaos-admin-0123456789"
CHAT = "/v1/chat/completions"
# Upstream requests still being answered when the clients are done: give them a moment.
SETTLE = 0.5


def _pieces(tag: str) -> list[str]:
    return [f"{tag}:{i};" for i in range(PIECES)]


def _stream_events(tag: str, upto: int | None = None, *, done: bool = True) -> list[bytes]:
    payloads: list[Any] = [chunk({"role": "assistant", "content": ""})]
    payloads += [chunk({"content": p}) for p in _pieces(tag)[:upto]]
    if upto is None:
        payloads.append(chunk({}, finish="stop"))
    return sse(*payloads, done=done and upto is None)


def _error_event(message: str) -> bytes:
    return b"data: " + json.dumps(error_body(message, type="server_error")).encode() + b"\n\n"


def _status(code: int, **headers: str) -> Callable[[bool, str], Behavior]:
    body = error_body(f"chaos {code}", type="server_error" if code >= 500 else "invalid_request")
    return lambda stream, tag: Behavior(status=code, json_body=body, headers=dict(headers))


# Fault -> (weight, how the upstream answers a stream or plain request with answer ``tag``).
FAULTS: dict[str, tuple[int, Callable[[bool, str], Behavior]]] = {
    "ok": (40, lambda s, t: _answer(s, t)),
    "slow ok": (5, lambda s, t: _answer(s, t, before=0.3)),
    "500": (4, _status(500)),
    "502": (3, _status(502)),
    "503": (4, _status(503)),
    "504": (2, _status(504)),
    "429 + Retry-After": (4, _status(429, **{"Retry-After": "1"})),
    "408": (2, _status(408)),
    "409": (2, _status(409)),
    "400": (2, _status(400)),
    "reset": (4, lambda s, t: Behavior(reset_now=True)),
    "never answers": (3, lambda s, t: Behavior(hang_now=True)),
    "stall before first byte": (3, lambda s, t: _answer(s, t, before=1.5)),
    "garbage": (3, lambda s, t: _garbage(s)),
    "drip": (2, lambda s, t: _drip(s, t)),
    # Streams only (a plain request gets the plain answer instead).
    "cut, no [DONE]": (4, lambda s, t: _mid(s, t, Behavior(events=_stream_events(t, 2)))),
    "reset mid-stream": (3, lambda s, t: _mid(s, t, _then(t, "reset"))),
    "stall mid-stream": (3, lambda s, t: _mid(s, t, _then(t, "hang"))),
    "error event first": (
        3,
        lambda s, t: _mid(s, t, Behavior(events=[_error_event("chaos first")])),
    ),
    "error event later": (
        3,
        lambda s, t: _mid(
            s, t, Behavior(events=[*_stream_events(t, 2), _error_event("chaos later")])
        ),
    ),
    "malformed line": (
        3,
        lambda s, t: _mid(s, t, Behavior(events=[*_stream_events(t, 1), b"data: {oops\n\n"])),
    ),
}


def _answer(stream: bool, tag: str, *, before: float = 0.0) -> Behavior:
    if stream:
        return Behavior(events=_stream_events(tag), before=before)
    return Behavior(json_body=completion("".join(_pieces(tag))), before=before)


def _garbage(stream: bool) -> Behavior:
    if stream:
        return Behavior(events=[b"data: <html>oops</html>\n\n"])
    return Behavior(raw_body=b"<html>oops</html>", headers={"Content-Type": "text/html"})


def _drip(stream: bool, tag: str) -> Behavior:
    if stream:
        # Every chunk within the idle timeout, the whole past the deadline.
        return Behavior(events=_stream_events(tag), delay=0.8)
    return Behavior(json_body=completion("".join(_pieces(tag))), drip=0.8)


def _then(tag: str, then: str) -> Behavior:
    return Behavior(events=_stream_events(tag, 2, done=False), then=then)


def _mid(stream: bool, tag: str, fault: Behavior) -> Behavior:
    return fault if stream else _answer(stream, tag)


class ChaosUpstream(FakeUpstream):
    """A fake upstream that draws a fault for each chat request from its own seeded RNG."""

    def __init__(self, name: str, *, seed: int) -> None:
        super().__init__()
        self.name = name
        self.rng = random.Random(f"{seed}-{name}")
        self.drawn: Counter[str] = Counter()

    async def _play(self, request: web.Request, b: Behavior) -> web.StreamResponse:
        if not request.path.endswith("/chat/completions"):
            return await super()._play(request, b)
        stream = bool(json.loads(await request.read()).get("stream"))
        names = list(FAULTS)
        fault = self.rng.choices(names, weights=[FAULTS[n][0] for n in names])[0]
        self.drawn[fault] += 1
        tag = f"{self.name}.{len(self.chat_requests)}"
        return await super()._play(request, FAULTS[fault][1](stream, tag))


@dataclass
class Outcomes:
    """What the clients saw."""

    requests: int = 0
    streams: int = 0
    successes: int = 0
    errors: Counter[int] = field(default_factory=Counter)
    in_band_errors: int = 0
    bad: list[str] = field(default_factory=list)
    chunk_problems: list[str] = field(default_factory=list)
    slowest: float = 0.0


def _error_shaped(body: Any) -> bool:
    error = body.get("error") if isinstance(body, dict) else None
    return (
        isinstance(error, dict)
        and set(error) == {"message", "type", "param", "code"}
        and isinstance(error["message"], str)
        and isinstance(error["type"], str)
    )


def _check_content(content: str, *, complete: bool) -> str | None:
    """None when ``content`` is in-order pieces of one upstream answer, else what is wrong."""
    pieces = [p for p in content.split(";") if p]
    tags = {p.rpartition(":")[0] for p in pieces}
    if len(tags) > 1:
        return f"interleaved answers {sorted(tags)}"
    indices = [p.rpartition(":")[2] for p in pieces]
    if indices != [str(i) for i in range(len(pieces))]:
        return f"chunks out of order or twice: {indices}"
    if complete and len(pieces) != PIECES:
        return f"{len(pieces)} of {PIECES} pieces in a complete answer"
    return None


def _judge_plain(status: int, raw: bytes, out: Outcomes) -> str | None:
    try:
        body = json.loads(raw)
    except ValueError:
        return f"{status} with a body that is not JSON: {raw[:200]!r}"
    if status != 200:
        out.errors[status] += 1
        return None if _error_shaped(body) else f"{status} error not OpenAI-shaped: {body}"
    content = body["choices"][0]["message"]["content"]
    problem = _check_content(content, complete=True)
    if problem is None:
        out.successes += 1
        return None
    out.chunk_problems.append(problem)
    return problem


def _judge_stream(status: int, raw: bytes, out: Outcomes) -> str | None:
    if status != 200:
        return _judge_plain(status, raw, out)
    decoder = SSEDecoder()
    events = [e.data for e in decoder.feed(raw) + decoder.close()]
    errors = [i for i, data in enumerate(events) if data.startswith('{"error"')]
    done = [i for i, data in enumerate(events) if data == "[DONE]"]
    chunks = [json.loads(d) for d in events if d != "[DONE]" and not d.startswith('{"error"')]
    content = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    problem = _check_content(content, complete=bool(done))
    if problem is not None:
        out.chunk_problems.append(problem)
        return problem
    if errors:
        if len(errors) != 1 or errors[0] != len(events) - 1 or done:
            return f"error events at {errors}, [DONE] at {done}, of {len(events)} events"
        if not _error_shaped(json.loads(events[errors[0]])):
            return f"in-band error not OpenAI-shaped: {events[errors[0]]}"
        out.in_band_errors += 1
        return None
    if done != [len(events) - 1]:
        return f"a stream that ended without [DONE] or an error ({len(events)} events)"
    out.successes += 1
    return None


async def _one(session: aiohttp.ClientSession, url: str, stream: bool, out: Outcomes) -> None:
    body: dict[str, Any] = {"model": "m1", "messages": [{"role": "user", "content": "hi"}]}
    if stream:
        body["stream"] = True
    started = time.monotonic()
    try:
        async with session.post(url, json=body) as response:
            raw = await response.read()
        problem = (_judge_stream if stream else _judge_plain)(response.status, raw, out)
    except (aiohttp.ClientError, TimeoutError) as exc:
        problem = f"client saw {type(exc).__name__}: {exc}"
    elapsed = time.monotonic() - started
    out.slowest = max(out.slowest, elapsed)
    if elapsed > TOTAL + GRACE:
        problem = problem or f"took {elapsed:.2f} s"
    if problem is not None:
        out.bad.append(f"{'stream' if stream else 'plain'}: {problem}")


async def _clients(base_url: str, out: Outcomes) -> None:
    url = base_url.removesuffix("/v1") + CHAT
    rng = random.Random(SEED)
    loop = asyncio.get_running_loop()
    # Generous: a request slower than the deadline + 1 s is caught by the clock above.
    timeout = aiohttp.ClientTimeout(total=TOTAL + 5)
    async with aiohttp.ClientSession(
        timeout=timeout, connector=aiohttp.TCPConnector(limit=0)
    ) as session:
        start = loop.time()
        tasks = []
        for i in range(int(SECONDS * RATE)):
            await asyncio.sleep(max(0.0, start + i / RATE - loop.time()))
            stream = rng.random() < STREAM_SHARE
            out.streams += stream
            tasks.append(asyncio.create_task(_one(session, url, stream, out)))
        out.requests = len(tasks)
        await asyncio.gather(*tasks)


async def _attempts_by_provider(base_url: str) -> dict[str, int]:
    """Upstream attempts per provider, as the admin API reports them."""
    headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{base_url}/providers", headers=headers) as response,
    ):
        body = await response.json()
    return {p["name"]: p["requests"] for p in body["data"]}


def test_chaos_every_request_ends_well_formed_and_attempts_add_up(figures: Figures) -> None:
    upstreams = [ChaosUpstream(f"u{i}", seed=SEED) for i in (1, 2, 3)]
    out = Outcomes()
    with reliability_gateway(
        upstreams=upstreams, server=ServerConfig(admin_key=SecretStr(ADMIN_KEY))
    ) as live:
        asyncio.run(_clients(live.base_url, out))
        time.sleep(SETTLE)
        counted = asyncio.run(_attempts_by_provider(live.base_url))
        seen = {f"u{i}": len(fake.chat_requests) for i, fake in enumerate(upstreams, 1)}
    drawn = sum((fake.drawn for fake in upstreams), Counter())
    faults = sum(drawn.values()) - drawn["ok"]
    label = f"{SECONDS:g} s at {RATE:g}/s, seed {SEED}"
    errors = sum(out.errors.values()) + out.in_band_errors
    statuses = ", ".join(f"{n}x{code}" for code, n in sorted(out.errors.items()))
    figures.record(
        ROW,
        f"{label}: requests (successes, well-formed errors)",
        f"{out.requests} ({out.successes}, {errors}: {statuses}, {out.in_band_errors} in-band); "
        f"{faults} faults in {sum(drawn.values())} upstream answers",
        passed=out.successes + errors == out.requests,
        target="each a success or one well-formed error",
    )
    figures.record(
        ROW,
        f"{label}: malformed or late outcomes",
        len(out.bad),
        passed=not out.bad,
        target="0",
    )
    figures.record(
        ROW,
        f"{label}: slowest request (s)",
        round(out.slowest, 2),
        passed=out.slowest <= TOTAL + GRACE,
        target=f"<= deadline {TOTAL:g} s + {GRACE:g} s",
    )
    figures.record(
        ROW,
        f"{label}: duplicated or interleaved chunks",
        len(out.chunk_problems),
        passed=not out.chunk_problems,
        target="0",
    )
    figures.record(
        ROW,
        f"{label}: gateway attempts vs upstream requests",
        f"{sum(counted.values())} vs {sum(seen.values())}",
        passed=counted == seen,
        target="equal, per upstream",
    )
    assert not out.bad, out.bad[:10]
    assert out.successes + errors == out.requests
    assert counted == seen, (counted, seen)
    assert faults > 0, drawn
