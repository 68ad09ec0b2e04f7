"""What the Files and Batch APIs keep and show: file and batch records, their OpenAI shapes,
the ids (unguessable), and the lines of output and error files. Pure data, no I/O.

A batch moves through OpenAI's statuses::

    validating -> in_progress -> finalizing -> completed
        |              |-> (window over) ------> expired
        |              '-> cancelling ---------> cancelled
        '-> failed (the input file does not fit the batch)
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

__all__ = [
    "COMPLETION_WINDOW",
    "ENDPOINTS",
    "MAX_ERRORS_SHOWN",
    "WINDOW_SECONDS",
    "BatchRecord",
    "BatchStatus",
    "FileRecord",
    "LineResult",
    "TenantRecord",
    "answer_line",
    "batch_id",
    "error_line",
    "file_id",
    "unanswered_line",
]

# The endpoints a batch's lines may call, and the one completion window OpenAI offers.
ENDPOINTS = ("/v1/chat/completions", "/v1/responses", "/v1/embeddings")
COMPLETION_WINDOW = "24h"
WINDOW_SECONDS = 24 * 3600
# Validation errors shown on a failed batch, at most (its input file may have thousands).
MAX_ERRORS_SHOWN = 100


class BatchStatus(StrEnum):
    """OpenAI's batch statuses."""

    VALIDATING = "validating"
    FAILED = "failed"
    IN_PROGRESS = "in_progress"
    FINALIZING = "finalizing"
    COMPLETED = "completed"
    EXPIRED = "expired"
    CANCELLING = "cancelling"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        """Whether nothing more happens to a batch in this status."""
        return self in _FINISHED


_FINISHED = frozenset(
    {BatchStatus.FAILED, BatchStatus.COMPLETED, BatchStatus.EXPIRED, BatchStatus.CANCELLED}
)


def file_id() -> str:
    """A new file id: 128 random bits."""
    return "file-" + secrets.token_hex(16)


def batch_id() -> str:
    """A new batch id: 128 random bits."""
    return "batch_" + secrets.token_hex(16)


