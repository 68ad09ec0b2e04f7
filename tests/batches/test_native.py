"""Batches handed over to a provider's own batch API, through the official openai SDK against
the gateway in process, with an ``openai``-preset provider on the fake Files + Batches upstream:
answered once at the batch price, cancelled upstream, continued after a restart, and run by the
gateway itself when the upstream fails, leaves lines out, or is not the first choice. The test
moves the fake's batches and the gateway's clock; nothing waits on time."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from leapasgi import Gateway
from leapasgi.clock import FakeClock
from leapasgi.config import (
    BatchesConfig,
    GatewayConfig,
    HealthConfig,
    ProviderConfig,
    RoutingConfig,
)
from leapasgi.manager import ProviderManager
from leapasgi.tenants.base import UsageRow
from tests.fake_batch_upstream import Answer, FakeBatchUpstream, completion_answer

pytestmark = pytest.mark.anyio

CHAT = "/v1/chat/completions"
MODEL = "gpt-4o-mini"
# gpt-4o-mini: $0.15 in, $0.60 out per million; the fake's answers use 10 in, 2 out; OpenAI's
# batch rate is half.
LINE_COST = (10 * 0.15 + 2 * 0.6) / 1_000_000 * 0.5
# More than any poll delay (a minute at most).
POLL = 60.0


class SteppedClock(FakeClock):
    """A fake clock whose ``sleep`` lasts until the test advances it past its end."""

    def __init__(self) -> None:
        super().__init__()
        self._sleepers: list[tuple[float, asyncio.Future[None]]] = []

    @property
    def sleeping(self) -> int:
        return len(self._sleepers)

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        woken = asyncio.get_running_loop().create_future()
        entry = (self.monotonic() + seconds, woken)
        self._sleepers.append(entry)
        try:
            await woken
        finally:
            if entry in self._sleepers:
                self._sleepers.remove(entry)

    def advance(self, seconds: float) -> None:
        super().advance(seconds)
        now = self.monotonic()
        for entry in [e for e in self._sleepers if e[0] <= now]:
            self._sleepers.remove(entry)
            if not entry[1].done():
                entry[1].set_result(None)


async def until(check: Callable[[], Awaitable[bool]]) -> None:
    """Once ``check`` holds (looked at on the loop; the test's timeout bounds it)."""
    async with asyncio.timeout(20):
        while True:
            if await check():
                return
            await asyncio.sleep(0.005)


class Bodies:
    """The fake's answers, noting each request body the upstream batch ran."""

    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []

    def __call__(self, custom_id: str, body: dict[str, Any]) -> Answer:
        self.seen.append(body)
        return completion_answer(custom_id, body)


@pytest.fixture
def bodies() -> Bodies:
    return Bodies()


@pytest.fixture
async def fake(bodies: Bodies) -> AsyncIterator[FakeBatchUpstream]:
    async with FakeBatchUpstream(answer=bodies) as upstream:
        yield upstream


@pytest.fixture
def clock() -> SteppedClock:
    return SteppedClock()


def settings(
    fake: FakeBatchUpstream, directory: Path, *, native: bool = True, mock_first: bool = False
) -> GatewayConfig:
    providers = [
        ProviderConfig(
            name="openai",
            preset="openai",
            base_url=fake.base_url,
            api_key="sk-upstream-0123456789",
            models=[MODEL],
            timeout=5.0,
            priority=1 if mock_first else 0,
        )
    ]
    if mock_first:
        providers.append(ProviderConfig(name="local", type="mock", models=[MODEL]))
    return GatewayConfig(
        providers=providers,
        health=HealthConfig(interval=0),
        routing=RoutingConfig(retry_initial_delay=0.0, retry_max_delay=0.0),
        batches=BatchesConfig(enabled=True, native=native, directory=directory, poll_interval=0.01),
    )


@asynccontextmanager
async def serving(
    config: GatewayConfig, clock: SteppedClock
) -> AsyncIterator[tuple[Gateway, openai.AsyncOpenAI]]:
    """The gateway, and an SDK client talking to its app."""
    manager = ProviderManager.from_config(config, clock=clock)
    gateway = Gateway(manager=manager, config=config)
    app = gateway.app  # its routes, and the batch runner among its services, before it starts
    async with gateway:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as http:
            yield (
                gateway,
                openai.AsyncOpenAI(
                    base_url="http://gw/v1", api_key="k", http_client=http, max_retries=0
                ),
            )


def chat_line(custom_id: str, model: str = MODEL) -> dict[str, Any]:
    body = {"model": model, "messages": [{"role": "user", "content": f"id={custom_id}"}]}
    return {"custom_id": custom_id, "method": "POST", "url": CHAT, "body": body}


async def submit(client: openai.AsyncOpenAI, lines: list[dict[str, Any]]) -> str:
    content = "".join(json.dumps(line) + "\n" for line in lines).encode()
    uploaded = await client.files.create(file=("in.jsonl", content), purpose="batch")
    batch = await client.batches.create(
        input_file_id=uploaded.id,
        endpoint=CHAT,
        completion_window="24h",
        metadata={"run": "nightly"},
    )
    return batch.id


async def handed_over(fake: FakeBatchUpstream, clock: SteppedClock) -> str:
    """The upstream batch, once the gateway created it and waits to poll it."""

    async def polling() -> bool:
        return bool(fake.batches) and clock.sleeping > 0

    await until(polling)
    (upstream,) = fake.batches
    return upstream


async def polling(clock: SteppedClock) -> None:
    """Once the gateway waits to poll the upstream batch again."""

    async def waiting() -> bool:
        return clock.sleeping > 0

    await until(waiting)


async def step(clock: SteppedClock) -> None:
    """Let the gateway poll once more: once it waits, past its wait."""
    await polling(clock)
    clock.advance(POLL)


async def ended(client: openai.AsyncOpenAI, batch_id: str) -> Any:
    found: list[Any] = []

    async def final() -> bool:
        batch = await client.batches.retrieve(batch_id)
        found[:] = [batch]
        return batch.status in ("completed", "failed", "expired", "cancelled")

    await until(final)
    return found[0]


async def usage(gateway: Gateway) -> list[UsageRow]:
    """The usage the gateway accounted to its ``openai`` provider."""
    tenancy = gateway.tenancy
    await tenancy.flush_usage()
    day = UsageRow.day_of(tenancy.clock.time())
    rows = await tenancy.usage.report(since=day, until=day, group_by=("provider",))
    return [row for row in rows if row.provider == "openai"]


async def lines_of(client: openai.AsyncOpenAI, file_id: str | None) -> list[dict[str, Any]]:
    if file_id is None:
        return []
    content = await client.files.content(file_id)
    return [json.loads(line) for line in content.text.splitlines()]


async def test_a_batch_handed_over_is_answered_once_at_the_batch_price(
    fake: FakeBatchUpstream, bodies: Bodies, clock: SteppedClock, tmp_path: Path
) -> None:
    async with serving(settings(fake, tmp_path), clock) as (gateway, client):
        lines = [chat_line(f"q{i}", model=f"openai/{MODEL}") for i in range(3)]
        batch_id = await submit(client, lines)
        upstream = await handed_over(fake, clock)
        assert fake.batches[upstream]["metadata"] == {"leapasgi_batch": batch_id}
        running = await client.batches.retrieve(batch_id)
        assert running.status == "in_progress"
        assert running.metadata == {
            "run": "nightly",
            "leapasgi_executed_by": "openai (native batch)",
            "leapasgi_batch_rate": "0.5",
            "leapasgi_upstream_batch": upstream,
        }
        fake.start(upstream)
        fake.run(upstream, 1)
        await step(clock)

        async def progressed() -> bool:
            counts = (await client.batches.retrieve(batch_id)).request_counts
            return counts is not None and counts.completed == 1

        await until(progressed)
        fake.complete(upstream)
        await step(clock)
        done = await ended(client, batch_id)
        assert done.status == "completed"
        assert done.request_counts is not None
        assert (done.request_counts.completed, done.request_counts.failed) == (3, 0)
        assert done.usage is not None
        assert (done.usage.input_tokens, done.usage.output_tokens) == (30, 6)
        assert done.metadata is not None
        assert done.metadata["leapasgi_executed_by"] == "openai (native batch)"
        assert "leapasgi_fallback" not in done.metadata
        output = await lines_of(client, done.output_file_id)
        assert sorted(line["custom_id"] for line in output) == ["q0", "q1", "q2"]
        for line in output:
            assert line["response"]["status_code"] == 200
            assert line["response"]["body"]["object"] == "chat.completion"
        # Sent under the upstream's own model name; nothing went through its chat endpoint.
        assert {body["model"] for body in bodies.seen} == {MODEL}
        assert fake.chats == []
        assert fake.creates() == 1
        assert fake.files == {}, "the upstream files are deleted once the answers are kept"
        rows = await usage(gateway)
        assert sum(row.requests for row in rows) == 3
        assert sum(row.cost_usd for row in rows) == pytest.approx(3 * LINE_COST)


async def test_a_cancel_reaches_the_upstream_batch_and_keeps_what_it_answered(
    fake: FakeBatchUpstream, clock: SteppedClock, tmp_path: Path
) -> None:
    async with serving(settings(fake, tmp_path), clock) as (_, client):
        batch_id = await submit(client, [chat_line(f"c{i}") for i in range(3)])
        upstream = await handed_over(fake, clock)
        fake.start(upstream)
        fake.run(upstream, 1)
        cancelling = await client.batches.cancel(batch_id)
        assert cancelling.status == "cancelling"

        async def cancelled_upstream() -> bool:
            return fake.batches[upstream]["status"] == "cancelling" and clock.sleeping > 0

        await until(cancelled_upstream)
        fake.settle_cancel(upstream)
        clock.advance(POLL)
        done = await ended(client, batch_id)
        assert done.status == "cancelled"
        output = await lines_of(client, done.output_file_id)
        errors = await lines_of(client, done.error_file_id)
        assert [line["custom_id"] for line in output] == ["c0"]
        assert sorted(line["custom_id"] for line in errors) == ["c1", "c2"]
        assert {line["error"]["code"] for line in errors} == {"batch_cancelled"}
        assert fake.chats == [], "a cancelled batch's lines are not run here instead"


async def test_a_restarted_gateway_follows_the_same_upstream_batch(
    fake: FakeBatchUpstream, clock: SteppedClock, tmp_path: Path
) -> None:
    config = settings(fake, tmp_path)
    async with serving(config, clock) as (_, client):
        batch_id = await submit(client, [chat_line(f"r{i}") for i in range(4)])
        upstream = await handed_over(fake, clock)
        fake.start(upstream)
        fake.run(upstream, 2)
    async with serving(config, clock) as (_, client):
        await polling(clock)  # the same upstream batch, followed again
        fake.complete(upstream)
        clock.advance(POLL)
        done = await ended(client, batch_id)
        assert done.status == "completed"
        assert done.metadata is not None
        assert done.metadata["leapasgi_upstream_batch"] == upstream
        output = await lines_of(client, done.output_file_id)
        assert sorted(line["custom_id"] for line in output) == ["r0", "r1", "r2", "r3"]
    assert fake.creates() == 1
    uploads = [path for method, path, _ in fake.seen if (method, path) == ("POST", "/v1/files")]
    assert len(uploads) == 1


async def test_an_upstream_batch_that_failed_runs_through_the_gateway(
    fake: FakeBatchUpstream, clock: SteppedClock, tmp_path: Path
) -> None:
    async with serving(settings(fake, tmp_path), clock) as (_, client):
        batch_id = await submit(client, [chat_line(f"f{i}") for i in range(3)])
        upstream = await handed_over(fake, clock)
        fake.fail(
            upstream,
            {"code": "token_limit_exceeded", "message": "Enqueued token limit reached."},
        )
        await step(clock)
        done = await ended(client, batch_id)
        assert done.status == "completed"
        assert done.metadata is not None
        assert done.metadata["leapasgi_executed_by"] == "gateway"
        assert "token_limit_exceeded" in done.metadata["leapasgi_fallback"]
        assert done.metadata["leapasgi_upstream_batch"] == upstream
        output = await lines_of(client, done.output_file_id)
        assert sorted(line["custom_id"] for line in output) == ["f0", "f1", "f2"]
        assert len(fake.chats) == 3
        assert fake.files == {}


async def test_lines_the_upstream_did_not_answer_run_through_the_gateway(
    fake: FakeBatchUpstream, clock: SteppedClock, tmp_path: Path
) -> None:
    async with serving(settings(fake, tmp_path), clock) as (gateway, client):
        batch_id = await submit(client, [chat_line(f"m{i}") for i in range(4)])
        upstream = await handed_over(fake, clock)
        fake.start(upstream)
        fake.run(upstream, 3)
        fake.expire(upstream)  # m3 never ran: a batch_expired line
        output_file = fake.batches[upstream]["output_file_id"]
        kept = fake.files[output_file]
        # m1's answer is missing from the output file altogether.
        kept.data = b"".join(
            line + b"\n" for line in kept.data.splitlines() if b'"line-2"' not in line
        )
        await step(clock)
        done = await ended(client, batch_id)
        assert done.status == "completed"
        assert done.metadata is not None
        assert done.metadata["leapasgi_executed_by"] == "openai (native batch)"
        assert done.metadata["leapasgi_fallback"].startswith("2 lines ran through the gateway")
        output = await lines_of(client, done.output_file_id)
        assert sorted(line["custom_id"] for line in output) == ["m0", "m1", "m2", "m3"]
        assert len(fake.chats) == 2
        rows = await usage(gateway)
        # Two at the batch price, two at the standard price (10 in, 2 out each).
        standard = (10 * 0.15 + 2 * 0.6) / 1_000_000
        assert sum(row.cost_usd for row in rows) == pytest.approx(2 * LINE_COST + 2 * standard)


@pytest.mark.parametrize(
    ("native", "mock_first", "model"),
    [(False, False, MODEL), (True, True, MODEL), (True, False, "unpriced")],
    ids=["handover-off", "first-choice-not-native", "no-batch-price"],
)
async def test_the_gateway_runs_the_batch_itself_otherwise(
    fake: FakeBatchUpstream,
    clock: SteppedClock,
    tmp_path: Path,
    native: bool,
    mock_first: bool,
    model: str,
) -> None:
    config = settings(fake, tmp_path, native=native, mock_first=mock_first)
    config.providers[0].models.append("unpriced")
    async with serving(config, clock) as (_, client):
        batch_id = await submit(client, [chat_line(f"g{i}", model=model) for i in range(2)])
        done = await ended(client, batch_id)
        assert done.status == "completed"
        assert done.metadata == {"run": "nightly", "leapasgi_executed_by": "gateway"}
        output = await lines_of(client, done.output_file_id)
        assert sorted(line["custom_id"] for line in output) == ["g0", "g1"]
    assert fake.creates() == 0
    assert len(fake.chats) == (0 if mock_first else 2)


async def test_the_gateways_metadata_keys_are_its_own(
    fake: FakeBatchUpstream, clock: SteppedClock, tmp_path: Path
) -> None:
    async with serving(settings(fake, tmp_path), clock) as (_, client):
        content = (json.dumps(chat_line("x")) + "\n").encode()
        uploaded = await client.files.create(file=("in.jsonl", content), purpose="batch")
        with pytest.raises(openai.BadRequestError) as caught:
            await client.batches.create(
                input_file_id=uploaded.id,
                endpoint=CHAT,
                completion_window="24h",
                metadata={"leapasgi_executed_by": "someone else"},
            )
        assert caught.value.body["param"] == "metadata"  # type: ignore[index]
