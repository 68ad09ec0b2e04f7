"""A batch input file's lines: ``{"custom_id", "method": "POST", "url", "body"}`` each, checked
as the file is uploaded (every error names its line) and read back when the batch runs."""

from __future__ import annotations

import json
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from ..exceptions import InvalidRequestError, RequestTooLargeError
from .objects import ENDPOINTS

__all__ = ["MAX_CUSTOM_ID", "BatchLine", "LineChecker", "parse_line", "read_lines", "split_lines"]

# The longest custom_id accepted, in characters.
MAX_CUSTOM_ID = 512
_FIELDS = frozenset({"custom_id", "method", "url", "body"})


@dataclass(frozen=True, slots=True)
class BatchLine:
    """One request of a batch: its line in the file (from 1), custom_id, endpoint and body."""

    number: int
    custom_id: str
    url: str
    body: dict[str, Any]


def _bad(number: int, message: str) -> InvalidRequestError:
    return InvalidRequestError(f"Line {number}: {message}", param="file", code="invalid_batch_line")


def parse_line(raw: bytes, number: int) -> BatchLine:
    """Line ``number`` of a batch file; InvalidRequestError naming it when it is not a
    request a batch can make."""
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise _bad(number, "not valid JSON") from None
    if not isinstance(data, dict):
        raise _bad(number, "not a JSON object")
    unknown = sorted(set(data) - _FIELDS)
    if unknown:
        raise _bad(number, f"unknown field {unknown[0][:64]!r}")
    custom_id = data.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id:
        raise _bad(number, "custom_id must be a string that is not empty")
    if len(custom_id) > MAX_CUSTOM_ID:
        raise _bad(number, f"custom_id is longer than {MAX_CUSTOM_ID} characters")
    if data.get("method") != "POST":
        raise _bad(number, 'method must be "POST"')
    url = data.get("url")
    if url not in ENDPOINTS:
        raise _bad(number, f"url must be one of {', '.join(ENDPOINTS)}")
    body = data.get("body")
    if not isinstance(body, dict):
        raise _bad(number, "body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _bad(number, "body.model must be a string that is not empty")
    if body.get("stream") is True:
        raise _bad(number, "body.stream: a batch answers whole responses, not streams")
    return BatchLine(number, custom_id, url, body)


@dataclass(slots=True)
class LineChecker:
    """Checks a file's lines as they arrive: each a request (``parse_line``), custom_ids
    unique, at most ``max_lines``. Blank lines are skipped."""

    max_lines: int
    lines: int = 0
    urls: set[str] = field(default_factory=set)
    models: set[str] = field(default_factory=set)
    _seen: set[str] = field(default_factory=set)

    def check(self, raw: bytes, number: int) -> None:
        if not raw.strip():
            return
        line = parse_line(raw, number)
        if line.custom_id in self._seen:
            raise _bad(number, "custom_id repeats an earlier line's; each must be unique")
        self._seen.add(line.custom_id)
        self.lines += 1
        if self.lines > self.max_lines:
            raise _bad(number, f"a batch file holds at most {self.max_lines} requests")
        self.urls.add(line.url)
        self.models.add(line.body["model"])


async def split_lines(
    chunks: AsyncIterable[bytes], *, max_line_bytes: int
) -> AsyncIterator[tuple[int, bytes]]:
    """The lines of a byte stream (numbered from 1, without their line break); a line longer
    than ``max_line_bytes`` is refused as soon as it is."""
    number = 0
    pending = b""
    async for chunk in chunks:
        pending += chunk
        *complete, pending = pending.split(b"\n")
        for raw in complete:
            number += 1
            if len(raw) > max_line_bytes:
                raise _too_long(number, max_line_bytes)
            yield number, raw.rstrip(b"\r")
        if len(pending) > max_line_bytes:
            raise _too_long(number + 1, max_line_bytes)
    if pending:
        yield number + 1, pending.rstrip(b"\r")


def _too_long(number: int, limit: int) -> RequestTooLargeError:
    return RequestTooLargeError(
        f"Line {number}: longer than the {limit} byte limit of a line",
        param="file",
        code="invalid_batch_line",
    )


async def read_lines(
    chunks: AsyncIterable[bytes], *, max_line_bytes: int
) -> AsyncIterator[BatchLine]:
    """The requests of a checked batch file, in order."""
    async for number, raw in split_lines(chunks, max_line_bytes=max_line_bytes):
        if raw.strip():
            yield parse_line(raw, number)
