"""A minimal fake upstream for benchmarks: fixed answers, JSON and streamed, in three protocols.

Run as a separate process so that its CPU time is not counted against the client:
``python benchmarks/upstream.py`` prints the port it listens on (127.0.0.1) and serves until killed.

- ``POST /v1/chat/completions``: a chat completion, or a stream of 20 chunks and ``[DONE]``.
- ``POST /v1/messages``: an Anthropic Message, or its event sequence (``message_start``,
  ``content_block_start``, 18 ``text_delta``s, ``content_block_stop``, ``message_delta`` with
  the usage, ``message_stop``).
- ``POST /v1/responses``: an OpenAI Response, or its event sequence (``response.created``,
  ``response.in_progress``, the output item and content part added, 18 ``output_text.delta``s,
  the text, part and item done, ``response.completed`` with the usage).

Every answer is bytes computed once at import; the text deltas are the chat stream's, so a
translated stream and a native one carry the same content.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Sequence
from typing import Any

from aiohttp import web

CHUNKS = 20
# The chat stream's content chunks: the first carries the role, the last the finish reason.
TEXT_DELTAS = CHUNKS - 2
DELTA = "hello "
TEXT = DELTA * 20
USAGE = {"prompt_tokens": 9, "completion_tokens": 20, "total_tokens": 29}


def _json(body: dict[str, Any]) -> bytes:
    return json.dumps(body).encode()


def _sse(events: Sequence[tuple[str | None, dict[str, Any]]]) -> list[bytes]:
    """One SSE frame per event, named when the protocol names its events."""
    frames = []
    for name, data in events:
        head = b"event: " + name.encode() + b"\n" if name else b""
        frames.append(head + b"data: " + _json(data) + b"\n\n")
    return frames


def _completion() -> bytes:
    return _json(
        {
            "id": "chatcmpl-bench",
            "object": "chat.completion",
            "created": 1_733_000_000,
            "model": "bench",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": TEXT, "refusal": None},
                    "finish_reason": "stop",
                    "logprobs": None,
                }
            ],
            "usage": USAGE,
        }
    )


def _stream() -> list[bytes]:
    base = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 1, "model": "b"}
    events = []
    for i in range(CHUNKS):
        delta = {"role": "assistant", "content": ""} if i == 0 else {"content": DELTA}
        finish = "stop" if i == CHUNKS - 1 else None
        if finish:
            delta = {}
        chunk = {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
        events.append((None, chunk))
    return [*_sse(events), b"data: [DONE]\n\n"]


def _message(content: list[dict[str, Any]], stop: str | None, output_tokens: int) -> dict[str, Any]:
    return {
        "id": "msg_01BenchBenchBenchBenchBe",
        "type": "message",
        "role": "assistant",
        "model": "bench",
        "content": content,
        "stop_reason": stop,
        "stop_sequence": None,
        "usage": {
            "input_tokens": 9,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
            "output_tokens": output_tokens,
        },
    }


def _messages_answer() -> bytes:
    return _json(_message([{"type": "text", "text": TEXT}], "end_turn", 20))


def _messages_stream() -> list[bytes]:
    block = {"type": "text_delta", "text": DELTA}
    return _sse(
        [
            ("message_start", {"type": "message_start", "message": _message([], None, 1)}),
            (
                "content_block_start",
                {
                    "type": "content_block_start",
                    "index": 0,
                    "content_block": {"type": "text", "text": ""},
                },
            ),
            *[
                (
                    "content_block_delta",
                    {"type": "content_block_delta", "index": 0, "delta": block},
                )
            ]
            * TEXT_DELTAS,
            ("content_block_stop", {"type": "content_block_stop", "index": 0}),
            (
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                    "usage": {"output_tokens": TEXT_DELTAS},
                },
            ),
            ("message_stop", {"type": "message_stop"}),
        ]
    )


_ITEM_ID = "msg_bench0123456789abcdef0123456789abcdef"


def _text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def _item(status: str, content: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "id": _ITEM_ID,
        "type": "message",
        "status": status,
        "role": "assistant",
        "content": content,
    }


def _response(status: str, output: list[dict[str, Any]], tokens: int | None) -> dict[str, Any]:
    usage = None
    if tokens is not None:
        usage = {
            "input_tokens": 9,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": 9 + tokens,
        }
    return {
        "id": "resp_bench0123456789abcdef0123456789abcdef",
        "object": "response",
        "created_at": 1_733_000_000,
        "status": status,
        "background": False,
        "error": None,
        "incomplete_details": None,
        "instructions": None,
        "max_output_tokens": None,
        "model": "bench",
        "output": output,
        "parallel_tool_calls": True,
        "previous_response_id": None,
        "reasoning": {"effort": None, "summary": None},
        "store": False,
        "temperature": 1.0,
        "text": {"format": {"type": "text"}},
        "tool_choice": "auto",
        "tools": [],
        "top_p": 1.0,
        "truncation": "disabled",
        "usage": usage,
        "user": None,
        "metadata": {},
    }


def _responses_answer() -> bytes:
    return _json(_response("completed", [_item("completed", [_text_part(TEXT)])], 20))


def _responses_stream() -> list[bytes]:
    text = DELTA * TEXT_DELTAS
    where = {"item_id": _ITEM_ID, "output_index": 0, "content_index": 0}
    events: list[tuple[str, dict[str, Any]]] = [
        ("response.created", {"response": _response("in_progress", [], None)}),
        ("response.in_progress", {"response": _response("in_progress", [], None)}),
        ("response.output_item.added", {"output_index": 0, "item": _item("in_progress", [])}),
        ("response.content_part.added", {**where, "part": _text_part("")}),
        *[("response.output_text.delta", {**where, "delta": DELTA, "logprobs": []})] * TEXT_DELTAS,
        ("response.output_text.done", {**where, "text": text, "logprobs": []}),
        ("response.content_part.done", {**where, "part": _text_part(text)}),
        (
            "response.output_item.done",
            {"output_index": 0, "item": _item("completed", [_text_part(text)])},
        ),
        (
            "response.completed",
            {
                "response": _response(
                    "completed", [_item("completed", [_text_part(text)])], TEXT_DELTAS
                )
            },
        ),
    ]
    return _sse(
        [
            (name, {"type": name, **data, "sequence_number": number})
            for number, (name, data) in enumerate(events)
        ]
    )


# (the JSON answer, the stream's frames) per path.
ANSWERS = {
    "/v1/chat/completions": (_completion(), _stream()),
    "/v1/messages": (_messages_answer(), _messages_stream()),
    "/v1/responses": (_responses_answer(), _responses_stream()),
}
COMPLETION, STREAM_FRAMES = ANSWERS["/v1/chat/completions"]
STREAM = b"".join(STREAM_FRAMES)


async def answer(request: web.Request) -> web.StreamResponse:
    body = await request.json()
    whole, frames = ANSWERS[request.path]
    if body.get("stream"):
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        # One write per event, as a real upstream produces them.
        for frame in frames:
            await response.write(frame)
        await response.write_eof()
        return response
    return web.Response(body=whole, content_type="application/json")


async def main() -> None:
    app = web.Application()
    for path in ANSWERS:
        app.router.add_post(path, answer)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    print(runner.addresses[0][1], flush=True)
    await asyncio.Event().wait()  # serve until killed


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        sys.exit(0)
