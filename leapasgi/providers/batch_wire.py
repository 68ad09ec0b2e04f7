"""The shapes of an OpenAI-compatible Files and Batches API, read as a hostile upstream may
send them: the batch object, the file object, and the JSONL input file a batch is made of
(``{"custom_id", "method", "url", "body"}`` a line). No I/O.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from .._logging import printable
from ..exceptions import InvalidRequestError, LeapError, MalformedResponseError

__all__ = [
    "CHAT_COMPLETIONS_ENDPOINT",
    "COMPLETION_WINDOW",
    "ENDPOINTS",
    "MAX_CUSTOM_ID",
    "MAX_INPUT_BYTES",
    "MAX_REQUESTS",
    "BatchIssue",
    "BatchStatus",
    "BatchUsage",
    "InputLine",
    "RequestCounts",
    "UploadedFile",
    "UpstreamBatch",
    "check_id",
    "check_metadata",
    "encode_input",
    "parse_batch",
    "parse_file",
]

CHAT_COMPLETIONS_ENDPOINT = "/v1/chat/completions"
# The endpoints the gateway serves that an OpenAI batch can also run.
ENDPOINTS = frozenset({CHAT_COMPLETIONS_ENDPOINT, "/v1/embeddings", "/v1/responses"})
COMPLETION_WINDOW = "24h"
# OpenAI's limits on one input file: checked here, so a batch too big fails before it is sent.
MAX_REQUESTS = 50_000
MAX_INPUT_BYTES = 200 * 1024 * 1024
MAX_CUSTOM_ID = 512
# OpenAI's limits on a batch's metadata.
MAX_METADATA_PAIRS = 16
MAX_METADATA_KEY = 64
MAX_METADATA_VALUE = 512
# Ids the upstream names (batches, files) go into URL paths: one plain segment, never "..".
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,255}$")
MAX_MESSAGE = 1000


class BatchStatus(StrEnum):
    """Where an upstream batch is (OpenAI's eight statuses)."""

    VALIDATING = "validating"
    FAILED = "failed"
    IN_PROGRESS = "in_progress"
    FINALIZING = "finalizing"
    COMPLETED = "completed"
    EXPIRED = "expired"
    CANCELLING = "cancelling"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        """True when the batch will not change any more."""
        return self in _TERMINAL

    @property
    def has_results(self) -> bool:
        """True when its output and error files (where it has them) are final: a completed
        batch, or an expired or cancelled one with what ran before it stopped."""
        return self in _WITH_RESULTS


_TERMINAL = frozenset(
    {BatchStatus.FAILED, BatchStatus.COMPLETED, BatchStatus.EXPIRED, BatchStatus.CANCELLED}
)
_WITH_RESULTS = _TERMINAL - {BatchStatus.FAILED}


@dataclass(frozen=True, slots=True)
class RequestCounts:
    """How many of a batch's requests there are, have succeeded, and have failed."""

    total: int
    completed: int
    failed: int


@dataclass(frozen=True, slots=True)
class BatchUsage:
    """The tokens a whole batch used, where the upstream reports them."""

    input_tokens: int
    output_tokens: int
    cached_tokens: int


@dataclass(frozen=True, slots=True)
class BatchIssue:
    """One of the upstream's errors about a whole batch (mostly its input file's validation)."""

    message: str
    code: str | None = None
    line: int | None = None
    param: str | None = None


@dataclass(frozen=True, slots=True)
class UpstreamBatch:
    """A batch as the upstream describes it; ids checked, texts scrubbed of secrets."""

    id: str
    status: BatchStatus
    endpoint: str
    input_file_id: str
    output_file_id: str | None = None
    error_file_id: str | None = None
    request_counts: RequestCounts | None = None
    issues: tuple[BatchIssue, ...] = ()
    created_at: int | None = None
    expires_at: int | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)
    usage: BatchUsage | None = None


@dataclass(frozen=True, slots=True)
class UploadedFile:
    """A file the upstream keeps: its id, and its size as the upstream counted it."""

    id: str
    bytes: int
    purpose: str


