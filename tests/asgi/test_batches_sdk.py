"""The Files and Batch APIs through the official openai SDK over real HTTP, on asyncio's loop
and uvloop's: a 1,000-line batch over faulty mock providers answered exactly once per line,
cancelling, the other endpoints, per-tenant ownership, and errors in OpenAI's shape."""

from __future__ import annotations

import io
import json
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
import openai
import pytest
from pydantic import SecretStr

from leapasgi.config import BatchesConfig, ProviderConfig, ServerConfig
from leapasgi.providers.mock import Fault, MockProvider
from tests.asgi.live_server import LOOPS, LiveGateway, fast_routing, live_gateway
from tests.asgi.sdk_wire import assert_openai_error_body

pytestmark = pytest.mark.anyio

CHAT = "/v1/chat/completions"
# How long a test waits for a batch to end, at most.
BATCH_WAIT = 30.0
KEYS = ("sk-team-a-0123456789", "sk-team-b-0123456789")


def two_mocks(upstreams: object = ()) -> list[ProviderConfig]:
    """A primary mock and a backup the dispatcher fails over to."""
    return [
        ProviderConfig(name="primary", type="mock", models=["mock-chat", "mock-embed"]),
        ProviderConfig(name="backup", type="mock", models=["mock-chat"], priority=1),
    ]


@pytest.fixture(scope="module", params=LOOPS)
def live(request: pytest.FixtureRequest) -> Iterator[LiveGateway]:
    with live_gateway(
        two_mocks,
        loop=request.param,
        routing=fast_routing(),
        batches=BatchesConfig(enabled=True, concurrency=16, retry_max_delay=0.05),
        server=ServerConfig(api_keys=[SecretStr(k) for k in KEYS]),
    ) as gateway:
        yield gateway


@pytest.fixture
async def client(live: LiveGateway) -> AsyncIterator[openai.AsyncOpenAI]:
    """A client of the first tenant."""
    async with live.async_client(api_key=KEYS[0]) as first:
        yield first


@pytest.fixture
async def other(live: LiveGateway) -> AsyncIterator[openai.AsyncOpenAI]:
    """A client of the second tenant."""
    async with live.async_client(api_key=KEYS[1]) as second:
        yield second


def chat_line(custom_id: str, **body: Any) -> dict[str, Any]:
    content = f"id={custom_id}"
    body = {"model": "mock-chat", "messages": [{"role": "user", "content": content}]} | body
    return {"custom_id": custom_id, "method": "POST", "url": CHAT, "body": body}


def jsonl(lines: list[dict[str, Any]]) -> io.BytesIO:
    return io.BytesIO("".join(json.dumps(line) + "\n" for line in lines).encode())


async def finished(client: openai.AsyncOpenAI, batch_id: str) -> Any:
    """The batch once it reached a final status."""
    with anyio.fail_after(BATCH_WAIT):
        while True:
            batch = await client.batches.retrieve(batch_id)
            if batch.status in ("completed", "failed", "expired", "cancelled"):
                return batch
            await anyio.sleep(0.02)


async def progressed(client: openai.AsyncOpenAI, batch_id: str, lines: int) -> None:
    """Once at least ``lines`` of the batch are answered."""
    with anyio.fail_after(BATCH_WAIT):
        while True:
            batch = await client.batches.retrieve(batch_id)
            if batch.request_counts is not None and batch.request_counts.completed >= lines:
                return
            await anyio.sleep(0.01)


async def lines_of(client: openai.AsyncOpenAI, file_id: str | None) -> list[dict[str, Any]]:
    if file_id is None:
        return []
    content = await client.files.content(file_id)
    return [json.loads(line) for line in content.text.splitlines()]


def answered_by(mock: MockProvider, faults: set[int]) -> Counter[str]:
    """custom_id -> answers the mock gave (its requests that were not faulted)."""
    answered: Counter[str] = Counter()
    for index, request in enumerate(mock.requests):
        if index not in faults:
            text = str(request.messages[-1].content)
            answered[text.removeprefix("id=")] += 1
    return answered