@dataclass(frozen=True, slots=True)
class FileRecord:
    """One file: an uploaded batch input (``batch``) or a batch's output or error file
    (``batch_output``). ``owner`` is whose it is (``owner_of``); ``lines`` its JSONL lines."""

    id: str
    owner: str | None
    filename: str
    purpose: str
    bytes: int
    created_at: int
    expires_at: int | None = None
    lines: int = 0

    def to_json(self) -> dict[str, Any]:
        """The OpenAI ``file`` object."""
        return {
            "id": self.id,
            "object": "file",
            "bytes": self.bytes,
            "created_at": self.created_at,
            "filename": self.filename,
            "purpose": self.purpose,
            "status": "processed",
            "expires_at": self.expires_at,
            "status_details": None,
        }

    def dumps(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def loads(cls, text: str) -> FileRecord:
        return cls(**json.loads(text))


@dataclass(frozen=True, slots=True)
class TenantRecord:
    """Who a batch is run for, as kept with it: what rebuilds its ``Tenant`` after a restart
    (a virtual key's current policy is looked up again by its id)."""

    id: str
    source: str
    key_id: str | None
    policy: Mapping[str, Any]
    tags: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "source": self.source,
            "key_id": self.key_id,
            "policy": dict(self.policy),
            "tags": list(self.tags),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TenantRecord:
        return cls(
            str(data["id"]),
            str(data["source"]),
            data.get("key_id"),
            dict(data.get("policy") or {}),
            tuple(data.get("tags") or ()),
        )


@dataclass(slots=True)
class BatchRecord:
    """One batch, as kept; ``to_json`` is OpenAI's ``batch`` object. The counts and usage
    grow as lines are recorded (the store keeps them with each line, in one transaction)."""

    id: str
    owner: str | None
    tenant: TenantRecord
    endpoint: str
    input_file_id: str
    created_at: int
    expires_at: int
    total: int
    status: BatchStatus = BatchStatus.VALIDATING
    metadata: dict[str, str] | None = None
    # Seconds after their creation the output and error files expire (None: the default).
    output_ttl: int | None = None
    # How the batch is executed ("gateway": line by line through the dispatcher).
    executor: str = "gateway"
    completed: int = 0
    failed: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    errors: list[dict[str, Any]] | None = None
    output_file_id: str | None = None
    error_file_id: str | None = None
    times: dict[str, int] = field(default_factory=dict)
    # What the executor keeps to resume the batch on any runner (a handed-over batch's
    # upstream ids and stage); kept with the record, never shown.
    handover: dict[str, Any] | None = None
    # Lines completed and failed as the upstream running the batch reports them, shown until
    # their answers are recorded.
    progress: tuple[int, int] | None = None

    def moved(self, status: BatchStatus, at: int) -> None:
        """Now in ``status``, since ``at`` (its ``<status>_at`` timestamp)."""
        self.status = status
        self.times[f"{status.value}_at"] = at

    def to_json(self) -> dict[str, Any]:
        """The OpenAI ``batch`` object."""
        times = self.times
        completed, failed = self.completed, self.failed
        if self.progress is not None:
            completed, failed = max(completed, self.progress[0]), max(failed, self.progress[1])
        body: dict[str, Any] = {
            "id": self.id,
            "object": "batch",
            "endpoint": self.endpoint,
            "errors": None
            if self.errors is None
            else {"object": "list", "data": list(self.errors)},
            "input_file_id": self.input_file_id,
            "completion_window": COMPLETION_WINDOW,
            "status": self.status.value,
            "output_file_id": self.output_file_id,
            "error_file_id": self.error_file_id,
            "created_at": self.created_at,
            "in_progress_at": times.get("in_progress_at"),
            "expires_at": self.expires_at,
            "finalizing_at": times.get("finalizing_at"),
            "completed_at": times.get("completed_at"),
            "failed_at": times.get("failed_at"),
            "expired_at": times.get("expired_at"),
            "cancelling_at": times.get("cancelling_at"),
            "cancelled_at": times.get("cancelled_at"),
            "request_counts": {
                "total": self.total,
                "completed": completed,
                "failed": failed,
            },
            "usage": {
                "input_tokens": self.input_tokens,
                "input_tokens_details": {"cached_tokens": self.cached_tokens},
                "output_tokens": self.output_tokens,
                "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": self.input_tokens + self.output_tokens,
            },
            "metadata": self.metadata,
        }
        return body

    def dumps(self) -> str:
        """Everything but the counts and usage, which the store keeps per line."""
        data = {
            "id": self.id,
            "owner": self.owner,
            "tenant": self.tenant.to_json(),
            "endpoint": self.endpoint,
            "input_file_id": self.input_file_id,
            "created_at": self.created_at,
            "expires_at": self.expires_at,
            "total": self.total,
            "status": self.status.value,
            "metadata": self.metadata,
            "output_ttl": self.output_ttl,
            "executor": self.executor,
            "errors": self.errors,
            "output_file_id": self.output_file_id,
            "error_file_id": self.error_file_id,
            "times": self.times,
            "handover": self.handover,
            "progress": self.progress,
        }
        return json.dumps(data, separators=(",", ":"))

    @classmethod
    def loads(cls, text: str, counts: tuple[int, int, int, int, int]) -> BatchRecord:
        data = json.loads(text)
        completed, failed, input_tokens, output_tokens, cached_tokens = counts
        return cls(
            id=data["id"],
            owner=data["owner"],
            tenant=TenantRecord.from_json(data["tenant"]),
            endpoint=data["endpoint"],
            input_file_id=data["input_file_id"],
            created_at=data["created_at"],
            expires_at=data["expires_at"],
            total=data["total"],
            status=BatchStatus(data["status"]),
            metadata=data["metadata"],
            output_ttl=data["output_ttl"],
            executor=data["executor"],
            completed=completed,
            failed=failed,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            cached_tokens=cached_tokens,
            errors=data["errors"],
            output_file_id=data["output_file_id"],
            error_file_id=data["error_file_id"],
            times=data["times"],
            handover=data.get("handover"),
            progress=(progress[0], progress[1]) if (progress := data.get("progress")) else None,
        )


@dataclass(frozen=True, slots=True)
class LineResult:
    """One line's answer, as recorded: its line of the output file (``ok``) or of the error
    file, and the tokens it used."""

    line: int
    text: str
    ok: bool
    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0


def _request_id() -> str:
    return "batch_req_" + secrets.token_hex(16)


def answer_line(custom_id: str, status: int, request_id: str, body: bytes) -> str:
    """An output (or error) file line for an answer with HTTP ``status`` and JSON ``body``."""
    # The body is spliced in as the bytes it came as, not parsed and encoded again. JSON
    # strings hold no raw line breaks, so any in it are white space: dropped, one line.
    if b"\n" in body or b"\r" in body:
        body = body.replace(b"\r", b"").replace(b"\n", b"")
    head = json.dumps(
        {"id": _request_id(), "custom_id": custom_id}, separators=(",", ":"), ensure_ascii=False
    )
    response = f'{{"status_code":{status},"request_id":{json.dumps(request_id)},"body":'
    return f'{head[:-1]},"response":{response}{body.decode()}}},"error":null}}'


def error_line(custom_id: str, status: int, request_id: str, error: Mapping[str, Any]) -> str:
    """An error file line for a request answered with an error (``error``: OpenAI's body)."""
    body = json.dumps(error, separators=(",", ":")).encode()
    return answer_line(custom_id, status, request_id, body)


def unanswered_line(custom_id: str, code: str, message: str) -> str:
    """An error file line for a request never answered (``batch_expired``,
    ``batch_cancelled``)."""
    return json.dumps(
        {
            "id": _request_id(),
            "custom_id": custom_id,
            "response": None,
            "error": {"code": code, "message": message},
        },
        separators=(",", ":"),
        ensure_ascii=False,
    )