@dataclass(frozen=True, slots=True)
class InputLine:
    """One request of a batch: its caller-chosen id and its body (the body's ``model`` is
    already the upstream's own model id)."""

    custom_id: str
    body: Mapping[str, Any]


def check_id(value: object, *, what: str, provider: str | None) -> str:
    """``value`` when it is a plain id (letters, digits, ``_ . : -``), safe in a URL path."""
    if isinstance(value, str) and _ID.match(value):
        return value
    shown = printable(value, 80) if isinstance(value, str) else type(value).__name__
    raise MalformedResponseError(
        f"Provider {provider!r} named a {what} that is not a plain id ('{shown}')",
        provider=provider,
    )


def check_metadata(metadata: Mapping[str, str] | None) -> dict[str, str]:
    """A batch's metadata within OpenAI's limits (16 pairs, keys of 64 and values of 512
    characters); InvalidRequestError otherwise."""
    if not metadata:
        return {}
    if len(metadata) > MAX_METADATA_PAIRS:
        raise InvalidRequestError(
            f"A batch carries at most {MAX_METADATA_PAIRS} metadata pairs", param="metadata"
        )
    for key, value in metadata.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise InvalidRequestError("Batch metadata keys and values are strings")
        if not key or len(key) > MAX_METADATA_KEY or len(value) > MAX_METADATA_VALUE:
            raise InvalidRequestError(
                f"Batch metadata keys have 1 to {MAX_METADATA_KEY} characters and values at "
                f"most {MAX_METADATA_VALUE}",
                param="metadata",
            )
    return dict(metadata)


def encode_input(lines: Iterable[InputLine], *, endpoint: str) -> tuple[bytes, int]:
    """The JSONL input file of ``lines`` and how many requests it holds. Refused
    (InvalidRequestError) before anything is sent: an unknown endpoint, no lines, too many or
    too large, an empty, over-long or repeated custom id, a body without a model, or bodies
    naming different models (OpenAI runs one model per batch)."""
    if endpoint not in ENDPOINTS:
        raise InvalidRequestError(
            f"A batch runs one of {', '.join(sorted(ENDPOINTS))}", param="endpoint"
        )
    seen: set[str] = set()
    model: str | None = None
    parts: list[bytes] = []
    size = 0
    for line in lines:
        custom_id = line.custom_id
        if not isinstance(custom_id, str) or not 0 < len(custom_id) <= MAX_CUSTOM_ID:
            raise InvalidRequestError(
                f"A custom_id is a string of 1 to {MAX_CUSTOM_ID} characters", param="custom_id"
            )
        if custom_id in seen:
            raise InvalidRequestError(
                f"The custom_id {printable(custom_id)!r} appears twice", param="custom_id"
            )
        seen.add(custom_id)
        body_model = line.body.get("model")
        if not isinstance(body_model, str) or not body_model:
            raise InvalidRequestError("Every request of a batch names its model", param="model")
        if model is None:
            model = body_model
        elif body_model != model:
            raise InvalidRequestError("The requests of one batch use one model", param="model")
        if len(seen) > MAX_REQUESTS:
            raise InvalidRequestError(f"A batch holds at most {MAX_REQUESTS} requests")
        record = {"custom_id": custom_id, "method": "POST", "url": endpoint, "body": line.body}
        try:
            encoded = json.dumps(record, ensure_ascii=False, separators=(",", ":")).encode()
        except (TypeError, ValueError):
            raise InvalidRequestError(
                f"The body of {printable(custom_id)!r} is not JSON", param="body"
            ) from None
        size += len(encoded) + 1
        if size > MAX_INPUT_BYTES:
            raise InvalidRequestError(f"A batch's input file is at most {MAX_INPUT_BYTES} bytes")
        parts.append(encoded)
    if not parts:
        raise InvalidRequestError("A batch has at least one request")
    parts.append(b"")
    return b"\n".join(parts), len(seen)


