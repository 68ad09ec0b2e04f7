"""A pipelined Redis connection: every caller's commands go out on one connection, written
together once per event-loop turn, and replies are matched to them in order. hiredis (Redis's
own C parser) reads the replies; this module only frames commands and keeps the order.

Why not redis-py: its asyncio client costs about 60 us of CPU per command here (a pooled
connection checked out and back, a lock, Python-level framing) against 10 to 40 us for this
(less the more callers share a write); the gateway's cache and rate limits make several calls
per request. Its import (120 ms, 7 MB) is gone too.

A command's caller bounds its wait (``asyncio.timeout``); a reply that arrives after its
caller gave up is read and dropped, so the connection stays in step without being closed.
"""

from __future__ import annotations

import asyncio
import hashlib
import ssl
from collections import deque
from collections.abc import Sequence
from typing import Any, cast
from urllib.parse import unquote, urlsplit

import hiredis
from pydantic import SecretStr

__all__ = ["MAX_PENDING", "Arg", "RedisClient", "RedisError", "ReplyError", "Script"]

# Commands waiting for their replies on one connection; past this a caller is refused.
MAX_PENDING = 10_000
# Bytes of replies buffered but not yet whole; past this the connection is broken off.
MAX_REPLY_BYTES = 128 * 1024 * 1024

Arg = bytes | str | int | float


class RedisError(Exception):
    """Redis answered an error, or the connection failed (never with the URL in the text)."""


class ReplyError(RedisError):
    """Redis answered the command with an error; the connection is sound."""

    @property
    def code(self) -> str:
        """The error's first word, as Redis sends it (``NOSCRIPT``, ``WRONGPASS``...)."""
        return str(self).split(" ", 1)[0]


class Script:
    """A Lua script, sent by its SHA1 once Redis knows it."""

    __slots__ = ("sha", "source")

    def __init__(self, source: str) -> None:
        self.source = source.encode()
        self.sha = hashlib.sha1(self.source).hexdigest().encode()


