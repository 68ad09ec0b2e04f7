"""Tenants through a served gateway and the official openai SDK: virtual keys made by the admin
API, their limits and budgets, usage and cost as the upstream reported them."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

import httpx
import openai
import pytest
from pydantic import SecretStr

from leapasgi.config import PriceConfig, RoutingConfig, ServerConfig, TenantsConfig
from tests.asgi.live_server import LiveGateway, Serve, mock_config

ADMIN = "admin-key-0123456789"
HI = [{"role": "user", "content": "hi"}]
# The mock answers "hi" with 1 prompt and 3 completion tokens; at these prices (USD per
# million tokens) that is 0.001 + 0.006 USD.
PRICES = {"mock-chat": PriceConfig(input=1000, output=2000, cached_input=500)}
COST = 0.007


def tenant_gateway(serve: Serve, **options: Any) -> LiveGateway:
    """A gateway over the mock that asks every caller for a key, with an admin key."""
    options.setdefault("server", ServerConfig(admin_key=SecretStr(ADMIN)))
    options.setdefault("tenants", TenantsConfig(require_key=True, flush_interval=0.05))
    return serve(lambda up: [mock_config()], prices=PRICES, **options)


def admin(live: LiveGateway) -> httpx.Client:
    return httpx.Client(
        base_url=live.origin, headers={"authorization": f"Bearer {ADMIN}"}, timeout=10
    )


def make_key(live: LiveGateway, **fields: Any) -> str:
    """A new virtual key's secret, made through the admin API."""
    with admin(live) as http:
        made = http.post("/v1/keys", json=fields)
    assert made.status_code == 201, made.text
    body = made.json()
    assert body["secret"].startswith("lk-")
    return str(body["secret"])


def usage(live: LiveGateway, **query: str) -> dict[str, Any]:
    with admin(live) as http:
        report = http.get("/v1/usage", params=query)
    assert report.status_code == 200, report.text
    result: dict[str, Any] = report.json()
    return result


def test_a_caller_without_a_key_is_refused(serve: Serve) -> None:
    live = tenant_gateway(serve)
    with (
        live.client(api_key="not-a-key") as client,
        pytest.raises(openai.AuthenticationError) as caught,
    ):
        client.chat.completions.create(model="mock-chat", messages=HI)
    assert caught.value.status_code == 401
    with live.client(api_key="lk-" + "x" * 43) as client, pytest.raises(openai.AuthenticationError):
        client.chat.completions.create(model="mock-chat", messages=HI)


def test_every_answer_is_accounted_at_the_upstreams_usage_times_the_price(serve: Serve) -> None:
    live = tenant_gateway(serve)
    secret = make_key(live, tenant="team-a", name="ci")
    with live.client(api_key=secret) as client:
        _accounted(live, client)


