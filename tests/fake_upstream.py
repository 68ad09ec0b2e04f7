"""A real OpenAI-compatible fake upstream on 127.0.0.1 that plays scripted answers and faults;
the answer builders below also shape native Anthropic Messages (whole and streamed) and
embeddings answers, for upstreams configured to speak those protocols.

Each request takes the next scripted ``Behavior`` (or the default one) and is recorded with
its headers, body, timing and whether the client went away before the answer was complete.
"""

from __future__ import annotations

import asyncio
import json
import socket
import struct
import threading
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
    "anthropic_error",
    "anthropic_event",
    "anthropic_message",
    "anthropic_stream",
    "chunk",
    "completion",
    "embedding_answer",
    "error_body",
    "serve_app",
    "sse",
    "text_stream",
]


async def serve_app(app: web.Application) -> tuple[web.AppRunner, int]:
    """``app`` served on a free port of 127.0.0.1: its runner (``cleanup()`` stops it) and
    the port."""
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, runner.addresses[0][1]


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
    pause_before: int | None = None
    resume: threading.Event | None = None


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

    @property
    def messages_requests(self) -> list[Seen]:
        """Native Anthropic Messages calls (``/messages``, not ``/messages/count_tokens``)."""
        return [s for s in self.seen if s.path.endswith("/messages")]

    @property
    def embeddings_requests(self) -> list[Seen]:
        return [s for s in self.seen if s.path.endswith("/embeddings")]

    async def __aenter__(self) -> FakeUpstream:
        self._runner, self.port = await serve_app(self._app())
        return self

    def _app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        return app

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
        behavior = self.behavior_for(seen)
        try:
            return await self._play(request, behavior)
        except (asyncio.CancelledError, ConnectionResetError):
            seen.client_went_away = True
            raise
        finally:
            seen.finished = time.monotonic()

    def behavior_for(self, seen: Seen) -> Behavior:
        """What the upstream does with the request ``seen``: the next scripted behavior, else
        the model list for ``GET /models``, else the default. A subclass may answer from what
        the request carries instead."""
        if self.script:
            return self.script.popleft()
        if seen.path.endswith("/models"):
            return self.models_behavior or Behavior(json_body=model_list(self.models))
        return self.default

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
        for index, piece in enumerate(b.events or ()):
            if index == b.pause_before and b.resume is not None:
                await _wait_for(b.resume)
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


async def _wait_for(event: threading.Event) -> None:
    # Set from the test's thread: polled, so the server's loop (and its shutdown) never
    # blocks on a thread waiting for it.
    while not event.is_set():  # noqa: ASYNC110
        await asyncio.sleep(0.005)


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


def anthropic_message(
    text: str | None = "hello",
    *,
    model: str = "m1",
    content: list[dict[str, Any]] | None = None,
    stop_reason: str = "end_turn",
    input_tokens: int = 5,
    output_tokens: int = 1,
    message_id: str = "msg_fake",
) -> dict[str, Any]:
    """A whole Anthropic Message; ``content`` replaces the one text block ``text`` makes."""
    if content is None:
        content = [{"type": "text", "text": text}] if text is not None else []
    return {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": {
            "input_tokens": input_tokens,
            "output_tokens": output_tokens,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
        },
    }


def anthropic_event(name: str, payload: dict[str, Any] | None = None) -> bytes:
    """One Anthropic SSE event: ``event: name`` and its JSON with ``type`` set to ``name``."""
    data = json.dumps({"type": name, **(payload or {})})
    return f"event: {name}\ndata: {data}\n\n".encode()


def anthropic_stream(
    pieces: Iterable[str],
    *,
    model: str = "m1",
    input_tokens: int = 5,
    stop_reason: str = "end_turn",
    finish: bool = True,
    message_id: str = "msg_fake",
) -> list[bytes]:
    """A text answer as the Anthropic API streams it: ``message_start``, one text block
    (``content_block_start``, a ``ping``, a ``text_delta`` per piece, ``content_block_stop``),
    ``message_delta`` and ``message_stop``. ``finish=False`` stops after the last delta."""
    pieces = list(pieces)
    start = anthropic_message(
        None, model=model, input_tokens=input_tokens, output_tokens=1, message_id=message_id
    )
    start["stop_reason"] = None
    events = [
        anthropic_event("message_start", {"message": start}),
        anthropic_event(
            "content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}}
        ),
        anthropic_event("ping"),
    ]
    events += [
        anthropic_event(
            "content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": piece}}
        )
        for piece in pieces
    ]
    if finish:
        events += [
            anthropic_event("content_block_stop", {"index": 0}),
            anthropic_event(
                "message_delta",
                {
                    "delta": {"stop_reason": stop_reason, "stop_sequence": None},
                    "usage": {"output_tokens": len(pieces)},
                },
            ),
            anthropic_event("message_stop"),
        ]
    return events


def anthropic_error(message: str, *, type: str = "invalid_request_error") -> dict[str, Any]:
    """An Anthropic error body, as a response or the payload of an ``error`` event."""
    return {"type": "error", "error": {"type": type, "message": message}}


def embedding_answer(
    vectors: Iterable[list[float]], *, model: str = "e1", prompt_tokens: int = 3
) -> dict[str, Any]:
    """An OpenAI embeddings answer with float vectors, one per input in order."""
    return {
        "object": "list",
        "data": [
            {"object": "embedding", "index": i, "embedding": vector}
            for i, vector in enumerate(vectors)
        ],
        "model": model,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    }
