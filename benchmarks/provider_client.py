"""CPU cost of one call through the provider client against a local fake upstream.

    python benchmarks/provider_client.py [--calls 2000]

The fake upstream runs in its own process (benchmarks/upstream.py) so that only the client's CPU
time is measured. Rows: a bare aiohttp POST + read as the floor, then our non-streaming chat
call and our 20-chunk stream (SSE decoding, chunk validation and normalization included).
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp

from leapasgi.providers.compatible import OpenAICompatibleProvider
from leapasgi.providers.settings import ProviderSettings
from leapasgi.types import ChatCompletionRequest

HERE = Path(__file__).resolve().parent
REQUEST = ChatCompletionRequest.model_validate(
    {"model": "bench", "messages": [{"role": "user", "content": "Say hello twenty times."}]}
)
STREAM_REQUEST = REQUEST.model_copy(update={"stream": True})


async def measure(name: str, calls: int, call: Callable[[], Awaitable[object]]) -> None:
    for _ in range(min(200, calls)):  # warm up pools, caches and the JIT-less interpreter
        await call()
    cpu, wall = time.process_time(), time.perf_counter()
    for _ in range(calls):
        await call()
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    print(
        f"{name:<34} {cpu / calls * 1e6:9.0f} us CPU/call {wall / calls * 1e6:9.0f} us wall/call"
        f" {calls / wall:8.0f} calls/s"
    )


async def run(port: int, calls: int) -> None:
    base = f"http://127.0.0.1:{port}/v1"
    provider = OpenAICompatibleProvider(ProviderSettings(name="bench", base_url=base))
    body = REQUEST.model_dump_json(exclude_unset=True).encode()
    headers = {"Content-Type": "application/json"}
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as session:

        async def bare() -> object:
            async with session.post(f"{base}/chat/completions", data=body, headers=headers) as r:
                return await r.read()

        async def chat() -> object:
            return await provider.chat(REQUEST)

        async def stream() -> object:
            return [chunk async for chunk in provider.stream(STREAM_REQUEST)]

        print(f"{calls} sequential calls each, Python {sys.version.split()[0]}")
        await measure("bare aiohttp POST + read (floor)", calls, bare)
        await measure("provider.chat (non-streaming)", calls, chat)
        await measure("provider.stream (20 chunks)", calls, stream)
    await provider.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=2000)
    args = parser.parse_args()
    upstream = subprocess.Popen(
        [sys.executable, str(HERE / "upstream.py")], stdout=subprocess.PIPE, text=True
    )
    try:
        assert upstream.stdout is not None
        port = int(upstream.stdout.readline())
        asyncio.run(run(port, args.calls))
    finally:
        upstream.terminate()
        upstream.wait(timeout=10)


if __name__ == "__main__":
    main()