def _accounted(live: LiveGateway, client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(model="mock-chat", messages=HI)
    completion = raw.parse()
    assert completion.usage is not None
    reported = (completion.usage.prompt_tokens, completion.usage.completion_tokens)
    assert reported == (1, 3)
    assert float(raw.headers["x-leap-cost-usd"]) == pytest.approx(COST)
    # A stream whose client did not ask for usage: none in its stream, yet accounted.
    chunks = list(client.chat.completions.create(model="mock-chat", messages=HI, stream=True))
    assert all(chunk.usage is None for chunk in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    # One that asked: its usage chunk, as OpenAI sends it.
    asked = list(
        client.chat.completions.create(
            model="mock-chat",
            messages=HI,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert asked[-1].usage is not None
    assert (asked[-1].usage.prompt_tokens, asked[-1].usage.completion_tokens) == reported
    report = _eventually(live, requests=3, group_by="tenant,model")
    (row,) = report["data"]
    assert (row["tenant"], row["model"]) == ("team-a", "mock-chat")
    assert (row["prompt_tokens"], row["completion_tokens"]) == (3, 9)
    assert row["cost_usd"] == pytest.approx(3 * COST)
    assert row["errors"] == 0
    assert row["estimated"] == 0


def _eventually(live: LiveGateway, *, requests: int, **query: str) -> dict[str, Any]:
    """The usage report once it counts ``requests`` (requests are accounted as they end)."""
    deadline = time.monotonic() + 10
    while True:
        report = usage(live, **query)
        if report["total"]["requests"] >= requests or time.monotonic() > deadline:
            return report
        time.sleep(0.02)


def test_a_revoked_key_is_refused_at_once(serve: Serve) -> None:
    live = tenant_gateway(serve)
    with admin(live) as http, live.client(api_key=make_key(live)) as other:
        made = http.post("/v1/keys", json={"tenant": "team-b"}).json()
        with live.client(api_key=made["secret"]) as client:
            client.chat.completions.create(model="mock-chat", messages=HI)
            assert http.post(f"/v1/keys/{made['id']}/revoke").status_code == 200
            with pytest.raises(openai.AuthenticationError) as caught:
                client.chat.completions.create(model="mock-chat", messages=HI)
        other.chat.completions.create(model="mock-chat", messages=HI)  # others go on
    assert caught.value.code == "key_revoked"
    assert made["secret"] not in caught.value.response.text


def test_a_key_may_use_only_its_models(serve: Serve) -> None:
    live = tenant_gateway(serve)
    secret = make_key(live, models=["some-other-model"])
    with live.client(api_key=secret) as client:
        with pytest.raises(openai.PermissionDeniedError) as caught:
            client.chat.completions.create(model="mock-chat", messages=HI)
        assert caught.value.code == "model_not_allowed"
        assert [m.id for m in client.models.list()] == []
    with live.client(api_key=make_key(live, models=["mock-chat"])) as allowed:
        assert [m.id for m in allowed.models.list()] == ["mock-chat"]


def test_a_keys_requests_per_minute_are_limited(serve: Serve) -> None:
    live = tenant_gateway(serve)
    with live.client(api_key=make_key(live, rpm=2)) as client:
        for _ in range(2):
            client.chat.completions.create(model="mock-chat", messages=HI)
        with pytest.raises(openai.RateLimitError) as caught:
            client.chat.completions.create(model="mock-chat", messages=HI)
    assert caught.value.code == "tenant_rate_limit_exceeded"
    assert int(caught.value.response.headers["retry-after"]) >= 1
    with live.client(api_key=make_key(live, rpm=2)) as other:  # its own minute
        other.chat.completions.create(model="mock-chat", messages=HI)


def test_a_keys_requests_in_flight_are_limited(serve: Serve) -> None:
    live = tenant_gateway(serve)
    live.mock().chunk_delay = 1.0  # the two streams stay open while the third is refused
    with live.client(api_key=make_key(live, max_in_flight=2)) as client:
        _limited_in_flight(live, client)


def _limited_in_flight(live: LiveGateway, client: openai.OpenAI) -> None:
    streams = [
        client.chat.completions.create(model="mock-chat", messages=HI, stream=True)
        for _ in range(2)
    ]
    for stream in streams:
        next(iter(stream))  # both under way
    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(model="mock-chat", messages=HI)
    assert caught.value.code == "tenant_concurrency_exceeded"
    for stream in streams:
        stream.close()
    live.mock().chunk_delay = 0.0
    deadline = time.monotonic() + 10
    while True:  # the closed streams give their slots back as the gateway notices
        try:
            client.chat.completions.create(model="mock-chat", messages=HI)
            break
        except openai.RateLimitError:
            assert time.monotonic() < deadline
            time.sleep(0.02)


async def _race(live: LiveGateway, secret: str, count: int) -> Counter[str]:
    """``count`` requests at once; what each ended with."""
    client = live.async_client(api_key=secret, timeout=30)

    async def one() -> str:
        try:
            await client.chat.completions.create(model="mock-chat", messages=HI, max_tokens=5)
        except openai.RateLimitError as error:
            return f"{error.code}" if "budget" in error.message else f"other {error.message}"
        return "ok"

    try:
        return Counter(await asyncio.gather(*(one() for _ in range(count))))
    finally:
        await client.close()


def test_a_budget_for_ten_requests_serves_at_most_eleven_of_a_hundred_at_once(
    serve: Serve,
) -> None:
    live = tenant_gateway(serve)
    secret = make_key(live, budget={"usd": 10 * COST, "period": "day"})
    ended = asyncio.run(_race(live, secret, 100))
    assert 10 <= ended["ok"] <= 11, ended
    assert ended["budget_exceeded"] == 100 - ended["ok"], ended
    report = _eventually(live, requests=ended["ok"], group_by="tenant")
    assert report["total"]["cost_usd"] <= 11 * COST + 1e-9
    # Spent: every later request is refused at once, with the reason.
    with live.client(api_key=secret) as client, pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(model="mock-chat", messages=HI)
    assert caught.value.code == "budget_exceeded"
    assert "budget" in caught.value.message
    assert int(caught.value.response.headers["retry-after"]) >= 1
    assert caught.value.response.headers["x-should-retry"] == "false"  # not before midnight


def test_cancelled_streams_give_their_reservation_back(serve: Serve) -> None:
    # Each request reserves up to 1,000 completion tokens (2 USD); the budget holds three such
    # reservations. Thirty streams left after their first chunk must leave nothing reserved:
    # ten more requests still go, none waits out its deadline or gets a phantom 429.
    live = tenant_gateway(serve, routing=RoutingConfig(request_timeout=5))
    live.mock().chunk_delay = 0.05
    secret = make_key(live, budget={"usd": 6.1, "period": "day"})
    with live.client(api_key=secret) as client:
        _cancel_and_go_on(live, client)


def _cancel_and_go_on(live: LiveGateway, client: openai.OpenAI) -> None:
    for _ in range(30):
        stream = client.chat.completions.create(
            model="mock-chat", messages=HI, stream=True, max_tokens=1000
        )
        next(iter(stream))
        stream.close()
    live.mock().chunk_delay = 0.0
    for _ in range(10):
        client.chat.completions.create(model="mock-chat", messages=HI, max_tokens=1000)
    report = _eventually(live, requests=40, group_by="tenant")
    assert report["total"]["cost_usd"] < 1.0