async def test_a_thousand_lines_over_faulty_providers_are_each_answered_exactly_once(
    live: LiveGateway, client: openai.AsyncOpenAI
) -> None:
    primary, backup = live.mock("primary"), live.mock("backup")
    primary.requests.clear()
    backup.requests.clear()
    # Every seventh request to the primary fails (503, a refused connection, a 429): those
    # lines are retried or fail over to the backup.
    kinds = [Fault.status(503), Fault.connect_error(), Fault.status(429, retry_after=0.01)]
    script: list[Fault | None] = []
    # Exactly as many as the primary certainly gets: each line goes to it first.
    for i in range(1000):
        script.append(kinds[i % 3] if i % 7 == 3 else None)
    faulted = {i for i, fault in enumerate(script) if fault is not None}
    primary.inject(*script)
    lines = [chat_line(f"line-{i:04}") for i in range(1000)]
    uploaded = await client.files.create(file=("eval.jsonl", jsonl(lines)), purpose="batch")
    assert uploaded.purpose == "batch"
    assert uploaded.bytes == len(jsonl(lines).getvalue())
    batch = await client.batches.create(
        input_file_id=uploaded.id,
        endpoint=CHAT,
        completion_window="24h",
        metadata={"run": "nightly"},
    )
    assert batch.status == "validating"
    assert batch.metadata == {"run": "nightly"}
    done = await finished(client, batch.id)
    assert done.status == "completed"
    assert done.request_counts is not None
    assert (done.request_counts.total, done.request_counts.completed) == (1000, 1000)
    assert done.request_counts.failed == 0
    assert done.error_file_id is None
    assert done.in_progress_at is not None
    assert done.completed_at is not None
    assert done.usage is not None
    assert done.usage.total_tokens > 0
    output = await lines_of(client, done.output_file_id)
    assert sorted(line["custom_id"] for line in output) == [f"line-{i:04}" for i in range(1000)]
    for line in output:
        assert line["error"] is None
        assert line["id"].startswith("batch_req_")
        assert line["response"]["status_code"] == 200
        body = line["response"]["body"]
        assert body["object"] == "chat.completion"
        assert body["choices"][0]["message"]["content"] == "You said: id=" + line["custom_id"]
    answers = answered_by(primary, faulted) + answered_by(backup, set())
    assert set(answers) == {f"line-{i:04}" for i in range(1000)}
    assert set(answers.values()) == {1}
    assert backup.requests, "some lines failed over"


async def test_a_cancelled_batch_stops_and_reports_its_unanswered_lines(
    live: LiveGateway, client: openai.AsyncOpenAI
) -> None:
    primary = live.mock("primary")
    primary.fail_always(Fault.delay(0.05))
    try:
        lines = [chat_line(f"c{i}") for i in range(400)]
        uploaded = await client.files.create(file=("c.jsonl", jsonl(lines)), purpose="batch")
        batch = await client.batches.create(
            input_file_id=uploaded.id, endpoint=CHAT, completion_window="24h"
        )
        await progressed(client, batch.id, 20)
        cancelling = await client.batches.cancel(batch.id)
        assert cancelling.status in ("cancelling", "cancelled")
        assert cancelling.cancelling_at is not None
        done = await finished(client, batch.id)
        assert done.status == "cancelled"
        assert done.cancelled_at is not None
        sent = len(primary.requests)
        await anyio.sleep(0.2)
        assert len(primary.requests) == sent, "no line is sent after the batch was cancelled"
        counts = done.request_counts
        assert counts is not None
        assert counts.completed < 400
        assert counts.completed + counts.failed == 400
        output = await lines_of(client, done.output_file_id)
        errors = await lines_of(client, done.error_file_id)
        assert len(output) == counts.completed
        assert {line["error"]["code"] for line in errors} == {"batch_cancelled"}
        assert {line["custom_id"] for line in output + errors} == {f"c{i}" for i in range(400)}
        again = await client.batches.cancel(batch.id)
        assert again.status == "cancelled"
    finally:
        primary.fail_always(None)


