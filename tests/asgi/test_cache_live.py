"""The response cache over real HTTP, with the official SDKs: hits replay what the miss sent
(JSON, and streams of every protocol, read to their end), per tenant; the request's own say;
only whole successes are kept; identical misses at once make one upstream call, counted at the
upstream; admin invalidation; the cache's metrics."""

from __future__ import annotations

import asyncio
import re
import threading
import time
from collections.abc import Sequence
from typing import Any

import anthropic
import httpx
import pytest
from aiohttp import web
from pydantic import SecretStr

from leapasgi.config import CacheConfig, ProviderConfig, ServerConfig
from tests.asgi.live_server import LiveGateway, Serve, upstream_config
from tests.asgi.messages_support import native as native_messages
from tests.asgi.responses_support import native_upstreams
from tests.fake_responses import text_stream as responses_stream
from tests.fake_upstream import (
    Behavior,
    FakeUpstream,
    anthropic_stream,
    completion,
    error_body,
    text_stream,
)

HI: Any = [{"role": "user", "content": "hi there"}]
KEY_HEADER = re.compile(r"[0-9a-f]{64}")
ADMIN = "sk-admin-0123456789"
# How long a test waits for the gateway to reach a state it is about to reach.
SETTLE = 10.0


def every_model(**options: Any) -> CacheConfig:
    options.setdefault("models", ["*"])
    return CacheConfig(enabled=True, **options)


def chat_upstream(upstreams: Sequence[FakeUpstream]) -> list[ProviderConfig]:
    """One chat upstream serving ``m1`` and ``m2``, tried once."""
    return [upstream_config("up", upstreams[0], models=["m1", "m2"], max_retries=0)]


def results(*responses: httpx.Response | Any) -> list[str]:
    return [r.headers["x-leap-cache"] for r in responses]


class GatedUpstream(FakeUpstream):
    """A fake upstream that holds every request until ``gate`` is set (from any thread)."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.gate = threading.Event()

    async def _play(self, request: web.Request, b: Behavior) -> web.StreamResponse:
        while not self.gate.is_set():  # noqa: ASYNC110 (set from the test's thread)
            await asyncio.sleep(0.005)
        return await super()._play(request, b)


async def settled(live: LiveGateway, upstream: FakeUpstream, *, calls: int, waiting: int) -> None:
    """Wait until ``upstream`` has seen ``calls`` requests and ``waiting`` requests wait for an
    identical one's answer."""
    cache = live.gateway.cache
    assert cache is not None
    until = time.monotonic() + SETTLE
    while len(upstream.seen) < calls or cache.stats.coalesced < waiting:
        assert time.monotonic() < until, (len(upstream.seen), cache.stats.coalesced)
        await asyncio.sleep(0.01)


# Hits replay what the miss sent


def test_a_chat_answer_comes_again_from_the_cache(serve: Serve) -> None:
    fake = FakeUpstream(default=Behavior(json_body=completion("cached!")))
    live = serve(chat_upstream, upstreams=[fake], cache=every_model())
    with live.client(_strict_response_validation=True) as client:
        first = client.chat.completions.with_raw_response.create(model="m1", messages=HI)
        second = client.chat.completions.with_raw_response.create(model="m1", messages=HI)
        answer = second.parse()
    assert results(first, second) == ["miss", "hit"]
    assert len(fake.chat_requests) == 1
    assert answer.choices[0].message.content == "cached!"
    assert second.http_response.content == first.http_response.content
    assert second.headers["content-type"] == "application/json"
    assert KEY_HEADER.fullmatch(second.headers["x-leap-cache-key"])
    assert second.headers["x-leap-cache-key"] == first.headers["x-leap-cache-key"]
    assert int(second.headers["age"]) >= 0
    assert second.headers["x-request-id"].startswith("req_")
    assert second.headers["x-request-id"] != first.headers["x-request-id"]
    assert "x-leap-provider" not in second.headers
    recorded = live.requests_recorded(2)
    assert [(r["model"], r["status"]) for r in recorded] == [("m1", "200")] * 2
    assert sorted(r["provider"] for r in recorded) == ["none", "up"]