def parse_batch(data: Any, *, provider: str | None) -> UpstreamBatch:
    """The batch object ``data`` (parsed JSON, already scrubbed); MalformedResponseError for
    anything else, including a status this client does not know."""
    if not isinstance(data, dict):
        raise _malformed(provider, "a batch that is not a JSON object")
    status = data.get("status")
    if not isinstance(status, str) or status not in BatchStatus.__members__.values():
        shown = printable(status, 40) if isinstance(status, str) else type(status).__name__
        raise MalformedResponseError(
            f"Provider {provider!r} reported a batch status this gateway does not know ('{shown}')",
            provider=provider,
            code="unknown_batch_status",
        )
    endpoint = data.get("endpoint")
    if not isinstance(endpoint, str):
        raise _malformed(provider, "a batch without its endpoint")
    return UpstreamBatch(
        id=check_id(data.get("id"), what="batch", provider=provider),
        status=BatchStatus(status),
        endpoint=printable(endpoint, 100),
        input_file_id=check_id(data.get("input_file_id"), what="file", provider=provider),
        output_file_id=_optional_id(data.get("output_file_id"), provider),
        error_file_id=_optional_id(data.get("error_file_id"), provider),
        request_counts=_counts(data.get("request_counts"), provider),
        issues=_issues(data.get("errors")),
        created_at=_count(data.get("created_at")),
        expires_at=_count(data.get("expires_at")),
        metadata=_metadata(data.get("metadata")),
        usage=_usage(data.get("usage")),
    )


def parse_file(data: Any, *, provider: str | None) -> UploadedFile:
    """The file object ``data``; MalformedResponseError for anything else."""
    if not isinstance(data, dict):
        raise _malformed(provider, "a file that is not a JSON object")
    size = _count(data.get("bytes"))
    purpose = data.get("purpose")
    return UploadedFile(
        id=check_id(data.get("id"), what="file", provider=provider),
        bytes=size if size is not None else 0,
        purpose=printable(purpose, 40) if isinstance(purpose, str) else "",
    )


def _optional_id(value: object, provider: str | None) -> str | None:
    return None if value is None else check_id(value, what="file", provider=provider)


def _count(value: object) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return None


def _counts(value: object, provider: str | None) -> RequestCounts | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise _malformed(provider, "request counts that are not a JSON object")
    total, completed, failed = (_count(value.get(k)) for k in ("total", "completed", "failed"))
    if total is None or completed is None or failed is None:
        raise _malformed(provider, "request counts that are not counts")
    return RequestCounts(total, completed, failed)


def _issues(value: object) -> tuple[BatchIssue, ...]:
    entries = value.get("data") if isinstance(value, dict) else None
    if not isinstance(entries, list):
        return ()
    issues = []
    for entry in entries[:100]:
        if not isinstance(entry, dict):
            continue
        message, code, param = entry.get("message"), entry.get("code"), entry.get("param")
        issues.append(
            BatchIssue(
                printable(message, MAX_MESSAGE) if isinstance(message, str) else "",
                printable(code, 80) if isinstance(code, str) else None,
                _count(entry.get("line")),
                printable(param, 80) if isinstance(param, str) else None,
            )
        )
    return tuple(issues)


def _metadata(value: object) -> dict[str, str]:
    if not isinstance(value, dict):
        return {}
    return {
        printable(k, MAX_METADATA_KEY): printable(v, MAX_METADATA_VALUE)
        for k, v in list(value.items())[:MAX_METADATA_PAIRS]
        if isinstance(k, str) and isinstance(v, str)
    }


def _usage(value: object) -> BatchUsage | None:
    if not isinstance(value, dict):
        return None
    details = value.get("input_tokens_details")
    cached = _count(details.get("cached_tokens")) if isinstance(details, dict) else 0
    input_tokens = _count(value.get("input_tokens"))
    output_tokens = _count(value.get("output_tokens"))
    if input_tokens is None or output_tokens is None:
        return None
    return BatchUsage(input_tokens, output_tokens, cached or 0)


def _malformed(provider: str | None, what: str) -> LeapError:
    return MalformedResponseError(f"Provider {provider!r} sent {what}", provider=provider)