async def test_embeddings_and_responses_batches(client: openai.AsyncOpenAI) -> None:
    embed = [
        {
            "custom_id": f"e{i}",
            "method": "POST",
            "url": "/v1/embeddings",
            "body": {"model": "mock-embed", "input": f"text {i}", "dimensions": 4},
        }
        for i in range(3)
    ]
    uploaded = await client.files.create(file=("e.jsonl", jsonl(embed)), purpose="batch")
    batch = await client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/embeddings", completion_window="24h"
    )
    done = await finished(client, batch.id)
    assert done.status == "completed"
    for line in await lines_of(client, done.output_file_id):
        assert len(line["response"]["body"]["data"][0]["embedding"]) == 4
    turns = [
        {
            "custom_id": f"r{i}",
            "method": "POST",
            "url": "/v1/responses",
            "body": {"model": "mock-chat", "input": f"question {i}"},
        }
        for i in range(3)
    ]
    uploaded = await client.files.create(file=("r.jsonl", jsonl(turns)), purpose="batch")
    batch = await client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/responses", completion_window="24h"
    )
    done = await finished(client, batch.id)
    assert done.status == "completed"
    output = await lines_of(client, done.output_file_id)
    assert {line["response"]["body"]["object"] for line in output} == {"response"}
    # Stored like any response: the next turn can follow one of them.
    first = output[0]["response"]["body"]
    follow = await client.responses.create(
        model="mock-chat", input="and then?", previous_response_id=first["id"]
    )
    assert follow.status == "completed"


async def test_a_line_that_fails_for_good_goes_to_the_error_file(
    client: openai.AsyncOpenAI,
) -> None:
    lines = [chat_line("good"), chat_line("bad", model="no-such-model")]
    uploaded = await client.files.create(file=("m.jsonl", jsonl(lines)), purpose="batch")
    batch = await client.batches.create(
        input_file_id=uploaded.id, endpoint=CHAT, completion_window="24h"
    )
    done = await finished(client, batch.id)
    assert done.status == "completed"
    assert (done.request_counts.completed, done.request_counts.failed) == (1, 1)  # type: ignore[union-attr]
    (error,) = await lines_of(client, done.error_file_id)
    assert error["custom_id"] == "bad"
    assert error["response"]["status_code"] == 404
    assert error["response"]["body"]["error"]["code"] == "model_not_found"