def test_a_streamed_chat_answer_is_replayed_as_the_same_stream(serve: Serve) -> None:
    fake = FakeUpstream(default=Behavior(events=text_stream(["Hel", "lo", "!"])))
    live = serve(chat_upstream, upstreams=[fake], cache=every_model())
    wires, texts = [], []
    with live.client() as client:
        for _ in range(2):
            with client.chat.completions.with_streaming_response.create(
                model="m1", messages=HI, stream=True
            ) as response:
                wires.append((response.headers["x-leap-cache"], response.read()))
        stream = client.chat.completions.create(model="m1", messages=HI, stream=True)
        texts = [c.choices[0].delta.content or "" for c in stream if c.choices]
    (missed, first), (hit, second) = wires
    assert (missed, hit) == ("miss", "hit")
    assert second == first
    assert second.endswith(b"data: [DONE]\n\n")
    assert "".join(texts) == "Hello!"
    assert len(fake.chat_requests) == 1


def test_a_responses_stream_is_replayed_to_its_completion(serve: Serve) -> None:
    fake = FakeUpstream(default=Behavior(events=responses_stream(["Hi", " there"])))
    live = serve(native_upstreams, upstreams=[fake], cache=every_model())
    runs = []
    with live.client() as client:
        for _ in range(2):
            with client.responses.create(model="m1", input="hi", stream=True) as stream:
                events = list(stream)
                runs.append((stream.response.headers["x-leap-cache"], events))
    (missed, first), (hit, second) = runs
    assert (missed, hit) == ("miss", "hit")
    assert [e.type for e in second] == [e.type for e in first]
    assert second[-1].type == "response.completed"
    assert second[-1].response.output_text == "Hi there"
    assert len(fake.seen) == 1


@pytest.mark.anyio
async def test_a_messages_stream_is_replayed_to_its_stop(serve: Serve) -> None:
    fake = FakeUpstream(default=Behavior(events=anthropic_stream(["Hel", "lo"])))
    live = serve(lambda ups: [native_messages("up", ups[0])], upstreams=[fake], cache=every_model())
    runs = []
    async with live.anthropic_client() as client:
        for _ in range(2):
            async with client.messages.stream(model="m1", max_tokens=64, messages=HI) as stream:
                text = [piece async for piece in stream.text_stream]
                final = await stream.get_final_message()
                headers = stream.response.headers
                request_id = stream.request_id
            runs.append((headers["x-leap-cache"], request_id, text, final))
    (missed, _, first_text, first), (hit, request_id, text, final) = runs
    assert (missed, hit) == ("miss", "hit")
    assert request_id is not None
    assert request_id.startswith("req_")
    assert text == first_text == ["Hel", "lo"]
    assert final == first
    assert final.stop_reason == "end_turn"
    assert len(fake.messages_requests) == 1


# Whose, and the request's say


def test_tenants_do_not_share_answers_unless_global(serve: Serve) -> None:
    fake = FakeUpstream()
    keys = ServerConfig(api_keys=[SecretStr("k1"), SecretStr("k2")])
    tenant = serve(chat_upstream, upstreams=[fake], cache=every_model(), server=keys)
    body = {"model": "m1", "messages": HI}
    with httpx.Client(base_url=tenant.base_url) as http:
        asked = [
            http.post("/chat/completions", json=body, headers={"Authorization": f"Bearer {k}"})
            for k in ("k1", "k1", "k2", "k2")
        ]
    assert results(*asked) == ["miss", "hit", "miss", "hit"]
    assert len(fake.chat_requests) == 2
    other = FakeUpstream()
    shared = serve(chat_upstream, upstreams=[other], cache=every_model(scope="global"), server=keys)
    with httpx.Client(base_url=shared.base_url) as http:
        asked = [
            http.post("/chat/completions", json=body, headers={"Authorization": f"Bearer {k}"})
            for k in ("k1", "k2")
        ]
    assert results(*asked) == ["miss", "hit"]
    assert len(other.chat_requests) == 1


