"""CPU cost of one call through the provider client against a local fake upstream.

    python benchmarks/provider_client.py [--calls 1000] [--rounds 5]
    python benchmarks/provider_client.py --instructions      # needs valgrind

The fake upstream runs in its own process (benchmarks/upstream.py) so that only the client's CPU
time is measured. The floors are bare aiohttp: a POST and read of the JSON answer, and of the
20-event stream. Then our non-streaming chat call and our 20-chunk stream (SSE decoding, chunk
validation and normalization included); the difference to its floor is what our layer costs.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
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
ROW_NAMES = [
    "bare aiohttp POST + read (floor)",
    "bare aiohttp stream read (floor)",
    "provider.chat (non-streaming)",
    "provider.stream (20 chunks)",
]


async def measure(calls: int, call: Callable[[], Awaitable[object]]) -> tuple[float, float]:
    """CPU and wall seconds per call over ``calls`` sequential calls."""
    cpu, wall = time.process_time(), time.perf_counter()
    for _ in range(calls):
        await call()
    return (time.process_time() - cpu) / calls, (time.perf_counter() - wall) / calls


async def compare(
    calls: int, rounds: int, rows: Mapping[str, Callable[[], Awaitable[object]]]
) -> None:
    """Interleave the rows round by round, so machine drift hits each alike; print medians."""
    for call in rows.values():  # warm up pools and caches
        for _ in range(min(200, calls)):
            await call()
    samples: dict[str, list[tuple[float, float]]] = {name: [] for name in rows}
    for _ in range(rounds):
        for name, call in rows.items():
            samples[name].append(await measure(calls, call))
    for name, results in samples.items():
        cpu = statistics.median(r[0] for r in results)
        wall = statistics.median(r[1] for r in results)
        spread = (max(r[0] for r in results) - min(r[0] for r in results)) * 1e6
        print(
            f"{name:<34} {cpu * 1e6:6.0f} us CPU/call (spread {spread:4.0f})"
            f" {wall * 1e6:6.0f} us wall/call {1 / wall:7.0f} calls/s"
        )


Rows = Mapping[str, Callable[[], Awaitable[object]]]


async def run(port: int, calls: int, rounds: int, only: str | None) -> None:
    base = f"http://127.0.0.1:{port}/v1"
    provider = OpenAICompatibleProvider(ProviderSettings(name="bench", base_url=base))
    body = REQUEST.model_dump_json(exclude_unset=True).encode()
    stream_body = STREAM_REQUEST.model_dump_json(exclude_unset=True).encode()
    headers = {"Content-Type": "application/json"}
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as session:

        async def bare() -> object:
            async with session.post(f"{base}/chat/completions", data=body, headers=headers) as r:
                return await r.read()

        async def bare_stream() -> object:
            async with session.post(
                f"{base}/chat/completions", data=stream_body, headers=headers
            ) as r:
                return [piece async for piece in r.content.iter_any()]

        async def chat() -> object:
            return await provider.chat(REQUEST)

        async def stream() -> object:
            return [batch async for batch in provider.stream(STREAM_REQUEST)]

        rows: Rows = dict(zip(ROW_NAMES, (bare, bare_stream, chat, stream), strict=True))
        if only is not None:
            call = rows[only]
            for _ in range(calls):
                await call()
        else:
            version = sys.version.split()[0]
            print(f"median of {rounds} rounds x {calls} sequential calls, Python {version}")
            await compare(calls, rounds, rows)
    await provider.aclose()


def instructions(port: int, rows: list[str]) -> None:
    """Instructions per call, counted by callgrind: repeatable where CPU time is noisy."""
    small, large = 20, 220
    print(f"instructions per call (callgrind, {large} - {small} calls, process start excluded)")
    for name in rows:
        counts = []
        for calls in (small, large):
            command = [
                "valgrind",
                "--tool=callgrind",
                "--callgrind-out-file=/dev/null",
                sys.executable,
                __file__,
                f"--port={port}",
                f"--only={name}",
                f"--calls={calls}",
            ]
            out = subprocess.run(command, capture_output=True, text=True, check=True).stderr
            counts.append(int(out.split("Collected : ")[1].split()[0]))
        print(f"{name:<34} {(counts[1] - counts[0]) / (large - small) / 1000:8.0f} k instructions")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=1000, help="calls per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--instructions", action="store_true", help="count instructions with valgrind instead"
    )
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--only", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.port is not None:
        asyncio.run(run(args.port, args.calls, 1, args.only))
        return
    upstream = subprocess.Popen(
        [sys.executable, str(HERE / "upstream.py")], stdout=subprocess.PIPE, text=True
    )
    try:
        assert upstream.stdout is not None
        port = int(upstream.stdout.readline())
        if args.instructions:
            instructions(port, ROW_NAMES)
        else:
            asyncio.run(run(port, args.calls, args.rounds, None))
    finally:
        upstream.terminate()
        upstream.wait(timeout=10)


if __name__ == "__main__":
    main()
