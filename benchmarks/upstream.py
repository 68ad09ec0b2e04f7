"""A minimal fake OpenAI upstream for benchmarks: fixed JSON completion and a 20-chunk stream.

Run as a separate process so that its CPU time is not counted against the client:
``python benchmarks/upstream.py`` prints the port it listens on (127.0.0.1) and serves until killed.
"""

from __future__ import annotations

import json
import sys

from aiohttp import web

CHUNKS = 20


def _completion() -> bytes:
    body = {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": 1_733_000_000,
        "model": "bench",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "hello " * 20, "refusal": None},
                "finish_reason": "stop",
                "logprobs": None,
            }
        ],
        "usage": {"prompt_tokens": 9, "completion_tokens": 20, "total_tokens": 29},
    }
    return json.dumps(body).encode()


def _stream() -> bytes:
    base = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 1, "model": "b"}
    events = []
    for i in range(CHUNKS):
        delta = {"role": "assistant", "content": ""} if i == 0 else {"content": "hello "}
        finish = "stop" if i == CHUNKS - 1 else None
        if finish:
            delta = {}
        chunk = {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
        events.append(b"data: " + json.dumps(chunk).encode() + b"\n\n")
    events.append(b"data: [DONE]\n\n")
    return b"".join(events)


COMPLETION = _completion()
STREAM = _stream()


async def chat(request: web.Request) -> web.StreamResponse:
    body = await request.json()
    if body.get("stream"):
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        # One write per event, as a real upstream produces them.
        for event in STREAM.split(b"\n\n")[:-1]:
            await response.write(event + b"\n\n")
        await response.write_eof()
        return response
    return web.Response(body=COMPLETION, content_type="application/json")


async def main() -> None:
    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    print(runner.addresses[0][1], flush=True)
    while True:
        await __import__("asyncio").sleep(3600)


if __name__ == "__main__":
    import asyncio

    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        sys.exit(0)