def test_the_request_has_its_say(serve: Serve) -> None:
    fake = FakeUpstream()
    fake.push(*(Behavior(json_body=completion(text)) for text in ("one", "two", "three")))
    live = serve(chat_upstream, upstreams=[fake], cache=every_model(models=["m1"]))
    body = {"model": "m1", "messages": HI}

    def ask(**headers: str) -> tuple[str, str]:
        answer = http.post("/chat/completions", json=body, headers=headers)
        assert answer.status_code == 200
        return answer.headers["x-leap-cache"], answer.json()["choices"][0]["message"]["content"]

    with httpx.Client(base_url=live.base_url) as http:
        assert ask() == ("miss", "one")
        assert ask(**{"Cache-Control": "no-cache"}) == ("miss", "two")  # fresh, and kept
        assert ask() == ("hit", "two")
        assert ask(**{"Cache-Control": "no-store"}) == ("bypass", "three")  # neither
        assert ask() == ("hit", "two")
        assert ask(**{"x-leap-cache": "off"})[0] == "bypass"
        assert len(fake.chat_requests) == 4
        body["model"] = "m2"  # not one the config names
        assert [ask()[0], ask()[0]] == ["bypass", "bypass"]
        assert [ask(**{"x-leap-cache": "on"})[0], ask(**{"x-leap-cache": "on"})[0]] == [
            "miss",
            "hit",
        ]
    assert len(fake.chat_requests) == 7


# Only whole successes are kept


def test_errors_are_never_kept(serve: Serve) -> None:
    fake = FakeUpstream()
    fake.push(
        Behavior(status=500, json_body=error_body("down", type="server_error")),
        Behavior(status=400, json_body=error_body("bad request")),
    )
    live = serve(chat_upstream, upstreams=[fake], cache=every_model())
    body = {"model": "m1", "messages": HI}
    with httpx.Client(base_url=live.base_url) as http:
        asked = [http.post("/chat/completions", json=body) for _ in range(4)]
    assert [a.status_code >= 500 for a in asked] == [True, False, False, False]
    assert [a.status_code for a in asked[1:]] == [400, 200, 200]
    assert results(*asked) == ["miss", "miss", "miss", "hit"]
    assert "x-leap-cache-key" not in asked[0].headers
    assert len(fake.chat_requests) == 3


@pytest.mark.anyio
async def test_errors_keep_their_protocols_shape(serve: Serve) -> None:
    fake = FakeUpstream()
    fake.push(Behavior(status=400, json_body=error_body("bad request")))
    live = serve(chat_upstream, upstreams=[fake], cache=every_model())
    async with live.anthropic_client() as client:
        with pytest.raises(anthropic.BadRequestError) as refused:
            await client.messages.create(model="m1", max_tokens=64, messages=HI)
        answer = await client.messages.with_raw_response.create(
            model="m1", max_tokens=64, messages=HI
        )
    assert refused.value.response.headers["x-leap-cache"] == "miss"
    body = refused.value.body
    assert isinstance(body, dict)
    assert body["type"] == "error"
    assert answer.headers["x-leap-cache"] == "miss"
    assert len(fake.chat_requests) == 2


def test_a_stream_cut_short_is_not_kept(serve: Serve) -> None:
    cut = text_stream(["Hel", "lo"], done=False, finish=False)
    fake = FakeUpstream(default=Behavior(events=text_stream(["whole"])))
    fake.push(Behavior(events=cut, then="reset"))
    live = serve(chat_upstream, upstreams=[fake], cache=every_model())
    body = {"model": "m1", "messages": HI, "stream": True}
    with httpx.Client(base_url=live.base_url) as http:
        asked = [http.post("/chat/completions", json=body) for _ in range(3)]
    assert [a.status_code for a in asked] == [200, 200, 200]
    assert b'"error"' in asked[0].content
    assert not asked[0].content.endswith(b"data: [DONE]\n\n")
    assert results(*asked) == ["miss", "miss", "hit"]
    assert asked[2].content == asked[1].content
    assert len(fake.chat_requests) == 2


def test_an_answer_over_the_entry_size_is_not_kept(serve: Serve) -> None:
    fake = FakeUpstream(default=Behavior(json_body=completion("x" * 2000)))
    live = serve(chat_upstream, upstreams=[fake], cache=every_model(max_entry_bytes=1024))
    body = {"model": "m1", "messages": HI}
    with httpx.Client(base_url=live.origin) as http:
        asked = [http.post("/v1/chat/completions", json=body) for _ in range(2)]
        metrics = http.get("/metrics").text
    assert results(*asked) == ["miss", "miss"]
    assert len(fake.chat_requests) == 2
    assert "leap_cache_too_large_total 2" in metrics
    assert "leap_cache_entries 0" in metrics


# Coalescing


