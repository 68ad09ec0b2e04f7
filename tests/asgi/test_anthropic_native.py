"""Messages passed through to upstreams that speak them, through the official anthropic SDK,
live: the client's body as sent, the provider's key, the allow-listed headers, native token
counts; failover before the first content event, none after it."""

from __future__ import annotations

import json
from typing import Any

import anthropic
import pytest

from tests.asgi.live_server import Serve, fast_routing
from tests.asgi.messages_support import (
    HI,
    OVERLOADED_STREAM,
    assert_anthropic_error,
    native,
    text_of,
    translated,
)
from tests.asgi.sdk_wire import acollect_until_error
from tests.fake_upstream import (
    Behavior,
    FakeUpstream,
    anthropic_error,
    anthropic_message,
    anthropic_stream,
    chunk,
    error_body,
    sse,
    text_stream,
)

pytestmark = pytest.mark.anyio

# What a native Messages upstream may receive: the gateway's own headers, aiohttp's, and the
# protocol's allow-list (anthropic-version, anthropic-beta); nothing else of the client's.
UPSTREAM_HEADERS = frozenset(
    {
        "host",
        "accept",
        "accept-encoding",
        "content-length",
        "content-type",
        "user-agent",
        "authorization",
        "x-api-key",
        "anthropic-version",
        "anthropic-beta",
    }
)
CLIENT_HEADERS = {
    "anthropic-version": "2023-06-01",
    "anthropic-beta": "fancy-feature-2099-01-01,another-beta-2099-02-02",
    "x-app": "cli",
    "X-Claude-Code-Session-Id": "session-123",
    "anthropic-dangerous-direct-browser-access": "true",
    "Cookie": "session=secret",
    "X-Forwarded-For": "10.0.0.1",
}
RICH_BODY: Any = {
    "model": "m1",
    "max_tokens": 2048,
    "system": [{"type": "text", "text": "sys", "cache_control": {"type": "ephemeral"}}],
    "messages": [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "hi", "cache_control": {"type": "ephemeral", "ttl": "1h"}}
            ],
        }
    ],
    "thinking": {"type": "enabled", "budget_tokens": 1024},
    "metadata": {"user_id": "user-42"},
}
UNKNOWN_FIELDS = {"brand_new_field": {"nested": [1, 2, 3]}, "service_tier": "auto"}


def assert_native_request(seen: Any, body: Any) -> None:
    """What a native upstream must receive: the body unchanged, the provider's key, the
    client's anthropic-version and anthropic-beta, and no other header of the client's."""
    assert seen.path == "/v1/messages"
    assert seen.json == body
    headers = {name.lower(): value for name, value in seen.headers.items()}
    assert set(headers) <= UPSTREAM_HEADERS, set(headers) - UPSTREAM_HEADERS
    assert headers["x-api-key"] == "up-key"
    assert headers.get("authorization", "Bearer up-key") == "Bearer up-key"
    assert headers["anthropic-beta"] == CLIENT_HEADERS["anthropic-beta"]
    assert headers["anthropic-version"] == "2023-06-01"
    assert headers["user-agent"].startswith("leapasgi/")
    assert not any("client-key" in value for value in headers.values())


async def test_native_pass_through(serve: Serve) -> None:
    answer = anthropic_message(
        content=[
            {"type": "thinking", "thinking": "hmm", "signature": "sig"},
            {"type": "text", "text": "from upstream"},
        ],
        input_tokens=11,
        output_tokens=3,
    )
    raw_answer = json.dumps(answer, separators=(",", ":")).encode()
    fake = FakeUpstream(default=Behavior(raw_body=raw_answer, headers={"x-request-id": "up_1"}))
    live = serve(lambda ups: [native("up", ups[0])], upstreams=[fake])
    async with live.anthropic_client(
        api_key="client-key", default_headers=CLIENT_HEADERS
    ) as client:
        raw = await client.messages.with_raw_response.create(
            **RICH_BODY, extra_body=UNKNOWN_FIELDS, extra_query={"beta": "true"}
        )
        message = await raw.parse()
    [seen] = fake.seen
    assert_native_request(seen, {**RICH_BODY, **UNKNOWN_FIELDS})
    assert raw.http_response.content == raw_answer
    assert raw.headers["x-leap-provider"] == "up"
    assert raw.headers["request-id"] == raw.headers["x-request-id"] == "up_1"
    assert [block.type for block in message.content] == ["thinking", "text"]
    assert message.id == "msg_fake"
    assert message.usage.input_tokens == 11


