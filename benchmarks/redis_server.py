"""A redis-server of a benchmark's own: its command line, and the commands it has run.

The server listens on 127.0.0.1 only, keeps nothing on disk (``--save ''``, no append-only
file) and runs in the foreground, so the benchmark stops it like its other children.
"""

from __future__ import annotations

import shutil
import socket
from pathlib import Path

_INFO_COMMANDSTATS = b"*2\r\n$4\r\nINFO\r\n$12\r\ncommandstats\r\n"
_TIMEOUT = 5.0


def redis_command(port: int, workdir: Path) -> list[str]:
    """The command starting redis-server on ``port``, its working directory ``workdir``."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError(
            "redis-server is missing (apt-get install -y redis-server);"
            " or leave the modes with a redis target out of --modes"
        )
    return [
        binary,
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        str(workdir),
    ]


def command_counts(port: int) -> dict[str, int]:
    """How many times the server has run each command (INFO commandstats), but INFO."""
    with socket.create_connection(("127.0.0.1", port), timeout=_TIMEOUT) as sock:
        sock.sendall(_INFO_COMMANDSTATS)
        reply = b""
        # A bulk string: "$<length>\r\n<text>\r\n".
        while b"\r\n" not in reply or len(reply) < _bulk_end(reply):
            chunk = sock.recv(65536)
            if not chunk:
                raise RuntimeError(f"redis-server closed the connection: {reply[:200]!r}")
            reply += chunk
    counts = {}
    for line in reply.decode().splitlines():
        name, _, stats = line.partition(":")
        if name.startswith("cmdstat_") and name != "cmdstat_info":
            fields = dict(field.split("=", 1) for field in stats.split(","))
            counts[name.removeprefix("cmdstat_")] = int(fields["calls"])
    return counts


def _bulk_end(reply: bytes) -> int:
    head, _, _ = reply.partition(b"\r\n")
    if not head.startswith(b"$"):
        raise RuntimeError(f"not a bulk reply: {reply[:200]!r}")
    return len(head) + 2 + int(head[1:]) + 2
