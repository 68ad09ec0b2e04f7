"""The server's batching log handler: lines are kept in order and none is lost."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator

import pytest

from leapasgi._logging import AccessLog, BatchingHandler, JsonFormatter, ServerFormatter


@pytest.fixture
def logged() -> Iterator[tuple[logging.Logger, BatchingHandler, io.StringIO]]:
    stream = io.StringIO()
    # An interval no test waits for: lines are written by flush(), a warning or close().
    handler = BatchingHandler(stream, interval=3600)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    logger = logging.getLogger("leapasgi.test-batching")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    yield logger, handler, stream
    logger.removeHandler(handler)
    handler.close()


def test_access_lines_wait_for_the_next_flush_and_records_go_out_at_once(
    logged: tuple[logging.Logger, BatchingHandler, io.StringIO],
) -> None:
    logger, handler, stream = logged
    for n in range(3):
        handler.write_line(f"request {n}")
    assert stream.getvalue() == ""
    logger.info("a record")  # written at once, after the lines queued before it
    assert stream.getvalue() == "request 0\nrequest 1\nrequest 2\nINFO a record\n"
    handler.write_line("request 3")
    handler.flush()
    assert stream.getvalue().endswith("INFO a record\nrequest 3\n")


def test_close_writes_what_is_left_and_later_lines_are_written_at_once(
    logged: tuple[logging.Logger, BatchingHandler, io.StringIO],
) -> None:
    _, handler, stream = logged
    handler.write_line("last of the run")
    handler.close()
    assert stream.getvalue() == "last of the run\n"
    # logging.config clears (closes) existing handlers; one still attached must not drop lines.
    handler.write_line("after close")
    assert stream.getvalue().endswith("after close\n")


def test_a_closed_stream_does_not_raise_into_the_caller(
    logged: tuple[logging.Logger, BatchingHandler, io.StringIO],
) -> None:
    logger, handler, stream = logged
    stream.close()
    logger.info("into the void")
    handler.flush()


def _isolated(name: str, *handlers: logging.Handler) -> logging.Logger:
    logger = logging.Logger(name)  # outside the global tree: no pytest handlers above it
    logger.setLevel(logging.INFO)
    for handler in handlers:
        logger.addHandler(handler)
    return logger


def test_the_access_log_writes_the_line_logging_would_have_written() -> None:
    fast_out, slow_out = io.StringIO(), io.StringIO()
    fast = BatchingHandler(fast_out, interval=3600)
    slow = BatchingHandler(slow_out, interval=3600)
    slow.addFilter(lambda record: True)  # any filter sends lines through logging itself
    for handler in (fast, slow):
        handler.setFormatter(ServerFormatter())
    fast_logger = _isolated("leapasgi.access", fast)

    def no_records(*args: object, **kwargs: object) -> logging.LogRecord:
        raise AssertionError("the fast path made a LogRecord")

    fast_logger.makeRecord = no_records  # type: ignore[method-assign]
    try:
        for handler, logger in ((fast, fast_logger), (slow, _isolated("leapasgi.access", slow))):
            AccessLog(logger).info("chat model=%s status=%d ms=%.1f", "m1", 200, 1.25)
            handler.flush()
    finally:
        fast.close()
        slow.close()
    stamp = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}"
    pattern = stamp + r" leapasgi\.access chat model=m1 status=200 ms=1\.2\n"
    assert re.fullmatch(pattern, fast_out.getvalue())
    assert re.fullmatch(pattern, slow_out.getvalue())
    assert fast_out.getvalue()[:16] == slow_out.getvalue()[:16]  # same local time format


def test_any_other_handler_gets_ordinary_records() -> None:
    seen: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record)

    out = io.StringIO()
    batching = BatchingHandler(out, interval=3600)
    batching.setFormatter(ServerFormatter())
    try:
        log = AccessLog(_isolated("leapasgi.access", batching, Keep()))
        log.info("chat model=%s", "m1")
        batching.flush()
    finally:
        batching.close()
    assert [r.getMessage() for r in seen] == ["chat model=m1"]
    assert out.getvalue().endswith("leapasgi.access chat model=m1\n")


def test_a_disabled_access_log_formats_nothing() -> None:
    logger = _isolated("leapasgi.access")
    logger.setLevel(logging.WARNING)

    class Boom:
        def __mod__(self, other: object) -> str:
            raise AssertionError("formatted although disabled")

    AccessLog(logger).info(Boom())  # type: ignore[arg-type]


def test_the_access_log_flushes_its_pending_lines() -> None:
    out = io.StringIO()
    handler = BatchingHandler(out, interval=3600)
    handler.setFormatter(ServerFormatter())
    try:
        log = AccessLog(_isolated("leapasgi.access", handler))
        log.info("chat model=%s", "m1")
        assert out.getvalue() == ""
        log.flush()
        assert out.getvalue().endswith("leapasgi.access chat model=m1\n")
    finally:
        handler.close()


def test_json_lines_write_the_fields_logging_would_have_written() -> None:
    fast_out, slow_out = io.StringIO(), io.StringIO()
    fast = BatchingHandler(fast_out, interval=3600)
    slow = BatchingHandler(slow_out, interval=3600)
    slow.addFilter(lambda record: True)  # through logging itself, as a record
    for handler in (fast, slow):
        handler.setFormatter(JsonFormatter())
    fields = {"request_id": "r1", "trail": "u1:503 -> u2:ok", "status": 200}
    try:
        for handler in (fast, slow):
            log = AccessLog(_isolated("leapasgi.access", handler), structured=True)
            log.info("chat %s %d", "m\n1", 200, fields=fields)
            handler.flush()
    finally:
        fast.close()
        slow.close()
    for out in (fast_out, slow_out):
        lines = out.getvalue().splitlines()
        assert len(lines) == 1  # the model's line break stays inside the JSON string
        line = json.loads(lines[0])
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", line.pop("time"))
        assert line == {
            "level": "INFO",
            "logger": "leapasgi.access",
            "message": "chat m\n1 200",
            **fields,
        }


def test_json_lines_carry_a_records_exception_and_escape_nothing_out_of_the_line() -> None:
    out = io.StringIO()
    handler = BatchingHandler(out, interval=3600)
    handler.setFormatter(JsonFormatter())
    logger = _isolated("uvicorn.error", handler)
    try:
        try:
            raise ValueError("boom")
        except ValueError:
            logger.exception("failed\r\nforged line")
        logger.warning("plain")
    finally:
        handler.close()
    first, second = (json.loads(line) for line in out.getvalue().splitlines())
    assert first["level"] == "ERROR"
    assert first["logger"] == "uvicorn.error"
    assert first["message"] == "failed\r\nforged line"
    assert "ValueError: boom" in first["exception"]
    assert second["message"] == "plain"
    assert "exception" not in second


def test_a_structured_access_record_carries_its_fields_for_a_host_formatter() -> None:
    seen: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record)

    AccessLog(_isolated("leapasgi.access", Keep()), structured=True).info(
        "chat %s", "m1", fields={"trail": "u1:ok"}
    )
    assert seen[0].getMessage() == "chat m1"
    assert seen[0].fields == {"trail": "u1:ok"}  # type: ignore[attr-defined]
