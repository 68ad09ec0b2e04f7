"""Batches in process: interactive requests go ahead of waiting batch lines, a batch past its
completion window expires, files expire, and with ``[batches]`` off there is nothing."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest

from leapasgi import Gateway
from leapasgi.clock import FakeClock
from leapasgi.config import BatchesConfig, GatewayConfig, HealthConfig, ProviderConfig
from leapasgi.manager import ProviderManager
from leapasgi.providers.mock import MockProvider
from leapasgi.types import ChatCompletion, ChatCompletionRequest

pytestmark = pytest.mark.anyio

CHAT = "/v1/chat/completions"
DAY = 24 * 3600


def line(custom_id: str) -> dict[str, Any]:
    body = {"model": "mock-chat", "messages": [{"role": "user", "content": custom_id}]}
    return {"custom_id": custom_id, "method": "POST", "url": CHAT, "body": body}


async def upload(client: httpx.AsyncClient, ids: list[str], **form: str) -> str:
    content = "".join(json.dumps(line(i)) + "\n" for i in ids).encode()
    answer = await client.post(
        "/v1/files",
        files={"file": ("in.jsonl", content, "application/jsonl")},
        data={"purpose": "batch", **form},
    )
    assert answer.status_code == 200, answer.text
    file_id: str = answer.json()["id"]
    return file_id


async def start_batch(client: httpx.AsyncClient, ids: list[str]) -> str:
    file_id = await upload(client, ids)
    answer = await client.post(
        "/v1/batches",
        json={"input_file_id": file_id, "endpoint": CHAT, "completion_window": "24h"},
    )
    assert answer.status_code == 200, answer.text
    batch_id: str = answer.json()["id"]
    return batch_id


async def until(check: Callable[[], Awaitable[bool]]) -> None:
    """Once ``check`` holds (polled on the loop; the test's timeout bounds it)."""
    async with asyncio.timeout(20):
        while True:
            if await check():
                return
            await asyncio.sleep(0.005)


class Gate:
    """Holds the mock's answers until opened, and notes whom it answered, in order."""

    def __init__(self, mock: MockProvider) -> None:
        self.open = asyncio.Event()
        self.order: list[str] = []
        self._chat = mock.chat
        mock.chat = self.chat  # type: ignore[method-assign]

    async def chat(self, request: ChatCompletionRequest, **options: Any) -> ChatCompletion:
        self.order.append(str(request.messages[-1].content))
        await self.open.wait()
        return await self._chat(request, **options)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def config(**batches: Any) -> GatewayConfig:
    provider = ProviderConfig(
        name="mock", type="mock", models=["mock-chat"], max_in_flight=1, max_waiting=16
    )
    return GatewayConfig(
        providers=[provider],
        health=HealthConfig(interval=0),
        batches=BatchesConfig(enabled=True, **batches),
    )


@pytest.fixture
async def gateway(clock: FakeClock) -> AsyncIterator[Gateway]:
    settings = config(concurrency=4, poll_interval=0.01)
    manager = ProviderManager.from_config(settings, clock=clock)
    gateway = Gateway(manager=manager, config=settings)
    async with gateway:
        yield gateway


@pytest.fixture
async def client(gateway: Gateway) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=gateway.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gw") as c:
        yield c


def provider_of(gateway: Gateway) -> tuple[MockProvider, Any]:
    entry = gateway.manager.registry.get("mock")
    assert isinstance(entry.provider, MockProvider)
    return entry.provider, entry.limit


async def test_an_interactive_request_is_taken_before_waiting_batch_lines(
    gateway: Gateway, client: httpx.AsyncClient
) -> None:
    mock, limit = provider_of(gateway)
    gate = Gate(mock)
    batch_id = await start_batch(client, [f"batch-{i}" for i in range(8)])

    async def lines_waiting() -> bool:
        return bool(limit.waiting == 3)

    # One batch line holds the provider's only slot; three more wait in its line.
    await until(lines_waiting)
    body = {"model": "mock-chat", "messages": [{"role": "user", "content": "interactive"}]}
    interactive = asyncio.create_task(client.post(CHAT, json=body))

    async def behind_it() -> bool:
        return bool(limit.waiting == 4)

    await until(behind_it)
    gate.open.set()
    answer = await interactive
    assert answer.status_code == 200

    async def completed() -> bool:
        found = (await client.get(f"/v1/batches/{batch_id}")).json()
        return bool(found["status"] == "completed")

    await until(completed)
    # The first batch line was already in flight; the interactive request went next, ahead
    # of the batch lines that had waited longer.
    assert gate.order[0] == "batch-0"
    assert gate.order[1] == "interactive"
    assert sorted(gate.order[2:]) == sorted(f"batch-{i}" for i in range(1, 8))


async def test_a_batch_past_its_window_expires_and_reports_its_unanswered_lines(
    gateway: Gateway, client: httpx.AsyncClient, clock: FakeClock
) -> None:
    mock, _ = provider_of(gateway)
    gate = Gate(mock)
    batch_id = await start_batch(client, ["a", "b", "c"])

    async def in_flight() -> bool:
        return bool(gate.order)

    await until(in_flight)
    clock.advance(DAY + 1)

    async def expired() -> bool:
        found = (await client.get(f"/v1/batches/{batch_id}")).json()
        return bool(found["status"] == "expired")

    await until(expired)
    batch = (await client.get(f"/v1/batches/{batch_id}")).json()
    assert batch["expired_at"] >= batch["expires_at"] == batch["created_at"] + DAY
    assert batch["request_counts"] == {"total": 3, "completed": 0, "failed": 3}
    assert batch["output_file_id"] is None
    errors = (await client.get(f"/v1/files/{batch['error_file_id']}/content")).text
    reported = [json.loads(text) for text in errors.splitlines()]
    assert {r["custom_id"] for r in reported} == {"a", "b", "c"}
    assert {r["error"]["code"] for r in reported} == {"batch_expired"}
    assert all(r["response"] is None for r in reported)


async def test_a_file_expires_after_its_time(client: httpx.AsyncClient, clock: FakeClock) -> None:
    file_id = await upload(
        client, ["x"], **{"expires_after[anchor]": "created_at", "expires_after[seconds]": "3600"}
    )
    kept = (await client.get(f"/v1/files/{file_id}")).json()
    assert kept["expires_at"] == kept["created_at"] + 3600
    clock.advance(3600)
    gone = await client.get(f"/v1/files/{file_id}")
    assert gone.status_code == 404
    assert gone.json()["error"]["code"] == "file_not_found"


async def test_switched_off_there_are_no_routes() -> None:
    off = GatewayConfig(providers=[ProviderConfig(name="mock", type="mock")])
    async with Gateway(config=off) as gateway:
        transport = httpx.ASGITransport(app=gateway.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as c:
            for method, path in (("GET", "/v1/files"), ("POST", "/v1/batches")):
                answer = await c.request(method, path)
                assert answer.status_code == 404
                assert answer.json()["error"]["code"] == "not_found"
        assert not any(type(s).__name__ == "BatchRunner" for s in gateway._services)  # noqa: SLF001
