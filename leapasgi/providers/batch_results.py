"""Reading a finished batch's output and error files as a hostile upstream may write them:
line by line as the bytes arrive, each line bounded, scrubbed of secrets, checked, and held
against the custom ids that were submitted. No I/O.

An output line is ``{"id", "custom_id", "response": {"status_code", "request_id", "body"},
"error": null}``; an error line has either a response with a 4xx/5xx status or ``"response":
null`` and ``"error": {"code", "message"}`` (``batch_expired``, ``batch_cancelled``...).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Literal

from .._logging import printable
from .batch_wire import MAX_MESSAGE

__all__ = [
    "DEFAULT_MAX_LINE_BYTES",
    "MAX_PROBLEMS",
    "MEAN_LINE_BYTES",
    "BatchResult",
    "LineProblem",
    "ProblemKind",
    "ResultError",
    "ResultFile",
    "ResultFileReader",
    "ResultTally",
]

# One line of an output or error file, at most (a long completion, or an embeddings request of
# many inputs, can take megabytes); the files together default to this much a line on average,
# plus one line at the cap.
DEFAULT_MAX_LINE_BYTES = 16 * 1024 * 1024
MEAN_LINE_BYTES = 256 * 1024
# Problems kept for the report; past this only counted (a file of junk lines is bounded by the
# download cap, not by memory).
MAX_PROBLEMS = 1000
_MAX_REQUEST_ID = 200


@dataclass(frozen=True, slots=True)
class ResultError:
    """Why a request of a batch has no answer: the upstream's code and message."""

    message: str
    code: str | None = None


@dataclass(frozen=True, slots=True)
class BatchResult:
    """The outcome of one submitted request. ``status_code`` and ``body`` are the upstream's
    answer, when the request ran; ``error`` is set whenever it did not end in a 2xx."""

    custom_id: str
    status_code: int | None
    body: dict[str, Any] | None
    error: ResultError | None
    request_id: str | None = None

    @property
    def ok(self) -> bool:
        """True for a 2xx answer with a body."""
        return self.error is None


ResultFile = Literal["output", "error"]


class ProblemKind(StrEnum):
    """What was wrong with a line of an output or error file."""

    MALFORMED = "malformed"
    TOO_LONG = "too_long"
    UNKNOWN_ID = "unknown_id"
    DUPLICATE_ID = "duplicate_id"


@dataclass(frozen=True, slots=True)
class LineProblem:
    """A line that gave no answer: which file, which line (from 1), what was wrong. The
    custom id is named only when it is one that was submitted; never the line's content."""

    file: ResultFile
    line: int
    kind: ProblemKind
    detail: str
    custom_id: str | None = None


class ResultTally:
    """Which submitted requests have had their answer, across the output and error files.

    Only the ``expected`` custom ids are answered, each once: a line for an id never submitted,
    a second line for one already answered, a line too long or not of the format is recorded
    as a ``LineProblem`` and gives no answer. Ids in ``kept`` (answers the caller already holds,
    after a resumed download) are passed over once without a problem. Every line passes
    ``redact`` before it is parsed (an upstream may echo the key it was sent).
    """

    __slots__ = (
        "_answered",
        "_expected",
        "_kept",
        "_passed",
        "_redact",
        "max_line_bytes",
        "problem_count",
        "problems",
    )

    def __init__(
        self,
        expected: Iterable[str],
        *,
        kept: Iterable[str] = (),
        max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
        redact: Callable[[str], str] | None = None,
    ) -> None:
        self._expected = frozenset(expected)
        self._kept = frozenset(kept) & self._expected
        self._answered: set[str] = set()
        self._passed: set[str] = set()  # kept ids met in the files
        self._redact = redact
        self.max_line_bytes = max_line_bytes
        self.problems: list[LineProblem] = []  # the first MAX_PROBLEMS
        self.problem_count = 0

    def __repr__(self) -> str:
        return (
            f"ResultTally({len(self._expected)} expected, {len(self._answered)} answered, "
            f"{self.problem_count} problems)"
        )

    @property
    def answered(self) -> int:
        """How many answers this tally has given (``kept`` ones not counted)."""
        return len(self._answered)

    def missing(self) -> frozenset[str]:
        """The expected ids with no answer: neither given here nor kept."""
        return self._expected - self._answered - self._kept

    def default_cap(self) -> int:
        """Bytes the output and error files may take together: ``MEAN_LINE_BYTES`` a request
        still to answer, plus one line at the cap."""
        return max(len(self._expected) - len(self._kept), 1) * MEAN_LINE_BYTES + (
            self.max_line_bytes
        )

    def reader(self, file: ResultFile) -> ResultFileReader:
        """A reader of one file's bytes, in the pieces they arrive in."""
        return ResultFileReader(self, file)

    def take(self, raw: bytes, *, file: ResultFile, line: int) -> BatchResult | None:
        """The answer on one whole line (no newline), or None (recorded when it is not blank)."""
        if not raw.strip():
            return None
        try:
            text = raw.decode()
        except UnicodeDecodeError:
            return self._problem(file, line, ProblemKind.MALFORMED, "is not UTF-8")
        if self._redact is not None:
            text = self._redact(text)
        try:
            data = json.loads(text)
        except (ValueError, RecursionError):
            return self._problem(file, line, ProblemKind.MALFORMED, "is not valid JSON")
        if not isinstance(data, dict):
            return self._problem(file, line, ProblemKind.MALFORMED, "is not a JSON object")
        custom_id = data.get("custom_id")
        if not isinstance(custom_id, str):
            return self._problem(file, line, ProblemKind.MALFORMED, "has no custom_id string")
        if custom_id not in self._expected:
            return self._problem(
                file, line, ProblemKind.UNKNOWN_ID, "answers a custom_id that was not submitted"
            )
        if custom_id in self._answered or custom_id in self._passed:
            return self._problem(
                file, line, ProblemKind.DUPLICATE_ID, "answers a request again", custom_id
            )
        try:
            result = _result(custom_id, data)
        except ValueError as exc:
            return self._problem(file, line, ProblemKind.MALFORMED, str(exc), custom_id)
        if custom_id in self._kept:
            self._passed.add(custom_id)
            return None
        self._answered.add(custom_id)
        return result

    def _problem(
        self,
        file: ResultFile,
        line: int,
        kind: ProblemKind,
        detail: str,
        custom_id: str | None = None,
    ) -> BatchResult | None:
        self.record(LineProblem(file, line, kind, f"line {line} {detail}", custom_id))
        return None

    def record(self, problem: LineProblem) -> None:
        """Count ``problem``, and keep it while fewer than ``MAX_PROBLEMS`` are kept."""
        self.problem_count += 1
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(problem)


