"""One id follows a request: every response carries ``x-request-id`` (the upstream's when it
sent a valid one, else the gateway's own), and the access log line names the same id."""

from __future__ import annotations

import logging
import re
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from leapasgi import Gateway, LeapError, parse_chat_request
from leapasgi.config import GatewayConfig, HealthConfig, ProviderConfig, ServerConfig
from tests.fake_upstream import Behavior, FakeUpstream, completion, error_body, text_stream

pytestmark = pytest.mark.anyio

CHAT = "/v1/chat/completions"
BODY: dict[str, Any] = {"model": "m1", "messages": [{"role": "user", "content": "hi"}]}
OWN = re.compile(r"req_[0-9a-f]{24}")


def gateway(upstream: FakeUpstream, **server: Any) -> Gateway:
    provider = ProviderConfig(
        name="up", base_url=upstream.base_url, api_key="up-key", models=["m1"], max_retries=0
    )
    config = GatewayConfig(
        providers=[provider], health=HealthConfig(interval=0), server=ServerConfig(**server)
    )
    return Gateway(config=config)


async def post(gw: Gateway, body: dict[str, Any], **headers: str) -> httpx.Response:
    transport = httpx.ASGITransport(app=gw.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
        return await client.post(CHAT, json=body, headers=headers)


def logged_id(line: str) -> str:
    return line.rsplit(" id=", 1)[1].split(" ", 1)[0]


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
async def test_the_upstreams_request_id_is_passed_on(
    upstream: FakeUpstream, stream: bool, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="leapasgi.access")
    answer = (
        Behavior(events=text_stream(["hi"])) if stream else Behavior(json_body=completion("hi"))
    )
    answer.headers["x-request-id"] = "req_upstream-42.a:b"
    upstream.push(answer)
    async with gateway(upstream) as gw:
        response = await post(gw, {**BODY, "stream": stream})
    (line,) = [r.getMessage() for r in caplog.records if r.name == "leapasgi.access"]
    assert response.status_code == 200
    assert response.headers["x-request-id"] == "req_upstream-42.a:b"
    assert logged_id(line) == "req_upstream-42.a:b"


@pytest.mark.parametrize(
    "sent",
    ["has spaces in it", "x" * 200, "<script>", "req\u00e9", ""],
    ids=["spaces", "too long", "markup", "non-ascii", "empty"],
)
async def test_an_unsafe_upstream_id_is_replaced_by_the_gateways_own(
    upstream: FakeUpstream, sent: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="leapasgi.access")
    upstream.push(Behavior(json_body=completion("hi"), headers={"x-request-id": sent}))
    async with gateway(upstream) as gw:
        response = await post(gw, BODY)
    (line,) = [r.getMessage() for r in caplog.records if r.name == "leapasgi.access"]
    rid = response.headers["x-request-id"]
    assert OWN.fullmatch(rid)
    assert logged_id(line) == rid


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
async def test_without_an_upstream_id_every_answer_has_the_gateways_own(
    upstream: FakeUpstream, stream: bool, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="leapasgi.access")
    upstream.push(
        Behavior(events=text_stream(["hi"])) if stream else Behavior(json_body=completion("hi")),
        Behavior(status=500, json_body=error_body("boom", type="server_error")),
    )
    async with gateway(upstream, api_keys=[SecretStr("client-key")]) as gw:
        key = {"Authorization": "Bearer client-key"}
        responses = [
            await post(gw, {**BODY, "stream": stream}, **key),
            await post(gw, {**BODY, "stream": stream}, **key),  # the upstream's 500
            await post(gw, {**BODY, "model": "nope"}, **key),  # 404
            await post(gw, BODY),  # 401, no key
            await post(gw, {"model": 5}, **key),  # 400
        ]
    lines = [r.getMessage() for r in caplog.records if r.name == "leapasgi.access"]
    assert [r.status_code for r in responses] == [200, 500, 404, 401, 400]
    ids = [r.headers["x-request-id"] for r in responses]
    assert all(OWN.fullmatch(rid) for rid in ids)
    assert len(set(ids)) == len(ids)
    assert [logged_id(line) for line in lines] == ids


async def test_an_error_carrying_the_upstreams_id_passes_it_on(upstream: FakeUpstream) -> None:
    failed = Behavior(
        status=400, json_body=error_body("bad request"), headers={"x-request-id": "req_err_7"}
    )
    upstream.push(failed)
    async with gateway(upstream) as gw:
        response = await post(gw, BODY)
    assert response.status_code == 400
    assert response.headers["x-request-id"] == "req_err_7"


async def test_the_trail_carries_the_id(upstream: FakeUpstream) -> None:
    upstream.push(
        Behavior(json_body=completion("hi"), headers={"x-request-id": "req_trail"}),
        Behavior(status=503, json_body=error_body("busy", type="server_error")),
    )
    async with gateway(upstream) as gw:
        _, trail = await gw.manager.chat_with_trail(parse_chat_request(BODY))
        with pytest.raises(LeapError) as caught:
            await gw.manager.chat(parse_chat_request(BODY))
    assert trail.request_id == "req_trail"
    failed = caught.value.trail
    assert failed is not None
    assert failed.request_id is not None
    assert OWN.fullmatch(failed.request_id)