def encode(args: Sequence[Arg]) -> bytes:
    """One command in RESP: an array of bulk strings."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        if isinstance(arg, bytes):
            data = arg
        elif isinstance(arg, str):
            data = arg.encode()
        else:
            data = repr(arg).encode() if isinstance(arg, float) else b"%d" % arg
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


class _Connection(asyncio.Protocol):
    """One TCP (or TLS) connection: writes buffered per loop turn, replies matched in order."""

    def __init__(self) -> None:
        self._reader = hiredis.Reader()
        self._waiting: deque[asyncio.Future[Any]] = deque()
        self._buffer: list[bytes] = []
        self._transport: asyncio.WriteTransport | None = None
        self._flush_scheduled = False
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    @property
    def open(self) -> bool:
        return self._transport is not None and not self.lost.done()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have its methods.
        self._transport = cast(asyncio.WriteTransport, transport)

    def send(self, command: bytes) -> asyncio.Future[Any]:
        if len(self._waiting) >= MAX_PENDING:
            raise RedisError("too many Redis commands waiting for replies")
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiting.append(future)
        self._buffer.append(command)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)
        return future

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self._transport is not None and self._buffer:
            data = b"".join(self._buffer)
            self._buffer.clear()
            self._transport.write(data)

    def data_received(self, data: bytes) -> None:
        reader = self._reader
        reader.feed(data)
        try:
            while (reply := reader.gets()) is not False:
                if not self._waiting:
                    raise RedisError("Redis sent a reply nobody asked for")
                future = self._waiting.popleft()
                if future.done():
                    continue  # its caller gave up waiting
                if isinstance(reply, hiredis.ReplyError):
                    future.set_exception(ReplyError(str(reply)))
                else:
                    future.set_result(reply)
            if reader.len() > MAX_REPLY_BYTES:
                raise RedisError("a Redis reply is too large")
        except (hiredis.ProtocolError, RedisError) as exc:
            self._fail(RedisError(f"Redis protocol error ({type(exc).__name__})"))

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(RedisError("the connection to Redis was lost"))

    def close(self) -> None:
        self._fail(RedisError("the connection to Redis was closed"))

    def _fail(self, error: RedisError) -> None:
        transport, self._transport = self._transport, None
        if transport is not None:
            transport.abort()
        waiting, self._waiting = self._waiting, deque()
        for future in waiting:
            if not future.done():
                future.set_exception(error)
                future.exception()  # retrieved: a caller gone long ago logs nothing
        if not self.lost.done():
            self.lost.set_result(None)


class RedisClient:
    """Commands and scripts on one pipelined connection, opened on first use and again after
    it breaks. Every wait is the caller's to bound."""

    def __init__(self, url: SecretStr, *, connect_timeout: float) -> None:
        parts = urlsplit(url.get_secret_value())
        if parts.scheme not in ("redis", "rediss", "valkey", "valkeys"):
            raise ValueError("the state URL must start with redis://, rediss:// or valkey://")
        self._host = parts.hostname or "127.0.0.1"
        self._port = parts.port or 6379
        self._tls = parts.scheme in ("rediss", "valkeys")
        self._username = unquote(parts.username) if parts.username else None
        self._password = SecretStr(unquote(parts.password)) if parts.password else None
        path = parts.path.strip("/")
        self._db = int(path) if path.isdigit() else 0
        self._connect_timeout = connect_timeout
        self._connection: _Connection | None = None
        self._connecting: asyncio.Task[_Connection] | None = None

    def __repr__(self) -> str:
        return "RedisClient(<url hidden>)"

    async def execute(self, *args: Arg) -> Any:
        """Run one command; its reply (bytes, int, list, None)."""
        connection = self._connection
        if connection is None or not connection.open:
            connection = await self._connect()
        return await connection.send(encode(args))

    async def run(self, script: Script, keys: Sequence[Arg], args: Sequence[Arg]) -> Any:
        """Run ``script`` by its SHA1, loading it first if Redis does not know it."""
        try:
            return await self.execute(b"EVALSHA", script.sha, len(keys), *keys, *args)
        except ReplyError as exc:
            if exc.code != "NOSCRIPT":
                raise
        return await self.execute(b"EVAL", script.source, len(keys), *keys, *args)

    async def aclose(self) -> None:
        """Close the connection; commands waiting fail."""
        connecting, self._connecting = self._connecting, None
        if connecting is not None:
            connecting.cancel()
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.close()

    def drop(self) -> None:
        """Break the connection off (it stopped answering); the next command opens another."""
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.close()

    async def _connect(self) -> _Connection:
        # Concurrent callers share one attempt.
        if self._connecting is None or self._connecting.done():
            self._connecting = asyncio.get_running_loop().create_task(self._open())
        return await asyncio.shield(self._connecting)

    async def _open(self) -> _Connection:
        loop = asyncio.get_running_loop()
        context = ssl.create_default_context() if self._tls else None
        connection: _Connection | None = None
        try:
            async with asyncio.timeout(self._connect_timeout):
                _, connection = await loop.create_connection(
                    _Connection,
                    self._host,
                    self._port,
                    ssl=context,
                    server_hostname=self._host if context is not None else None,
                )
                hello = []
                if self._password is not None:
                    secret = self._password.get_secret_value()
                    auth = (
                        (b"AUTH", self._username, secret) if self._username else (b"AUTH", secret)
                    )
                    hello.append(connection.send(encode(auth)))
                if self._db:
                    hello.append(connection.send(encode((b"SELECT", self._db))))
                for reply in hello:
                    await reply
        except BaseException as exc:
            if connection is not None:
                connection.close()
            if isinstance(exc, OSError | TimeoutError):
                raise RedisError(f"cannot connect to Redis ({type(exc).__name__})") from None
            raise
        self._connection = connection
        return connection
