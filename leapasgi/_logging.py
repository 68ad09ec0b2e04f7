"""Logging for the standalone server: one line per request must not cost a write per request."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Mapping
from typing import Any, TextIO

__all__ = [
    "MAX_FIELD",
    "AccessLog",
    "BatchingHandler",
    "ContentGuard",
    "JsonFormatter",
    "ServerFormatter",
    "configure_server_logging",
    "guard_handlers",
    "printable",
]

FORMAT = "%(asctime)s %(name)s %(message)s"
# Longest a formatted line waits before it is written.
FLUSH_INTERVAL = 0.2
# Characters of one client- or upstream-given value (a model name, a path) kept in a log line.
MAX_FIELD = 200
# Characters of any one log message kept (a library's message may quote an upstream's words).
MAX_MESSAGE = 2000
# Loggers whose debug output is ours: it never carries prompts, completions or keys.
_OWN_LOGGERS = ("leapasgi", "leapmcp")
# Control characters, and the line breaks Unicode adds, as escapes: none can end a log line.
_ESCAPES = {c: f"\\x{c:02x}" for c in (*range(0x20), 0x7F, 0x85)} | {
    0x2028: "\\u2028",
    0x2029: "\\u2029",
}


def printable(value: str, limit: int = MAX_FIELD) -> str:
    """``value`` as one safe piece of a log line: control characters escaped, at most
    ``limit`` characters (then an ellipsis and the full length)."""
    if not value.isprintable():
        value = value.translate(_ESCAPES)
    if len(value) > limit:
        value = f"{value[:limit]}...({len(value)} chars)"
    return value


class ContentGuard(logging.Filter):
    """Keeps content out of the process's log, at every level: records below INFO from other
    libraries are dropped (their debug output can carry prompts and completions; the mcp
    SDK logs every message it sends), and every message becomes one escaped, capped line."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.INFO and not record.name.startswith(_OWN_LOGGERS):
            return False
        message = record.getMessage()
        safe = printable(message, MAX_MESSAGE)
        if safe is not message:
            record.msg, record.args = safe, None
        return True


def guard_handlers(logger: logging.Logger | None = None) -> None:
    """Put a ContentGuard on every handler of ``logger`` (the root logger by default)."""
    for handler in (logger or logging.getLogger()).handlers:
        if not any(isinstance(f, ContentGuard) for f in handler.filters):
            handler.addFilter(ContentGuard())


class BatchingHandler(logging.Handler):
    """Writes log records at once, and the access log's lines (``write_line``) in batches from
    a background thread at most ``interval`` seconds apart, so the event loop does not wait on
    a write per request. ``flush()`` and ``close()`` write what is pending.

    Records are never held back: uvicorn ends a SIGTERM shutdown by re-raising the signal,
    which kills the process before any exit hook could write them. The gateway flushes its
    access lines when it closes, which a graceful shutdown reaches before that."""

    def __init__(self, stream: TextIO, *, interval: float = FLUSH_INTERVAL) -> None:
        super().__init__()
        self.stream = stream
        self._pending: list[str] = []
        self._write_lock = threading.Lock()
        self._stop = threading.Event()
        self._interval = interval
        self._thread = threading.Thread(target=self._run, name="leapasgi-log", daemon=True)
        self._thread.start()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
        except Exception:
            self.handleError(record)
            return
        self._pending.append(line + "\n")  # under self.lock: Handler.handle holds it
        self._write()  # with the access lines before it, in order

    def write_line(self, line: str) -> None:
        """Queue one already formatted line (the access log's fast path)."""
        self.acquire()
        try:
            self._pending.append(line + "\n")
            if self._stop.is_set():
                self._write()
        finally:
            self.release()

    def flush(self) -> None:
        """Write every pending line now."""
        self.acquire()
        try:
            self._write()
        finally:
            self.release()

    def _write(self) -> None:
        # Called with self.lock held; the write lock keeps batches in order.
        lines, self._pending = self._pending, []
        if not lines:
            return
        with self._write_lock:
            try:
                self.stream.write("".join(lines))
                self.stream.flush()
            except (OSError, ValueError):
                pass  # stderr closed or gone: nothing else to tell it to

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self.flush()

    def close(self) -> None:
        """Stop the writer thread and write what is left."""
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=1.0)
        self.flush()
        super().close()

    def __repr__(self) -> str:
        return f"<BatchingHandler {logging.getLevelName(self.level)}>"


class ServerFormatter(logging.Formatter):
    """The server's line format (FORMAT, default date format), as AccessLog writes it too."""

    def __init__(self) -> None:
        super().__init__(FORMAT)


