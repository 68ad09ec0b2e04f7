"""A real OpenAI-compatible fake upstream on 127.0.0.1 that plays scripted answers and faults.

Each request takes the next scripted ``Behavior`` (or the default one) and is recorded with
its headers, body, timing and whether the client went away before the answer was complete.
"""

from __future__ import annotations

import asyncio
import json
import socket
import struct
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

__all__ = [
    "Behavior",
    "FakeUpstream",
    "Seen",
    "chunk",
    "completion",
    "error_body",
    "sse",
    "text_stream",
]


@dataclass
class Behavior:
    """What the upstream does with one request.

    ``status``/``json_body``/``raw_body``: a plain answer. ``events``: an SSE body, written piece by
    piece with ``delay`` seconds between pieces. ``before``: seconds to wait before the headers.
    ``then``: what happens after the events: "end" (close normally), "reset" (TCP RST), "hang"
    (keep the connection open and silent). ``drip``: seconds between single bytes of the body.
    ``reset_now``: reset the connection instead of answering. ``hang_now``: never answer.
    """

    status: int = 200
    json_body: Any = None
    raw_body: bytes | None = None
    events: list[bytes] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    before: float = 0.0
    then: str = "end"
    drip: float | None = None
    reset_now: bool = False
    hang_now: bool = False


@dataclass
class Seen:
    """One request as the upstream saw it."""

    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes
    started: float
    peer: int = 0
    finished: float | None = None
    client_went_away: bool = False

    @property
    def json(self) -> Any:
        return json.loads(self.body)


class FakeUpstream:
    """An aiohttp.web server on 127.0.0.1 with a script of behaviors; use as an async context."""

    def __init__(self, *, default: Behavior | None = None, models: Iterable[str] = ("m1",)) -> None:
        self.default = default or Behavior(json_body=completion("hello"))
        # What GET /models answers when nothing is scripted; None lists ``models``.
        self.models_behavior: Behavior | None = None
        self.script: deque[Behavior] = deque()
        self.seen: list[Seen] = []
        self.models = list(models)
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def push(self, *behaviors: Behavior) -> None:
        """Queue behaviors for the next requests, in order."""
        self.script.extend(behaviors)

    @property
    def chat_requests(self) -> list[Seen]:
        return [s for s in self.seen if s.path.endswith("/chat/completions")]

    async def __aenter__(self) -> FakeUpstream:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        seen = Seen(
            request.method,
            request.path,
            request.query_string,
            dict(request.headers),
            body,
            time.monotonic(),
            _peer_port(request),
        )
        self.seen.append(seen)
        if self.script:
            behavior = self.script.popleft()
        elif request.path.endswith("/models"):
            behavior = self.models_behavior or Behavior(json_body=model_list(self.models))
        else:
            behavior = self.default
        try:
            return await self._play(request, behavior)
        except (asyncio.CancelledError, ConnectionResetError):
            seen.client_went_away = True
            raise
        finally:
            seen.finished = time.monotonic()

    async def _play(self, request: web.Request, b: Behavior) -> web.StreamResponse:
        if b.hang_now:
            await asyncio.sleep(3600)
        if b.reset_now:
            _reset(request)
            raise ConnectionResetError
        if b.before:
            await asyncio.sleep(b.before)
        if b.events is None and b.drip is None:
            if b.raw_body is not None:
                return web.Response(status=b.status, body=b.raw_body, headers=b.headers)
            return web.json_response(b.json_body, status=b.status, headers=b.headers)
        response = web.StreamResponse(status=b.status, headers=b.headers)
        if b.events is not None:
            response.content_type = "text/event-stream"
        else:
            response.content_type = "application/json"
        await response.prepare(request)
        if b.drip is not None:
            data = b.raw_body if b.raw_body is not None else json.dumps(b.json_body).encode()
            for i in range(len(data)):
                await response.write(data[i : i + 1])
                await asyncio.sleep(b.drip)
        for piece in b.events or ():
            await response.write(piece)
            if b.delay:
                await asyncio.sleep(b.delay)
        if b.then == "reset":
            _reset(request)
            raise ConnectionResetError
        if b.then == "hang":
            await asyncio.sleep(3600)
        await response.write_eof()
        return response


def _peer_port(request: web.Request) -> int:
    peer = request.transport.get_extra_info("peername") if request.transport else None
    return int(peer[1]) if peer else 0


def _reset(request: web.Request) -> None:
    transport = request.transport
    assert transport is not None
    sock = transport.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


def completion(content: str | None = "hello", **extra: Any) -> dict[str, Any]:
    """A non-streaming completion body."""
    message: dict[str, Any] = {"role": "assistant", "content": content}
    message.update(extra.pop("message_extra", {}))
    body: dict[str, Any] = {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": 1_733_000_000,
        "model": "m1",
        "choices": [{"index": 0, "message": message, "finish_reason": "stop", "logprobs": None}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6},
    }
    body.update(extra)
    return body


def model_list(models: Iterable[str]) -> dict[str, Any]:
    return {
        "object": "list",
        "data": [{"id": m, "object": "model", "created": 1, "owned_by": "fake"} for m in models],
    }


def error_body(message: str, *, type: str = "invalid_request_error", code: Any = None) -> Any:
    return {"error": {"message": message, "type": type, "param": None, "code": code}}


def chunk(delta: dict[str, Any] | None = None, *, finish: str | None = None, **extra: Any) -> Any:
    """One streaming chunk for choice 0."""
    body: dict[str, Any] = {
        "id": "chatcmpl-fake",
        "object": "chat.completion.chunk",
        "created": 1_733_000_000,
        "model": "m1",
        "choices": [{"index": 0, "delta": delta or {}, "finish_reason": finish}],
    }
    body.update(extra)
    return body


def sse(*payloads: Any, done: bool = True) -> list[bytes]:
    """SSE events for ``payloads`` (dicts become JSON, bytes pass as they are), then [DONE]."""
    events = [
        p if isinstance(p, bytes) else b"data: " + json.dumps(p).encode() + b"\n\n"
        for p in payloads
    ]
    if done:
        events.append(b"data: [DONE]\n\n")
    return events


def text_stream(pieces: Iterable[str], *, done: bool = True, finish: bool = True) -> list[bytes]:
    """A well-formed text stream of ``pieces``."""
    payloads: list[Any] = [chunk({"role": "assistant", "content": ""})]
    payloads += [chunk({"content": p}) for p in pieces]
    if finish:
        payloads.append(chunk({}, finish="stop"))
    return sse(*payloads, done=done)