async def test_a_batch_whose_lines_call_another_endpoint_fails_naming_them(
    client: openai.AsyncOpenAI,
) -> None:
    uploaded = await client.files.create(file=("x.jsonl", jsonl([chat_line("a")])), purpose="batch")
    batch = await client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/embeddings", completion_window="24h"
    )
    done = await finished(client, batch.id)
    assert done.status == "failed"
    assert done.failed_at is not None
    assert done.errors is not None
    assert done.errors.data is not None
    (error,) = done.errors.data
    assert (error.code, error.line, error.param) == ("mismatched_endpoint", 1, "url")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b'{"custom_id": "a"', "Line 1: not valid JSON"),
        (
            b'{"custom_id":"a","method":"POST","url":"/v1/chat/completions","body":{"model":"m"}}\n'
            b'{"custom_id":"a","method":"POST","url":"/v1/chat/completions","body":{"model":"m"}}',
            "Line 2: custom_id repeats",
        ),
        (
            b'{"custom_id":"a","method":"GET","url":"/v1/chat/completions","body":{}}',
            'Line 1: method must be "POST"',
        ),
        (
            b'{"custom_id":"a","method":"POST","url":"/v1/images","body":{"model":"m"}}',
            "Line 1: url must be one of",
        ),
        (
            b'\n{"custom_id":"a","method":"POST","url":"/v1/embeddings","body":{"input":"x"}}',
            "Line 2: body.model",
        ),
        (b"", "The file holds no requests"),
    ],
)
async def test_an_upload_is_checked_line_by_line(
    client: openai.AsyncOpenAI, content: bytes, message: str
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await client.files.create(file=("bad.jsonl", io.BytesIO(content)), purpose="batch")
    assert_openai_error_body(caught.value.response)
    assert caught.value.body["message"].startswith(message)  # type: ignore[index]


async def test_uploads_are_capped_and_only_batch_files_are_kept(client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await client.files.create(file=("f.jsonl", jsonl([chat_line("a")])), purpose="user_data")
    assert caught.value.body["param"] == "purpose"  # type: ignore[index]
    long_line = chat_line("long", metadata={"pad": "x" * 2_000_000})
    with pytest.raises(openai.APIStatusError) as too_long:
        await client.files.create(file=("l.jsonl", jsonl([long_line])), purpose="batch")
    assert too_long.value.status_code == 413
    assert "Line 1" in too_long.value.message


async def test_files_and_batches_are_their_tenants_own(
    live: LiveGateway, client: openai.AsyncOpenAI, other: openai.AsyncOpenAI
) -> None:
    owner = client
    uploaded = await owner.files.create(file=("o.jsonl", jsonl([chat_line("a")])), purpose="batch")
    batch = await owner.batches.create(
        input_file_id=uploaded.id, endpoint=CHAT, completion_window="24h"
    )
    for call in (
        other.files.retrieve(uploaded.id),
        other.files.content(uploaded.id),
        other.files.delete(uploaded.id),
        other.batches.retrieve(batch.id),
        other.batches.cancel(batch.id),
        other.batches.create(input_file_id=uploaded.id, endpoint=CHAT, completion_window="24h"),
    ):
        with pytest.raises(openai.NotFoundError) as caught:
            await call
        assert_openai_error_body(caught.value.response)
    assert batch.id not in [b.id async for b in other.batches.list()]
    assert uploaded.id not in [f.id async for f in other.files.list()]
    async with live.async_client(api_key="sk-nobody-0123456") as nobody:
        with pytest.raises(openai.AuthenticationError):
            await nobody.batches.list()
    await finished(owner, batch.id)


async def test_lists_page_with_after_and_limit(other: openai.AsyncOpenAI) -> None:
    client = other
    uploaded = await client.files.create(file=("p.jsonl", jsonl([chat_line("a")])), purpose="batch")
    made = []
    for _ in range(5):
        batch = await client.batches.create(
            input_file_id=uploaded.id, endpoint=CHAT, completion_window="24h"
        )
        made.append(batch.id)
    first = await client.batches.list(limit=2)
    assert [b.id for b in first.data] == made[::-1][:2]
    assert first.has_more
    paged = [b.id async for b in client.batches.list(limit=2)]
    assert paged[:5] == made[::-1]
    files = await client.files.list(purpose="batch", order="asc", limit=1)
    assert files.data[0].id == uploaded.id
    with pytest.raises(openai.BadRequestError):
        await client.batches.list(limit=101)
    for batch_id in made:
        await finished(client, batch_id)


async def test_a_file_is_deleted_once_no_batch_reads_it(client: openai.AsyncOpenAI) -> None:
    uploaded = await client.files.create(file=("d.jsonl", jsonl([chat_line("a")])), purpose="batch")
    deleted = await client.files.delete(uploaded.id)
    assert deleted.deleted
    with pytest.raises(openai.NotFoundError):
        await client.files.retrieve(uploaded.id)
    with pytest.raises(openai.NotFoundError) as caught:
        await client.batches.create(
            input_file_id=uploaded.id, endpoint=CHAT, completion_window="24h"
        )
    assert caught.value.body["param"] == "input_file_id"  # type: ignore[index]


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"completion_window": "1h"}, "completion_window"),
        ({"endpoint": "/v1/completions"}, "endpoint"),
        ({"metadata": {"k": "v" * 513}}, "metadata"),
        ({"output_expires_after": {"anchor": "created_at", "seconds": 60}}, None),
    ],
)
async def test_bad_batch_parameters(
    client: openai.AsyncOpenAI, params: dict[str, Any], param: str | None
) -> None:
    uploaded = await client.files.create(file=("b.jsonl", jsonl([chat_line("a")])), purpose="batch")
    arguments: dict[str, Any] = {
        "input_file_id": uploaded.id,
        "endpoint": CHAT,
        "completion_window": "24h",
    } | params
    with pytest.raises(openai.BadRequestError) as caught:
        await client.batches.create(**arguments)
    assert_openai_error_body(caught.value.response)
    if param is not None:
        assert caught.value.body["param"] == param  # type: ignore[index]