async def test_native_stream_pass_through(serve: Serve) -> None:
    events = anthropic_stream(["Hel", "lo"])
    fake = FakeUpstream(default=Behavior(events=events))
    live = serve(lambda ups: [native("up", ups[0])], upstreams=[fake])
    async with live.anthropic_client(
        api_key="client-key", default_headers=CLIENT_HEADERS
    ) as client:
        async with client.messages.with_streaming_response.create(
            **RICH_BODY, stream=True, extra_body=UNKNOWN_FIELDS
        ) as response:
            wire = b"".join([part async for part in response.http_response.aiter_bytes()])
            headers = response.headers
        async with client.messages.stream(**RICH_BODY, extra_body=UNKNOWN_FIELDS) as stream:
            pieces = [piece async for piece in stream.text_stream]
            final = await stream.get_final_message()
    assert headers["content-type"].startswith("text/event-stream")
    assert headers["x-leap-provider"] == "up"
    assert wire == b"".join(events)
    assert len(fake.messages_requests) == len(fake.seen) == 2
    for seen in fake.seen:
        assert_native_request(seen, {**RICH_BODY, **UNKNOWN_FIELDS, "stream": True})
        assert seen.headers["Accept"] == "text/event-stream"
    assert pieces == ["Hel", "lo"]
    assert final.id == "msg_fake"
    assert final.content[0].type == "text"
    assert final.content[0].text == "Hello"
    assert final.stop_reason == "end_turn"


async def test_native_count_tokens(serve: Serve) -> None:
    fake = FakeUpstream(default=Behavior(json_body={"input_tokens": 321}))
    live = serve(lambda ups: [native("up", ups[0])], upstreams=[fake])
    async with live.anthropic_client(
        api_key="client-key", default_headers=CLIENT_HEADERS
    ) as client:
        raw = await client.messages.with_raw_response.count_tokens(model="m1", messages=HI)
        count = await raw.parse()
    assert count.input_tokens == 321
    assert "x-leap-estimate" not in raw.headers
    [seen] = fake.seen
    assert seen.path == "/v1/messages/count_tokens"
    assert seen.json == {"model": "m1", "messages": HI}
    assert seen.headers["x-api-key"] == "up-key"


async def test_count_tokens_estimated_when_the_native_count_fails(serve: Serve) -> None:
    fake = FakeUpstream(
        default=Behavior(status=404, json_body=anthropic_error("no", type="not_found_error"))
    )
    live = serve(lambda ups: [native("up", ups[0])], upstreams=[fake])
    async with live.anthropic_client() as client:
        raw = await client.messages.with_raw_response.count_tokens(model="m1", messages=HI)
        count = await raw.parse()
    assert raw.headers["x-leap-estimate"] == "true"
    assert raw.http_response.json()["estimated"] is True
    assert count.input_tokens >= 1
    assert [seen.path for seen in fake.seen] == ["/v1/messages/count_tokens"]


# Failover before the first content event; no failover after it.

OVERLOADED_529 = Behavior(
    status=529, json_body=anthropic_error("Overloaded", type="overloaded_error")
)


# How the first provider fails before any content: (its path, what it answers).
FAILS_BEFORE_CONTENT = [
    pytest.param("native", Behavior(events=OVERLOADED_STREAM), id="native-error-event"),
    pytest.param("native", OVERLOADED_529, id="native-529"),
    pytest.param("native", Behavior(events=OVERLOADED_STREAM[:2]), id="native-start-then-eof"),
    pytest.param(
        "translated",
        Behavior(
            events=sse(
                chunk({"role": "assistant", "content": ""}),
                error_body("busy", type="server_error", code="overloaded"),
                done=False,
            )
        ),
        id="translated-role-then-error",
    ),
]


@pytest.mark.parametrize(("first_path", "first"), FAILS_BEFORE_CONTENT)
@pytest.mark.parametrize("second_path", ["native", "translated"])
async def test_failover_before_content(
    serve: Serve, first_path: str, first: Behavior, second_path: str
) -> None:
    if second_path == "native":
        second = FakeUpstream(default=Behavior(events=anthropic_stream(["Hel", "lo"])))
    else:
        second = FakeUpstream(default=Behavior(events=text_stream(["Hel", "lo"])))
    paths = {"native": native, "translated": translated}
    fakes = [FakeUpstream(default=first), second]
    live = serve(
        lambda ups: [
            paths[first_path]("first", ups[0], priority=0),
            paths[second_path]("second", ups[1], priority=1),
        ],
        upstreams=fakes,
        routing=fast_routing(),
    )
    async with live.anthropic_client() as client:
        stream = await client.messages.create(model="m1", max_tokens=10, messages=HI, stream=True)
        events = [event async for event in stream]
        async with client.messages.stream(model="m1", max_tokens=10, messages=HI) as helper:
            final = await helper.get_final_message()
    assert stream.response.headers["x-leap-attempts"] == "2"
    assert stream.response.headers["x-leap-provider"] == "second"
    kinds = [e.type for e in events]
    assert kinds.count("message_start") == 1
    assert kinds[0] == "message_start"
    assert kinds[-1] == "message_stop"
    start = events[0]
    assert start.type == "message_start"
    assert start.message.id != "msg_lost"
    assert text_of(events) == "Hello"
    assert final.content[0].type == "text"
    assert final.content[0].text == "Hello"
    assert [len(f.seen) for f in fakes] == [2, 2]


