"""What the Messages tests share: the requests they send, providers speaking Messages
natively or reached translated through chat, Anthropic's error shape, and reading answers
through the official anthropic SDK."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import anthropic

from leapasgi.config import ProviderConfig
from tests.asgi.live_server import upstream_config
from tests.fake_upstream import FakeUpstream, anthropic_error, anthropic_event, anthropic_message

__all__ = [
    "HI",
    "OVERLOADED_EVENT",
    "OVERLOADED_STREAM",
    "WEATHER_TOOL",
    "ask",
    "assert_anthropic_error",
    "native",
    "text_of",
    "translated",
]

HI: Any = [{"role": "user", "content": "hi there"}]
WEATHER_TOOL: Any = {
    "name": "get_weather",
    "description": "The weather in a city",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}
# Anthropic's overload, in band: an error event, and a stream that starts then says it.
OVERLOADED_EVENT = anthropic_event("error", anthropic_error("Overloaded", type="overloaded_error"))
OVERLOADED_STREAM = [
    anthropic_event(
        "message_start",
        {"message": {**anthropic_message(None, message_id="msg_lost"), "stop_reason": None}},
    ),
    anthropic_event("ping"),
    OVERLOADED_EVENT,
]


def native(name: str, fake: FakeUpstream, **options: Any) -> ProviderConfig:
    """A provider speaking Messages natively, tried once."""
    options.setdefault("max_retries", 0)
    return upstream_config(name, fake, protocols=["messages"], **options)


def translated(name: str, fake: FakeUpstream, **options: Any) -> ProviderConfig:
    """A chat-only provider: Messages reach it translated, tried once."""
    options.setdefault("max_retries", 0)
    return upstream_config(name, fake, **options)


def assert_anthropic_error(body: Any, kind: str) -> None:
    """Anthropic's error shape: ``{"type": "error", "error": {"type", "message"}}``."""
    assert body["type"] == "error"
    assert set(body) <= {"type", "error", "request_id"}
    assert set(body["error"]) == {"type", "message"}
    assert body["error"]["type"] == kind
    assert isinstance(body["error"]["message"], str)
    assert body["error"]["message"]


async def ask(client: anthropic.AsyncAnthropic, *, stream: bool, model: str = "m1") -> Any:
    """One request, whole or through the SDK's stream helper; the final message."""
    if not stream:
        return await client.messages.create(model=model, max_tokens=10, messages=HI)
    async with client.messages.stream(model=model, max_tokens=10, messages=HI) as helper:
        return await helper.get_final_message()


def text_of(events: Sequence[Any]) -> str:
    """The text the ``text_delta`` events of a stream carry."""
    return "".join(
        e.delta.text
        for e in events
        if e.type == "content_block_delta" and e.delta.type == "text_delta"
    )