class ResultFileReader:
    """Splits one output or error file into lines as its bytes arrive; a line over the tally's
    ``max_line_bytes`` is skipped to its end and recorded, never held whole in memory."""

    __slots__ = ("_buffer", "_file", "_line", "_skipping", "_tally")

    def __init__(self, tally: ResultTally, file: ResultFile) -> None:
        self._tally = tally
        self._file: ResultFile = file
        self._buffer = bytearray()
        self._line = 0
        self._skipping = False

    def feed(self, data: bytes) -> list[BatchResult]:
        """The answers on the lines ``data`` completes."""
        results: list[BatchResult] = []
        start = 0
        while (end := data.find(b"\n", start)) != -1:
            self._line += 1
            if self._skipping:
                self._skipping = False
            elif len(self._buffer) + end - start > self._tally.max_line_bytes:
                self._too_long()
            else:
                self._buffer += data[start:end]
                self._take(results)
            self._buffer.clear()
            start = end + 1
        if not self._skipping:
            self._buffer += data[start:]
            if len(self._buffer) > self._tally.max_line_bytes:
                self._buffer.clear()
                self._skipping = True
                self._too_long(line=self._line + 1)
        return results

    def close(self) -> list[BatchResult]:
        """The answer on a last line without a newline, if any."""
        results: list[BatchResult] = []
        if not self._skipping and self._buffer:
            self._line += 1
            self._take(results)
        self._buffer.clear()
        return results

    def _take(self, results: list[BatchResult]) -> None:
        raw = bytes(self._buffer).rstrip(b"\r")
        result = self._tally.take(raw, file=self._file, line=self._line)
        if result is not None:
            results.append(result)

    def _too_long(self, *, line: int | None = None) -> None:
        at = self._line if line is None else line
        limit = self._tally.max_line_bytes
        self._tally.record(
            LineProblem(
                self._file, at, ProblemKind.TOO_LONG, f"line {at} is longer than {limit} bytes"
            )
        )


def _result(custom_id: str, data: dict[str, Any]) -> BatchResult:
    response, error = data.get("response"), data.get("error")
    if response is None:
        if not isinstance(error, dict):
            raise ValueError("has neither a response nor an error")
        return BatchResult(custom_id, None, None, _error(error), None)
    if not isinstance(response, dict):
        raise ValueError("has a response that is not a JSON object")
    status = response.get("status_code")
    if isinstance(status, bool) or not isinstance(status, int) or not 100 <= status <= 599:
        raise ValueError("has no HTTP status_code")
    body = response.get("body")
    if not isinstance(body, dict):
        raise ValueError("has a response body that is not a JSON object")
    request_id = response.get("request_id")
    if not isinstance(request_id, str) or not _plain(request_id):
        request_id = None
    failure: ResultError | None = None
    if not 200 <= status <= 299:
        inner = body.get("error")
        failure = _error(inner) if isinstance(inner, dict) else ResultError(f"HTTP {status}")
    elif isinstance(error, dict):
        failure = _error(error)
    return BatchResult(custom_id, status, body, failure, request_id)


def _error(data: dict[str, Any]) -> ResultError:
    message, code = data.get("message"), data.get("code")
    text = message if isinstance(message, str) and message else "The request failed"
    return ResultError(
        printable(text, MAX_MESSAGE), printable(str(code), 80) if code is not None else None
    )


def _plain(value: str) -> bool:
    return len(value) <= _MAX_REQUEST_ID and value.isprintable()
