"""A real ``redis-server`` on 127.0.0.1 for tests: started on a free port, frozen (SIGSTOP),
thawed, killed and restarted on the same port at will, and always stopped at the end.

    from tests.redis_server import RedisServer, redis_server  # the fixture, for pytest

``redis-server`` must be installed (Debian: ``apt-get install redis-server``); without it the
tests fail, saying so, rather than being skipped.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

import pytest

__all__ = ["RedisServer", "free_port", "redis_server", "running_server"]

# Seconds a server may take to answer its first PING, or to exit when asked.
START_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _executable() -> str:
    path = shutil.which("redis-server")
    if path is None:
        pytest.fail(
            "redis-server is not installed (or not on PATH): the Redis state tests need a real "
            "server. Install it, e.g. `apt-get install redis-server`.",
            pytrace=False,
        )
    return path


class RedisServer:
    """One ``redis-server`` process without persistence, bound to 127.0.0.1, working (and
    logging, to ``server.log``) in ``workdir``: the caller's, or a temporary one removed by
    ``stop``."""

    def __init__(
        self,
        workdir: Path | str | None = None,
        *,
        port: int | None = None,
        password: str | None = None,
    ) -> None:
        self.port = port or free_port()
        self.password = password
        self._executable = _executable()
        self._owns_dir = workdir is None
        self._dir = (
            Path(tempfile.mkdtemp(prefix="leap-redis-")) if workdir is None else Path(workdir)
        )
        self._dir.mkdir(parents=True, exist_ok=True)
        self._process: subprocess.Popen[bytes] | None = None
        self._frozen = False

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> RedisServer:
        """Start it (on the same port as before) and wait until it answers."""
        if self.running:
            return self
        args = [
            self._executable,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self._dir),
            "--daemonize", "no",
        ]  # fmt: skip
        if self.password:
            args += ["--requirepass", self.password]
        with (self._dir / "server.log").open("ab") as log:
            self._process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        self._frozen = False
        deadline = time.monotonic() + START_TIMEOUT
        while not self.ping():
            if not self.running:
                raise RuntimeError(f"redis-server exited at start: see {self._dir}/server.log")
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"redis-server did not answer on port {self.port}")
            time.sleep(0.01)
        return self

    def ping(self, timeout: float = 0.2) -> bool:
        """Whether it answers PING now (a frozen server does not)."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=timeout) as sock:
                command = b"PING\r\n"
                if self.password:
                    command = f"AUTH {self.password}\r\n".encode() + command
                sock.sendall(command)
                reply = b""
                while b"PONG" not in reply:
                    chunk = sock.recv(256)
                    if not chunk:
                        return False
                    reply += chunk
                return True
        except OSError:
            return False

    def freeze(self) -> None:
        """Stop the process (SIGSTOP): connections stay open and nothing answers."""
        if self.running and not self._frozen:
            assert self._process is not None
            self._process.send_signal(signal.SIGSTOP)
            self._frozen = True

    def thaw(self) -> None:
        """Let a frozen server run again (SIGCONT)."""
        if self.running and self._frozen:
            assert self._process is not None
            self._process.send_signal(signal.SIGCONT)
        self._frozen = False

    def kill(self) -> None:
        """End it at once (SIGKILL): its data is gone, connections are reset."""
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            process.kill()
            process.wait(STOP_TIMEOUT)
        self._frozen = False

    def restart(self) -> None:
        """Kill it and start an empty one on the same port."""
        self.kill()
        self.start()

    def stop(self) -> None:
        """Thaw, ask it to exit, kill it if it does not, and remove its temporary directory."""
        process = self._process
        try:
            if process is not None and process.poll() is None:
                self.thaw()
                process.terminate()
                try:
                    process.wait(STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(STOP_TIMEOUT)
        finally:
            self._process = None
            self._frozen = False
            if self._owns_dir:
                shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __del__(self) -> None:
        # Last resort (a test that never stopped it): no server outlives the test run.
        process = getattr(self, "_process", None)
        if process is not None and process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(STOP_TIMEOUT)


def running_server() -> Iterator[RedisServer]:
    """A fresh, running server, stopped afterwards whatever happened (a failed start too):
    the body of a fixture of any scope."""
    server = RedisServer()
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A fresh, running server for one test; stopped afterwards, whatever happened."""
    yield from running_server()
