"""The server's batching log handler: lines are kept in order and none is lost."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import pytest

from leapasgi._logging import BatchingHandler


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


def test_info_lines_wait_for_the_next_flush_and_keep_their_order(
    logged: tuple[logging.Logger, BatchingHandler, io.StringIO],
) -> None:
    logger, handler, stream = logged
    for n in range(3):
        logger.info("request %d", n)
    assert stream.getvalue() == ""
    handler.flush()
    assert stream.getvalue() == "INFO request 0\nINFO request 1\nINFO request 2\n"


def test_a_warning_writes_everything_pending_at_once(
    logged: tuple[logging.Logger, BatchingHandler, io.StringIO],
) -> None:
    logger, _, stream = logged
    logger.info("before")
    logger.warning("upstream down")
    assert stream.getvalue() == "INFO before\nWARNING upstream down\n"


def test_close_writes_what_is_left_and_later_lines_are_written_at_once(
    logged: tuple[logging.Logger, BatchingHandler, io.StringIO],
) -> None:
    logger, handler, stream = logged
    logger.info("last of the run")
    handler.close()
    assert stream.getvalue() == "INFO last of the run\n"
    # logging.config clears (closes) existing handlers; one still attached must not drop lines.
    logger.info("after close")
    assert stream.getvalue().endswith("INFO after close\n")


def test_a_closed_stream_does_not_raise_into_the_caller(
    logged: tuple[logging.Logger, BatchingHandler, io.StringIO],
) -> None:
    logger, handler, stream = logged
    stream.close()
    logger.info("into the void")
    handler.flush()
