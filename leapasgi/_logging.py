"""Logging for the standalone server: one line per request must not cost a write per request."""

from __future__ import annotations

import logging
import threading
from typing import TextIO

__all__ = ["BatchingHandler", "configure_server_logging"]

FORMAT = "%(asctime)s %(name)s %(message)s"
# Longest a formatted line waits before it is written.
FLUSH_INTERVAL = 0.2


class BatchingHandler(logging.Handler):
    """Formats each record as it is logged, and writes the lines in batches from a background
    thread at most ``interval`` seconds apart, so the event loop never waits on a write.
    Warnings and worse, ``flush()`` and ``close()`` write at once."""

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
        if record.levelno >= logging.WARNING or self._stop.is_set():
            self._write()  # closed handlers (logging.config clears them) still write

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


def configure_server_logging(stream: TextIO, *, level: int = logging.INFO) -> BatchingHandler:
    """Log to ``stream`` through a BatchingHandler (once per process). Records skip what the
    lines never print (the caller's source line, thread and process names), which would cost
    every request a frame walk. The logging HOWTO's "Optimization" section names these switches."""
    root = logging.getLogger()
    for existing in root.handlers:
        if isinstance(existing, BatchingHandler):
            return existing
    handler = BatchingHandler(stream)
    handler.setFormatter(logging.Formatter(FORMAT))
    root.addHandler(handler)
    root.setLevel(level)
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    return handler