@pytest.mark.anyio
async def test_thirty_identical_misses_make_one_upstream_call(serve: Serve) -> None:
    fake = GatedUpstream(default=Behavior(json_body=completion("once")))
    live = serve(chat_upstream, upstreams=[fake], cache=every_model())
    async with live.async_client() as client:
        asked = [
            asyncio.create_task(
                client.chat.completions.with_raw_response.create(model="m1", messages=HI)
            )
            for _ in range(30)
        ]
        await settled(live, fake, calls=1, waiting=29)
        fake.gate.set()
        answers = await asyncio.gather(*asked)
    assert len(fake.seen) == 1
    assert sorted(results(*answers)) == ["hit"] * 29 + ["miss"]
    assert {a.parse().choices[0].message.content for a in answers} == {"once"}
    assert len({a.headers["x-request-id"] for a in answers}) == 30


@pytest.mark.anyio
async def test_a_failing_leader_releases_its_followers(serve: Serve) -> None:
    fake = GatedUpstream()
    fake.push(Behavior(status=500, json_body=error_body("down", type="server_error")))
    live = serve(chat_upstream, upstreams=[fake], cache=every_model())
    body = {"model": "m1", "messages": HI}
    async with httpx.AsyncClient(base_url=live.base_url) as http:
        asked = [asyncio.create_task(http.post("/chat/completions", json=body)) for _ in range(5)]
        await settled(live, fake, calls=1, waiting=4)
        fake.gate.set()
        answers = await asyncio.gather(*asked)
    assert sorted(a.status_code >= 500 for a in answers) == [False] * 4 + [True]
    assert results(*answers) == ["miss"] * 5
    assert len(fake.chat_requests) == 5


# Admin and metrics


def test_admin_forgets_one_entry_or_all(serve: Serve) -> None:
    fake = FakeUpstream()
    server = ServerConfig(api_keys=[SecretStr("k1")], admin_key=SecretStr(ADMIN))
    live = serve(chat_upstream, upstreams=[fake], cache=every_model(), server=server)
    user, admin = {"Authorization": "Bearer k1"}, {"Authorization": f"Bearer {ADMIN}"}

    def ask(text: str) -> httpx.Response:
        body = {"model": "m1", "messages": [{"role": "user", "content": text}]}
        return http.post("/v1/chat/completions", json=body, headers=user)

    with httpx.Client(base_url=live.origin) as http:
        key = ask("a").headers["x-leap-cache-key"]
        ask("b")
        assert http.delete(f"/v1/cache/{key}", headers=user).status_code == 403
        assert http.delete(f"/v1/cache/{key}").status_code == 401
        assert http.delete("/v1/cache", headers=user).status_code == 403
        malformed = http.delete("/v1/cache/not-a-key", headers=admin)
        assert malformed.status_code == 400
        assert malformed.json()["error"]["param"] == "key"
        forgot = http.delete(f"/v1/cache/{key}", headers=admin)
        assert forgot.json() == {"deleted": 1}
        assert http.delete(f"/v1/cache/{key}", headers=admin).json() == {"deleted": 0}
        assert results(ask("a"), ask("b")) == ["miss", "hit"]
        assert http.delete("/v1/cache", headers=admin).json() == {"deleted": 2}
        assert results(ask("a"), ask("b")) == ["miss", "miss"]
        document = http.get("/openapi.json", headers=user).json()
    assert {"/v1/cache", "/v1/cache/{key}"} <= set(document["paths"])
    assert len(fake.chat_requests) == 5


def test_the_cache_shows_on_metrics(serve: Serve) -> None:
    fake = FakeUpstream()
    live = serve(chat_upstream, upstreams=[fake], cache=every_model(models=["m1"]))
    with httpx.Client(base_url=live.origin) as http:
        for model in ("m1", "m1", "m2"):
            body = {"model": model, "messages": HI}
            assert http.post("/v1/chat/completions", json=body).status_code == 200
        live.requests_recorded(3)
        metrics = http.get("/metrics").text
    for line in (
        'leap_cache_requests_total{result="bypass"} 1',
        'leap_cache_requests_total{result="hit"} 1',
        'leap_cache_requests_total{result="miss"} 1',
        "leap_cache_stores_total 1",
        "leap_cache_coalesced_total 0",
        "leap_cache_too_large_total 0",
        "leap_cache_store_errors_total 0",
        "leap_cache_entries 1",
    ):
        assert line in metrics.splitlines(), line
    [size] = re.findall(r"^leap_cache_bytes (\d+)$", metrics, re.M)
    assert int(size) > 0