class JsonFormatter(logging.Formatter):
    """One JSON object per line, for log pipelines: ``time`` (UTC, ISO 8601), ``level``,
    ``logger``, ``message``, the access log's fields when the record has them (``fields``),
    and an exception's traceback as ``exception``."""

    def format(self, record: logging.LogRecord) -> str:
        line = _json_head(record.created, record.levelname, record.name, record.getMessage())
        fields = getattr(record, "fields", None)
        if isinstance(fields, Mapping):
            line.update(fields)
        if record.exc_info:
            line["exception"] = printable(self.formatException(record.exc_info), MAX_MESSAGE)
        return json.dumps(line, ensure_ascii=False, default=str)


def _json_head(created: float, level: str, logger: str, message: str) -> dict[str, Any]:
    seconds = int(created)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
    millis = int((created - seconds) * 1000)
    return {"time": f"{stamp}.{millis:03d}Z", "level": level, "logger": logger, "message": message}


def configure_server_logging(
    stream: TextIO, *, level: int = logging.INFO, json_lines: bool = False
) -> BatchingHandler:
    """Log to ``stream`` through a BatchingHandler (once per process), as text or, with
    ``json_lines``, one JSON object per line (JsonFormatter). Records skip what the
    lines never print (the caller's source line, thread and process names), which would cost
    every request a frame walk. The logging HOWTO's "Optimization" section names these switches."""
    root = logging.getLogger()
    for existing in root.handlers:
        if isinstance(existing, BatchingHandler):
            return existing
    handler = BatchingHandler(stream)
    handler.setFormatter(JsonFormatter() if json_lines else ServerFormatter())
    handler.addFilter(ContentGuard())
    root.addHandler(handler)
    root.setLevel(level)
    logging._srcfile = None  # noqa: SLF001 (the logging HOWTO's documented switch)
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    return handler


class AccessLog:
    """The access log: one INFO line per request on its logger.

    A LogRecord and the trip through logging cost more than routing a request. So when the
    line can only end up in this process's BatchingHandler (set up by
    ``configure_server_logging``, with nothing else on the way: no other handler, filter or
    level in between), it is formatted here, exactly as that handler's formatter would, and
    queued directly. Any other set-up (a host app's logging, pytest's caplog) gets ordinary
    log records.
    """

    __slots__ = ("_clock_second", "_logger", "_prefix", "_stamp", "structured")

    def __init__(self, logger: logging.Logger, *, structured: bool = False) -> None:
        self._logger = logger
        self._prefix = f" {logger.name} "
        self._clock_second = -1
        self._stamp = ""
        # Whether lines carry their fields as well (``[server] log_format = "json"``): a
        # record's ``fields``, for JsonFormatter or a host app's own structured formatter.
        self.structured = structured

    @property
    def enabled(self) -> bool:
        """Whether a line would be written (else nothing need be made for it)."""
        return self._logger.isEnabledFor(logging.INFO)

    def info(self, message: str, *args: Any, fields: Mapping[str, Any] | None = None) -> None:
        """Log ``message % args`` at INFO, with ``fields`` for a structured format."""
        logger = self._logger
        if not logger.isEnabledFor(logging.INFO):
            return
        handler = self._only_handler()
        if handler is None:
            logger.info(message, *args, extra=None if fields is None else {"fields": fields})
            return
        now = time.time()
        if type(handler.formatter) is JsonFormatter:
            line = _json_head(now, "INFO", logger.name, message % args)
            if fields is not None:
                line.update(fields)
            handler.write_line(json.dumps(line, ensure_ascii=False, default=str))
            return
        second = int(now)
        if second != self._clock_second:
            self._clock_second = second
            self._stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second))
        millis = int((now - second) * 1000)
        handler.write_line(f"{self._stamp},{millis:03d}{self._prefix}{message % args}")

    def flush(self) -> None:
        """Write the lines still waiting in the server's handler (at shutdown)."""
        handler = self._only_handler()
        if handler is not None:
            handler.flush()

    def _only_handler(self) -> BatchingHandler | None:
        found: BatchingHandler | None = None
        logger: logging.Logger | None = self._logger
        while logger is not None:
            if logger.filters or (logger.level and logger.level > logging.INFO):
                return None
            for handler in logger.handlers:
                if found is not None or not isinstance(handler, BatchingHandler):
                    return None
                filters = handler.filters
                if handler.level > logging.INFO or (
                    filters and (len(filters) > 1 or type(filters[0]) is not ContentGuard)
                ):
                    return None
                if type(handler.formatter) not in _OWN_FORMATS:
                    return None
                found = handler
            if not logger.propagate:
                break
            logger = logger.parent
        return found


# The formats AccessLog writes itself, exactly as these formatters would.
_OWN_FORMATS = (ServerFormatter, JsonFormatter)