CUT = [
    pytest.param("native", "end", id="native-closed"),
    pytest.param("native", "reset", id="native-reset"),
    pytest.param("translated", "end", id="translated-closed"),
    pytest.param("translated", "reset", id="translated-reset"),
]


@pytest.mark.parametrize(("path", "then"), CUT)
async def test_cut_after_content_raises(serve: Serve, path: str, then: str) -> None:
    if path == "native":
        events = anthropic_stream(["Hel", "lo"], finish=False)
        provider = native
    else:
        events = text_stream(["Hel", "lo"], done=False, finish=False)
        provider = translated
    fakes = [
        FakeUpstream(default=Behavior(events=events, then=then)),
        FakeUpstream(default=Behavior(events=anthropic_stream(["other"]))),
    ]
    live = serve(
        lambda ups: [provider("first", ups[0], priority=0), native("second", ups[1], priority=1)],
        upstreams=fakes,
        routing=fast_routing(),
    )
    async with live.anthropic_client() as client:
        stream = await client.messages.create(model="m1", max_tokens=10, messages=HI, stream=True)
        received, error = await acollect_until_error(stream, anthropic.APIStatusError)
        with pytest.raises(anthropic.APIStatusError) as helper_error:
            async with client.messages.stream(model="m1", max_tokens=10, messages=HI) as helper:
                await helper.get_final_message()
        snapshot = helper.current_message_snapshot
    assert text_of(received) == "Hello"
    assert received[0].type == "message_start"
    assert "message_stop" not in [e.type for e in received]
    assert stream.response.status_code == 200
    for caught in (error, helper_error.value):
        assert_anthropic_error(caught.body, "api_error")
    assert snapshot.content[0].type == "text"
    assert snapshot.content[0].text == "Hello"
    # Past the first content event there is no failover: the second would repeat the text.
    assert [len(f.seen) for f in fakes] == [2, 0]


CACHED_BODY: Any = {
    "model": "m1",
    "max_tokens": 512,
    "system": [
        {"type": "text", "text": "a long, stable preamble", "cache_control": {"type": "ephemeral"}}
    ],
    "tools": [
        {
            "name": "lookup",
            "input_schema": {"type": "object"},
            "cache_control": {"type": "ephemeral", "ttl": "1h"},
        }
    ],
    "messages": [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "earlier turn", "cache_control": {"type": "ephemeral"}},
                {"type": "text", "text": "new question"},
            ],
        }
    ],
}


async def test_prompt_caching_survives_native_pass_through_under_the_anthropic_preset(
    serve: Serve,
) -> None:
    # The anthropic preset has parameter rules for its chat completions (seed dropped,
    # temperature capped, n=1); a Messages request passing through natively is the client's
    # own body, cache_control breakpoints included, whole or streamed.
    whole = anthropic_message(input_tokens=2, output_tokens=1)
    fake = FakeUpstream(default=Behavior(json_body=whole))
    fake.push(Behavior(json_body=whole), Behavior(events=anthropic_stream(["cached"])))
    live = serve(lambda ups: [native("claude", ups[0], preset="anthropic")], upstreams=[fake])
    # Fields the chat form's rules or translation would touch go as sent too.
    hot = {"temperature": 0.3, "top_k": 5}
    async with live.anthropic_client() as client:
        message = await client.messages.create(**CACHED_BODY, extra_body=hot)
        async with client.messages.stream(**CACHED_BODY, extra_body=hot) as stream:
            text = await stream.get_final_text()
    assert [block.type for block in message.content] == ["text"]
    assert text == "cached"
    once, streamed = fake.messages_requests
    assert once.json == {**CACHED_BODY, **hot}
    assert streamed.json == {**CACHED_BODY, **hot, "stream": True}
    assert fake.chat_requests == []
