"""What the SDK tests read off the wire whichever SDK they use: SSE events as sent, OpenAI's
error body, and streams that end in an error."""

from __future__ import annotations

import json
from collections.abc import AsyncIterable, Iterable, Iterator
from typing import Any, TypeVar

import openai

__all__ = [
    "acollect_until_error",
    "assert_openai_error_body",
    "collect_until_error",
    "iter_sse",
    "sse_events",
]

E = TypeVar("E", bound=Exception)


def iter_sse(lines: Iterable[str]) -> Iterator[tuple[str | None, Any]]:
    """(event name, JSON data) of each event of an SSE body as it arrives; comments are
    skipped."""
    name: str | None = None
    for line in lines:
        if line.startswith("event:"):
            name = line.removeprefix("event:").strip()
        elif line.startswith("data:"):
            yield name, json.loads(line.removeprefix("data:"))
            name = None


def sse_events(lines: Iterable[str]) -> list[tuple[str | None, Any]]:
    """Every event of a whole SSE body."""
    return list(iter_sse(lines))


def assert_openai_error_body(response: Any) -> dict[str, Any]:
    """OpenAI's error shape, ``{"error": {"message", "type", "param", "code"}}``, as JSON;
    returns the error."""
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert response.headers["content-type"] == "application/json"
    return body["error"]  # type: ignore[no-any-return]


def collect_until_error(stream: Iterable[Any]) -> tuple[list[Any], openai.APIError]:
    """What a stream yielded before it raised, and the error."""
    received = []
    try:
        for item in stream:
            received.append(item)
    except openai.APIError as error:
        return received, error
    raise AssertionError("the stream ended without an error")


async def acollect_until_error(stream: AsyncIterable[Any], error: type[E]) -> tuple[list[Any], E]:
    """What an async stream yielded before it raised ``error``, and the error."""
    received = []
    try:
        async for item in stream:
            received.append(item)
    except error as caught:
        return received, caught
    raise AssertionError("the stream ended without an error")
