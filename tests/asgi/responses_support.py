"""What the Responses tests share: providers serving ``m1`` (the mock, chat upstreams,
upstreams that speak Responses), one turn through the official openai SDK whole or streamed,
and the rules a Responses stream keeps."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import openai

from leapasgi.config import ProviderConfig
from tests.asgi.live_server import upstream_config
from tests.asgi.sdk_wire import sse_events
from tests.fake_upstream import FakeUpstream

__all__ = [
    "TERMINAL",
    "assert_stream_rules",
    "chat_messages",
    "chat_upstreams",
    "mock_for_m1",
    "native_upstreams",
    "raw_stream",
    "take_turn",
    "text_of",
    "text_order",
    "types_of",
    "user",
]

TERMINAL = ("response.completed", "response.incomplete")


def native_upstreams(upstreams: Sequence[FakeUpstream]) -> list[ProviderConfig]:
    """Upstreams that speak Responses natively, serving ``m1``, tried in order, each once."""
    return [
        upstream_config(f"up{i}", fake, protocols=["responses"], priority=i, max_retries=0)
        for i, fake in enumerate(upstreams)
    ]


def chat_upstreams(upstreams: Sequence[FakeUpstream]) -> list[ProviderConfig]:
    """Chat-only upstreams serving ``m1``, tried in order, each once."""
    return [
        upstream_config(f"up{i}", fake, priority=i, max_retries=0)
        for i, fake in enumerate(upstreams)
    ]


def mock_for_m1(priority: int) -> ProviderConfig:
    """The mock provider, serving ``m1``."""
    return ProviderConfig(name="mock", type="mock", models=["m1"], priority=priority)


def raw_stream(client: openai.OpenAI, **params: Any) -> tuple[list[dict[str, Any]], Any]:
    """The events of a streamed response as sent (their ``event:`` names checked against
    their types), and the response's headers."""
    with client.responses.with_streaming_response.create(stream=True, **params) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = sse_events(response.iter_lines())
    for name, data in events:
        assert name == data["type"]
    return [data for _, data in events], response.headers


def types_of(events: Iterable[Mapping[str, Any]]) -> list[str]:
    return [event["type"] for event in events]


def assert_stream_rules(events: list[dict[str, Any]]) -> str:
    """One lifecycle with one response id and numbered events; returns the id."""
    types = types_of(events)
    assert types[:2] == ["response.created", "response.in_progress"]
    assert types.count("response.created") == 1
    assert types[-1] in TERMINAL
    assert sum(kind in TERMINAL for kind in types) == 1
    assert [event["sequence_number"] for event in events] == list(range(len(events)))
    ids = {event["response"]["id"] for event in events if "response" in event}
    assert len(ids) == 1
    return str(ids.pop())


def text_order(deltas: int) -> list[str]:
    """The documented events of a response that is one text message."""
    return [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        *["response.output_text.delta"] * deltas,
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]


def text_of(response: Mapping[str, Any]) -> str:
    """The output text of a Response object (JSON)."""
    return "".join(
        part["text"]
        for item in response["output"]
        if item["type"] == "message"
        for part in item["content"]
        if part["type"] == "output_text"
    )


def user(text: str) -> dict[str, Any]:
    """A user message item, as the gateway writes a string input."""
    return {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}


def take_turn(client: openai.OpenAI, *, stream: bool, **params: Any) -> tuple[dict[str, Any], Any]:
    """One response, streamed or not: the Response object (JSON) and the headers."""
    if stream:
        events, headers = raw_stream(client, **params)
        assert_stream_rules(events)
        return events[-1]["response"], headers
    raw = client.responses.with_raw_response.create(**params)
    raw.parse()
    return raw.http_response.json(), raw.headers


def chat_messages(seen: Any) -> list[dict[str, Any]]:
    """The messages of a chat request an upstream received."""
    return seen.json["messages"]  # type: ignore[no-any-return]
