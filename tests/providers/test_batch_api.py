"""Handing a batch over to an OpenAI-compatible batch API, against a fake Files + Batches
upstream on 127.0.0.1 that moves only when the test says so."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from pydantic import SecretStr

from leapasgi.exceptions import (
    AuthenticationError,
    ConflictError,
    DeadlineExceededError,
    FirstByteTimeoutError,
    IdleTimeoutError,
    InvalidRequestError,
    LeapError,
    MalformedResponseError,
    NotFoundError,
    ResponseTooLargeError,
    UpstreamUnavailableError,
)
from leapasgi.providers.base import Timeouts
from leapasgi.providers.batch_api import (
    FIRST_POLL_DELAY,
    MAX_POLL_DELAY,
    BatchAPIClient,
    native_batch_support,
    poll_delay,
)
from leapasgi.providers.batch_results import BatchResult, ProblemKind, ResultTally
from leapasgi.providers.batch_wire import BatchStatus, InputLine, UpstreamBatch
from leapasgi.providers.settings import ProviderSettings
from leapasgi.redact import REDACTED
from tests.fake_batch_upstream import Answer, FakeBatchUpstream, completion_answer

pytestmark = pytest.mark.anyio

KEY = "sk-canary-batch-7f3a9c1e5b2d4680"
FAST = Timeouts(connect=0.5, first_byte=0.5, idle=0.5, total=5.0)
IDS = [f"r-{i}" for i in range(100)]


def answers(custom_id: str, body: dict[str, Any]) -> Answer:
    """Most requests succeed; three fail as the upstream would report them; one answer
    echoes the key."""
    if custom_id in ("r-7", "r-42"):
        return 400, {"error": {"message": "Bad temperature", "type": "invalid_request_error"}}
    if custom_id == "r-99":
        return 500, {"error": {"message": "The server had an error", "type": "server_error"}}
    status, answer = completion_answer(custom_id, body)
    if custom_id == "r-13":
        answer["choices"][0]["message"]["content"] = f"your key is {KEY}"
    return status, answer


def lines(ids: list[str] = IDS, *, model: str = "gpt-4o-mini") -> list[InputLine]:
    return [
        InputLine(i, {"model": model, "messages": [{"role": "user", "content": f"q {i}"}]})
        for i in ids
    ]


def settings(fake: FakeBatchUpstream, **fields: Any) -> ProviderSettings:
    fields.setdefault("timeouts", FAST)
    return ProviderSettings(
        name="openai", base_url=fake.base_url, api_key=SecretStr(KEY), preset="openai", **fields
    )


def clean(error: BaseException) -> BaseException:
    """``error``, having checked that the key shows nowhere in it."""
    texts = [str(error), repr(error)]
    if isinstance(error, LeapError):
        texts += [error.message, json.dumps(error.to_body()), str(error.code), str(error.param)]
    for text in texts:
        assert KEY not in text
    return error


@pytest.fixture
async def fake() -> AsyncIterator[FakeBatchUpstream]:
    async with FakeBatchUpstream(key=KEY, answer=answers) as fake:
        yield fake


@pytest.fixture
async def client(fake: FakeBatchUpstream) -> AsyncIterator[BatchAPIClient]:
    async with BatchAPIClient(settings(fake)) as client:
        yield client


async def submit(client: BatchAPIClient, ids: list[str] = IDS) -> UpstreamBatch:
    uploaded = await client.upload(lines(ids))
    return await client.create(uploaded.id, metadata={"leapasgi_batch": "batch_gw_1"})


async def collect(
    client: BatchAPIClient,
    batch: UpstreamBatch,
    tally: ResultTally,
    *,
    into: dict[str, BatchResult] | None = None,
    max_bytes: int | None = None,
) -> dict[str, BatchResult]:
    """Every answer, each custom id at most once; ``into`` keeps them should the download
    fail."""
    found: dict[str, BatchResult] = {} if into is None else into
    async for result in client.results(batch, tally, max_bytes=max_bytes):
        assert result.custom_id not in found
        found[result.custom_id] = result
    return found


async def test_a_batch_of_100_goes_round_trip(
    fake: FakeBatchUpstream, client: BatchAPIClient
) -> None:
    uploaded = await client.upload(lines())
    stored = fake.files[uploaded.id]
    assert stored.purpose == "batch"
    assert uploaded.bytes == len(stored.data)
    sent = [json.loads(line) for line in stored.data.splitlines()]
    assert [line["custom_id"] for line in sent] == IDS
    assert {line["method"] for line in sent} == {"POST"}
    assert {line["url"] for line in sent} == {"/v1/chat/completions"}
    assert {line["body"]["model"] for line in sent} == {"gpt-4o-mini"}

    batch = await client.create(uploaded.id, metadata={"leapasgi_batch": "batch_gw_1"})
    assert batch.status is BatchStatus.VALIDATING
    assert batch.input_file_id == uploaded.id
    assert batch.metadata == {"leapasgi_batch": "batch_gw_1"}
    assert fake.batches[batch.id]["completion_window"] == "24h"
    assert all(headers["Authorization"] == f"Bearer {KEY}" for _, _, headers in fake.seen)

    fake.start(batch.id)
    assert (await client.retrieve(batch.id)).status is BatchStatus.IN_PROGRESS
    fake.run(batch.id, 40)
    midway = await client.retrieve(batch.id)
    assert midway.request_counts is not None
    counts = midway.request_counts
    assert (counts.total, counts.completed, counts.failed) == (100, 39, 1)  # r-7
    assert not midway.status.terminal
    fake.finalize(batch.id)
    assert (await client.retrieve(batch.id)).status is BatchStatus.FINALIZING
    fake.complete(batch.id)

    done = await client.retrieve(batch.id)
    assert done.status is BatchStatus.COMPLETED
    assert done.status.terminal
    assert done.status.has_results
    assert done.request_counts is not None
    assert (done.request_counts.completed, done.request_counts.failed) == (97, 3)
    assert done.output_file_id is not None
    assert done.error_file_id is not None

    tally = client.tally(IDS)
    found = await collect(client, done, tally)
    assert sorted(found) == sorted(IDS)
    assert tally.problems == []
    assert tally.missing() == frozenset()
    assert tally.answered == 100
    assert sum(result.ok for result in found.values()) == 97
    ok = found["r-1"]
    assert ok.status_code == 200
    assert ok.error is None
    assert ok.request_id == "req_2"
    assert ok.body is not None
    assert ok.body["choices"][0]["message"]["content"] == "answer to r-1"
    refused = found["r-7"]
    assert not refused.ok
    assert refused.status_code == 400
    assert refused.error is not None
    assert refused.error.message == "Bad temperature"
    assert found["r-99"].status_code == 500
    # The key an answer echoed is scrubbed before the line is parsed.
    echoed = found["r-13"].body
    assert echoed is not None
    assert echoed["choices"][0]["message"]["content"] == f"your key is {REDACTED}"


async def test_a_cancelled_batch_answers_what_ran_and_names_the_rest(
    fake: FakeBatchUpstream, client: BatchAPIClient
) -> None:
    batch = await submit(client)
    fake.start(batch.id)
    fake.run(batch.id, 30)
    cancelling = await client.cancel(batch.id)
    assert cancelling.status is BatchStatus.CANCELLING
    assert not cancelling.status.terminal
    fake.settle_cancel(batch.id)
    cancelled = await client.retrieve(batch.id)
    assert cancelled.status is BatchStatus.CANCELLED
    assert cancelled.status.has_results

    tally = client.tally(IDS)
    found = await collect(client, cancelled, tally)
    assert sorted(found) == sorted(IDS)
    assert sum(result.ok for result in found.values()) == 29  # r-7 failed on its own
    stopped = [result for result in found.values() if result.status_code is None]
    assert len(stopped) == 70
    assert all(r.error is not None and r.error.code == "batch_cancelled" for r in stopped)
    assert all(r.body is None for r in stopped)
    # Cancelling again is the upstream's refusal, as a LeapError.
    with pytest.raises(ConflictError) as refused:
        await client.cancel(batch.id)
    clean(refused.value)


async def test_an_expired_batch_answers_what_ran(
    fake: FakeBatchUpstream, client: BatchAPIClient
) -> None:
    batch = await submit(client)
    fake.start(batch.id)
    fake.run(batch.id, 60)
    fake.expire(batch.id)
    expired = await client.retrieve(batch.id)
    assert expired.status is BatchStatus.EXPIRED
    assert expired.status.has_results

    tally = client.tally(IDS)
    found = await collect(client, expired, tally)
    assert sorted(found) == sorted(IDS)
    assert tally.missing() == frozenset()
    late = [r for r in found.values() if r.error is not None and r.error.code == "batch_expired"]
    assert sorted(r.custom_id for r in late) == sorted(IDS[60:])


async def test_a_failed_batch_has_issues_and_no_results(
    fake: FakeBatchUpstream, client: BatchAPIClient
) -> None:
    batch = await submit(client)
    fake.fail(
        batch.id,
        {"code": "invalid_json_line", "message": f"line 3 is bad ({KEY})", "line": 3},
        {"code": "too_large", "message": "too many requests", "param": "input_file_id"},
    )
    failed = await client.retrieve(batch.id)
    assert failed.status is BatchStatus.FAILED
    assert failed.status.terminal
    assert not failed.status.has_results
    first, second = failed.issues
    assert first.code == "invalid_json_line"
    assert first.line == 3
    assert first.message == f"line 3 is bad ({REDACTED})"
    assert second.param == "input_file_id"
    with pytest.raises(InvalidRequestError) as early:
        await collect(client, failed, client.tally(IDS))
    clean(early.value)


async def test_find_recovers_a_batch_whose_creation_was_not_seen(
    fake: FakeBatchUpstream, client: BatchAPIClient
) -> None:
    uploaded = await client.upload(lines(IDS[:3]))
    other = await client.upload(lines(IDS[3:6]))
    batch = await client.create(uploaded.id)
    # More batches than one page, all newer than the one sought.
    spare = await client.upload(lines(IDS[6:8]))
    for _ in range(150):
        await client.create(spare.id)
    found = await client.find(uploaded.id)
    assert found is not None
    assert found.id == batch.id
    assert await client.find(other.id) is None
    pages = [path for method, path, _ in fake.seen if method == "GET" and "/batches" in path]
    assert any("after=" in path for path in pages)


async def test_files_can_be_deleted(fake: FakeBatchUpstream, client: BatchAPIClient) -> None:
    uploaded = await client.upload(lines(IDS[:2]))
    assert await client.delete_file(uploaded.id) is True
    assert uploaded.id not in fake.files
    with pytest.raises(NotFoundError) as gone:
        await client.delete_file(uploaded.id)
    clean(gone.value)


async def test_a_resumed_download_passes_over_the_answers_already_kept(
    fake: FakeBatchUpstream, client: BatchAPIClient
) -> None:
    batch = await submit(client)
    fake.complete(batch.id)
    done = await client.retrieve(batch.id)
    tally = client.tally(IDS, kept=IDS[:50])
    found = await collect(client, done, tally)
    assert sorted(found) == sorted(IDS[50:])
    assert tally.problems == []
    assert tally.missing() == frozenset()


async def test_a_large_input_file_is_uploaded_whole(
    fake: FakeBatchUpstream, client: BatchAPIClient
) -> None:
    ids = [f"big-{i}" for i in range(3000)]
    big = [
        InputLine(i, {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": i * 40}]})
        for i in ids
    ]
    uploaded = await client.upload(big)
    stored = fake.files[uploaded.id].data
    assert len(stored) > 1024 * 1024
    assert [json.loads(line)["custom_id"] for line in stored.splitlines()] == ids


@pytest.mark.parametrize(
    "answer",
    [
        {"id": "../files", "object": "file", "bytes": 10, "purpose": "batch"},
        {"object": "file", "bytes": 10},
        ["file-1"],
    ],
)
async def test_a_hostile_file_object_is_refused(
    fake: FakeBatchUpstream, client: BatchAPIClient, answer: Any
) -> None:
    fake.fail_next(200, answer)
    with pytest.raises(MalformedResponseError) as bad:
        await client.upload(lines(IDS[:1]))
    clean(bad.value)


async def test_lines_split_across_reads_are_put_back_together(fake: FakeBatchUpstream) -> None:
    fake.chunk_size = 7
    async with BatchAPIClient(settings(fake)) as client:
        batch = await submit(client, IDS[:20])
        fake.complete(batch.id)
        tally = client.tally(IDS[:20])
        found = await collect(client, await client.retrieve(batch.id), tally)
    assert sorted(found) == sorted(IDS[:20])
    assert tally.problems == []


async def test_unknown_and_repeated_custom_ids_are_recorded_never_answered(
    fake: FakeBatchUpstream, client: BatchAPIClient
) -> None:
    batch = await submit(client, IDS[:10])
    fake.complete(batch.id)
    done = await client.retrieve(batch.id)
    assert done.output_file_id is not None
    original = fake.files[done.output_file_id].data
    first = json.loads(original.splitlines()[0])
    intruder = {**first, "custom_id": "intruder"}
    again = json.loads(json.dumps(first))
    again["response"]["body"]["choices"][0]["message"]["content"] = "a second answer"
    fake.files[done.output_file_id].data = (
        original + json.dumps(intruder).encode() + b"\n" + json.dumps(again).encode() + b"\n"
    )

    tally = client.tally(IDS[:10])
    found = await collect(client, done, tally)
    assert sorted(found) == sorted(IDS[:10])
    body = found[first["custom_id"]].body
    assert body is not None
    assert body["choices"][0]["message"]["content"] == f"answer to {first['custom_id']}"
    kinds = [(p.kind, p.custom_id, p.file) for p in tally.problems]
    assert kinds == [
        (ProblemKind.UNKNOWN_ID, None, "output"),
        (ProblemKind.DUPLICATE_ID, first["custom_id"], "output"),
    ]
    assert "intruder" not in repr(tally.problems)


async def test_malformed_lines_are_refused_with_a_clear_reason(
    fake: FakeBatchUpstream, client: BatchAPIClient
) -> None:
    ids = IDS[:7]  # none of which fails on its own
    batch = await submit(client, ids)
    fake.run(batch.id)
    fake.complete(batch.id)
    done = await client.retrieve(batch.id)
    assert done.output_file_id is not None
    good = [json.loads(line) for line in fake.files[done.output_file_id].data.splitlines()]

    def bent(index: int, **change: Any) -> bytes:
        line = json.loads(json.dumps(good[index]))
        for key, value in change.items():
            if key == "status_code":
                line["response"]["status_code"] = value
            else:
                line[key] = value
        return json.dumps(line).encode()

    bad_body = json.loads(json.dumps(good[4]))
    bad_body["response"]["body"] = "not an object"
    fake.files[done.output_file_id].data = b"\n".join(
        [
            b"{not json",
            b"[1, 2]",
            bent(0, status_code=True),
            bent(1, status_code=None),
            bent(2, response=None, error=None),
            json.dumps(bad_body).encode(),
            b"\xff\xfe",
            b"[" * 100_000 + b"]" * 100_000,
            b"",
            bent(3),
            bent(5) + b"\r",
            bent(6),
        ]
    )  # the last line without its newline
    tally = client.tally(ids)
    found = await collect(client, done, tally)
    assert sorted(found) == sorted(good[i]["custom_id"] for i in (3, 5, 6))
    details = [(p.line, p.kind, p.detail) for p in tally.problems]
    assert details == [
        (1, ProblemKind.MALFORMED, "line 1 is not valid JSON"),
        (2, ProblemKind.MALFORMED, "line 2 is not a JSON object"),
        (3, ProblemKind.MALFORMED, "line 3 has no HTTP status_code"),
        (4, ProblemKind.MALFORMED, "line 4 has no HTTP status_code"),
        (5, ProblemKind.MALFORMED, "line 5 has neither a response nor an error"),
        (6, ProblemKind.MALFORMED, "line 6 has a response body that is not a JSON object"),
        (7, ProblemKind.MALFORMED, "line 7 is not UTF-8"),
        (8, ProblemKind.MALFORMED, "line 8 is not valid JSON"),
    ]
    assert tally.missing() == {good[i]["custom_id"] for i in (0, 1, 2, 4)}


async def test_an_overlong_line_is_skipped_and_recorded(
    fake: FakeBatchUpstream, client: BatchAPIClient
) -> None:
    fake.chunk_size = 100
    batch = await submit(client, IDS[:3])
    fake.complete(batch.id)
    done = await client.retrieve(batch.id)
    assert done.output_file_id is not None
    good = fake.files[done.output_file_id].data.splitlines()
    long = json.loads(good[1])
    long["response"]["body"]["padding"] = "x" * 5000
    fake.files[done.output_file_id].data = b"\n".join(
        [good[0], json.dumps(long).encode(), good[2], b"y" * 3000]
    )
    tally = client.tally(IDS[:3], max_line_bytes=2048)
    found = await collect(client, done, tally)
    assert sorted(found) == ["r-0", "r-2"]
    assert [(p.line, p.kind) for p in tally.problems] == [
        (2, ProblemKind.TOO_LONG),
        (4, ProblemKind.TOO_LONG),
    ]
    assert tally.problems[0].detail == "line 2 is longer than 2048 bytes"
    assert tally.missing() == {"r-1"}


async def test_results_larger_than_the_cap_stop_the_download(
    fake: FakeBatchUpstream, client: BatchAPIClient
) -> None:
    batch = await submit(client, IDS[:2])
    fake.complete(batch.id)
    done = await client.retrieve(batch.id)
    assert done.output_file_id is not None
    fake.files[done.output_file_id].data += b"\n" * (2 * 1024 * 1024)
    tally = client.tally(IDS[:2], max_line_bytes=1024)
    assert tally.default_cap() < 2 * 1024 * 1024
    with pytest.raises(ResponseTooLargeError) as big:
        await collect(client, done, tally)
    clean(big.value)
    with pytest.raises(ResponseTooLargeError):
        await collect(client, done, client.tally(IDS[:2]), max_bytes=10_000)


async def test_junk_lines_are_counted_but_only_so_many_kept(
    fake: FakeBatchUpstream, client: BatchAPIClient
) -> None:
    batch = await submit(client, IDS[:1])
    fake.complete(batch.id)
    done = await client.retrieve(batch.id)
    assert done.output_file_id is not None
    fake.files[done.output_file_id].data += b"x\n" * 5000
    tally = client.tally(IDS[:1])
    found = await collect(client, done, tally)
    assert list(found) == ["r-0"]
    assert tally.problem_count == 5000
    assert len(tally.problems) == 1000


async def test_a_status_the_client_does_not_know_is_an_error(
    fake: FakeBatchUpstream, client: BatchAPIClient
) -> None:
    batch = await submit(client)
    fake.batches[batch.id]["status"] = "paused\x1b[2J"
    with pytest.raises(MalformedResponseError) as unknown:
        await client.retrieve(batch.id)
    assert unknown.value.code == "unknown_batch_status"
    assert "('paused\\x1b[2J')" in unknown.value.message
    assert unknown.value.retryable  # the runner keeps polling, and says why
    clean(unknown.value)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("output_file_id", "../../organization/keys"),
        ("error_file_id", "file-1?purpose=all"),
        ("id", "batch/other"),
        ("input_file_id", None),
        ("request_counts", {"total": "many"}),
    ],
)
async def test_hostile_batch_objects_are_refused(
    fake: FakeBatchUpstream, client: BatchAPIClient, field: str, value: Any
) -> None:
    batch = await submit(client)
    fake.batches[batch.id][field] = value
    with pytest.raises(MalformedResponseError) as bad:
        await client.retrieve(batch.id)
    clean(bad.value)


async def test_an_answer_about_another_batch_is_refused(
    fake: FakeBatchUpstream, client: BatchAPIClient
) -> None:
    first = await submit(client)
    second = await submit(client)
    fake.batches[first.id] = fake.batches[second.id]
    with pytest.raises(MalformedResponseError, match="another batch"):
        await client.retrieve(first.id)


async def test_the_key_echoed_in_errors_is_scrubbed(
    fake: FakeBatchUpstream, client: BatchAPIClient
) -> None:
    fake.fail_next(
        401,
        {"error": {"message": f"Incorrect API key provided: {KEY}", "code": "invalid_api_key"}},
    )
    with pytest.raises(AuthenticationError) as refused:
        await client.upload(lines(IDS[:1]))
    assert REDACTED in clean(refused.value).args[0]

    fake.fail_next(500, text=f"upstream proxy: Authorization: Bearer {KEY}")
    with pytest.raises(UpstreamUnavailableError) as broken:
        await client.retrieve("batch_1")
    assert REDACTED in clean(broken.value).args[0]

    fake.fail_next(400, {"error": {"message": "bad", "param": KEY, "code": KEY}})
    with pytest.raises(InvalidRequestError) as bad:
        await client.create("file-1")
    clean(bad.value)

    batch = await submit(client)
    fake.batches[batch.id]["metadata"] = {"echo": KEY}
    assert (await client.retrieve(batch.id)).metadata == {"echo": REDACTED}


async def test_the_key_shows_in_no_repr(fake: FakeBatchUpstream) -> None:
    client = BatchAPIClient(settings(fake, headers={"OpenAI-Organization": "org-1"}))
    tally = client.tally(IDS)
    for text in (repr(client), str(client), repr(client.settings), repr(tally)):
        assert KEY not in text
    await client.aclose()


async def test_a_refused_key_is_an_authentication_error(fake: FakeBatchUpstream) -> None:
    wrong = ProviderSettings(
        name="openai", base_url=fake.base_url, api_key=SecretStr("sk-wrong-0123456789")
    )
    async with BatchAPIClient(wrong) as client:
        with pytest.raises(AuthenticationError) as refused:
            await client.retrieve("batch_1")
    assert refused.value.provider == "openai"
    clean(refused.value)


async def test_an_upstream_that_never_answers_times_out(fake: FakeBatchUpstream) -> None:
    quick = Timeouts(connect=0.5, first_byte=0.2, idle=0.2, total=5.0)
    async with BatchAPIClient(settings(fake, timeouts=quick)) as client:
        fake.hang_next()
        with pytest.raises(FirstByteTimeoutError) as silent:
            await client.retrieve("batch_1")
        clean(silent.value)


async def test_the_total_clock_bounds_an_upload(fake: FakeBatchUpstream) -> None:
    quick = Timeouts(connect=0.5, first_byte=5.0, idle=5.0, total=0.2)
    async with BatchAPIClient(settings(fake, timeouts=quick)) as client:
        fake.hang_next()
        with pytest.raises(DeadlineExceededError) as late:
            await client.upload(lines(IDS[:1]))
        clean(late.value)


async def test_a_download_that_goes_silent_times_out(fake: FakeBatchUpstream) -> None:
    quick = Timeouts(connect=0.5, first_byte=0.5, idle=0.2, total=5.0)
    async with BatchAPIClient(settings(fake, timeouts=quick)) as client:
        batch = await submit(client, IDS[:10])
        fake.complete(batch.id)
        done = await client.retrieve(batch.id)
        assert done.output_file_id is not None
        first_two = fake.files[done.output_file_id].data.splitlines(keepends=True)[:2]
        fake.stall(done.output_file_id, len(b"".join(first_two)) + 20)
        tally = client.tally(IDS[:10])
        kept: dict[str, BatchResult] = {}
        with pytest.raises(IdleTimeoutError) as silent:
            await collect(client, done, tally, into=kept)
        clean(silent.value)
        received = list(kept)
        # What came before the silence was answered; the runner keeps it and resumes.
        assert received == IDS[:2]
        assert tally.missing() == set(IDS[:10]) - set(received)


@pytest.mark.parametrize(
    ("given", "endpoint", "match"),
    [
        (lines([]), "/v1/chat/completions", "at least one request"),
        (lines(["a", "b", "a"]), "/v1/chat/completions", "appears twice"),
        (lines(["a"]) + lines(["b"], model="gpt-4o"), "/v1/chat/completions", "one model"),
        ([InputLine("a", {"messages": []})], "/v1/chat/completions", "names its model"),
        ([InputLine("", {"model": "m"})], "/v1/chat/completions", "custom_id"),
        ([InputLine("x" * 513, {"model": "m"})], "/v1/chat/completions", "custom_id"),
        ([InputLine("a", {"model": "m", "n": {1, 2}})], "/v1/chat/completions", "not JSON"),
        (lines(["a"]), "/v1/audio/speech", "A batch runs one of"),
    ],
)
async def test_a_batch_the_upstream_would_refuse_is_never_sent(
    fake: FakeBatchUpstream,
    client: BatchAPIClient,
    given: list[InputLine],
    endpoint: str,
    match: str,
) -> None:
    with pytest.raises(InvalidRequestError, match=match):
        await client.upload(given, endpoint=endpoint)
    assert fake.seen == []


@pytest.mark.parametrize(
    "metadata",
    [
        {f"k{i}": "v" for i in range(17)},
        {"k" * 65: "v"},
        {"k": "v" * 513},
        {"": "v"},
    ],
)
async def test_metadata_over_the_limits_is_refused(
    fake: FakeBatchUpstream, client: BatchAPIClient, metadata: dict[str, str]
) -> None:
    with pytest.raises(InvalidRequestError, match="metadata"):
        await client.create("file-1", metadata=metadata)
    assert fake.seen == []


@pytest.mark.parametrize("given", ["../files", "batch_1/cancel", "", "a b", ".."])
async def test_ids_that_are_not_plain_never_reach_a_url(
    fake: FakeBatchUpstream, client: BatchAPIClient, given: str
) -> None:
    for call in (client.retrieve, client.cancel, client.delete_file, client.find):
        with pytest.raises(InvalidRequestError):
            await call(given)
    assert fake.seen == []


async def test_a_base_url_query_is_kept_on_every_call(fake: FakeBatchUpstream) -> None:
    configured = ProviderSettings(
        name="azure",
        base_url=f"{fake.base_url}?api-version=2024-10-21",
        api_key=SecretStr(KEY),
        timeouts=FAST,
    )
    async with BatchAPIClient(configured) as client:
        batch = await submit(client, IDS[:2])
        await client.retrieve(batch.id)
        await client.find(batch.input_file_id)
    assert all("api-version=2024-10-21" in path for _, path, _ in fake.seen)


def test_which_presets_hand_batches_over() -> None:
    assert native_batch_support("openai")
    assert native_batch_support("OpenAI")
    for other in ("groq", "together", "anthropic", "gemini", "mistral", "ollama", None):
        assert not native_batch_support(other)


def test_polling_starts_soon_and_settles_at_a_minute() -> None:
    delays = [poll_delay(n) for n in range(10)]
    assert delays[0] == FIRST_POLL_DELAY
    assert delays == sorted(delays)
    assert delays[-1] == MAX_POLL_DELAY
    assert poll_delay(-3) == FIRST_POLL_DELAY
    assert poll_delay(10**6) == MAX_POLL_DELAY
