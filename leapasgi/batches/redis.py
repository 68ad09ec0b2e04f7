"""``RedisBatchStore``: files and batches shared by every replica, the records in Redis and the
bytes in a directory every replica mounts (``_files.py``).

    <prefix>:batch:seq                  the order of creation (INCR)
    <prefix>:batch:file:<id>            a file's record (JSON)
    <prefix>:batch:files:<tag>[:<p>]    an owner's files (sorted set by seq), all and by purpose
    <prefix>:batch:file-expiry          files by expiry time (sorted set)
    <prefix>:batch:b:<id>               a batch (hash): data, status, finished, owner tag,
                                        input file, seq, counts and usage
    <prefix>:batch:batches:<tag>        an owner's batches (sorted set by seq)
    <prefix>:batch:open[:<tag>]         unfinished batches, all and an owner's (sorted sets)
    <prefix>:batch:reads:<file id>      unfinished batches reading a file (set)
    <prefix>:batch:lines:<id>           a batch's recorded answers (hash: line -> ok flag + text)
    <prefix>:batch:lease:<id>           who runs the batch, until when (hash)

``<tag>`` is a digest of the owner (``_`` for none), so a key's length never depends on what a
caller sent; ids from a request are checked before they name a key. Every check-and-change is
one Lua script: a line is recorded (HSETNX) and counted in one step, a status moves only from
the one its writer saw, a lease is taken only when free, expired or already the claimant's.

This store has its own connection (batch answers can be large; they never wait behind the hot
path's commands, nor delay them) and a patient timeout; it has no local fallback: a call that
does not reach Redis raises ``StoreUnavailableError`` (the API answers 503, the runner pauses
and tries again). A call that timed out may have been applied: a record is then found recorded
when tried again, and bytes renamed for a record that may exist are left for ``tidy``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import anyio.to_thread

from ..exceptions import StoreUnavailableError
from ..state._resp import Arg, RedisClient, RedisError, ReplyError, Script
from ._files import FileDirectory
from .objects import BatchRecord, BatchStatus, FileRecord, LineResult
from .store import NewFile

__all__ = ["OP_TIMEOUT", "RedisBatchStore"]

T = TypeVar("T")

# Seconds one call may take (a page of answers is megabytes, not the hot path's bytes).
OP_TIMEOUT = 2.0
# Recorded answers read per call, file records and batches per call, ids per EXISTS call.
_PAGE = 100
_IDS = 1000
# Unfinished batches looked at per search for unleased ones.
_SCAN = 10_000
# What a file or batch id from a request may look like before it names a key.
_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_PURPOSES = ("batch", "batch_output")
_COUNTS = ("completed", "failed", "input_tokens", "output_tokens", "cached_tokens")

# KEYS: file, owner's files, owner's files of its purpose, expiry, seq. ARGV: JSON, id,
# expiry ('' for none).
_ADD_FILE = Script(
    """
if redis.call('SET', KEYS[1], ARGV[1], 'NX') == false then return 0 end
local seq = redis.call('INCR', KEYS[5])
redis.call('ZADD', KEYS[2], seq, ARGV[2])
redis.call('ZADD', KEYS[3], seq, ARGV[2])
if ARGV[3] ~= '' then redis.call('ZADD', KEYS[4], ARGV[3], ARGV[2]) end
return 1
"""
)

# KEYS: file, owner's files, owner's files of its purpose, expiry. ARGV: id.
_DELETE_FILE = Script(
    """
if redis.call('DEL', KEYS[1]) == 0 then return 0 end
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('ZREM', KEYS[4], ARGV[1])
return 1
"""
)

# KEYS: batch, owner's batches, open, owner's open, readers of its input, seq. ARGV: id, data,
# status, finished ('1'/'0'), owner tag, input file id.
_ADD_BATCH = Script(
    """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local seq = redis.call('INCR', KEYS[6])
redis.call('HSET', KEYS[1], 'data', ARGV[2], 'status', ARGV[3], 'finished', ARGV[4],
  'owner', ARGV[5], 'input', ARGV[6], 'seq', seq, 'completed', 0, 'failed', 0,
  'input_tokens', 0, 'output_tokens', 0, 'cached_tokens', 0)
redis.call('ZADD', KEYS[2], seq, ARGV[1])
if ARGV[4] == '0' then
  redis.call('ZADD', KEYS[3], seq, ARGV[1])
  redis.call('ZADD', KEYS[4], seq, ARGV[1])
  redis.call('SADD', KEYS[5], ARGV[1])
end
return 1
"""
)

# KEYS: batch, open, owner's open, readers of its input, lines, lease, seq, expiry; then per
# file its record, its owner's files and its owner's files of its purpose. ARGV: id, was,
# status, data, finished ('1'/'0'), completed and failed ('' to keep the counts), the number
# of files, then per file its id, JSON and expiry. Moves the status only from `was`.
_MOVE = Script(
    """
if redis.call('HGET', KEYS[1], 'status') ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], 'status', ARGV[3], 'data', ARGV[4], 'finished', ARGV[5])
if ARGV[6] ~= '' then redis.call('HSET', KEYS[1], 'completed', ARGV[6], 'failed', ARGV[7]) end
if ARGV[5] == '1' then
  redis.call('ZREM', KEYS[2], ARGV[1])
  redis.call('ZREM', KEYS[3], ARGV[1])
  redis.call('SREM', KEYS[4], ARGV[1])
  redis.call('DEL', KEYS[5], KEYS[6])
end
for i = 1, tonumber(ARGV[8]) do
  local a, k = 8 + 3 * (i - 1), 8 + 3 * (i - 1)
  local seq = redis.call('INCR', KEYS[7])
  redis.call('SET', KEYS[k + 1], ARGV[a + 2])
  redis.call('ZADD', KEYS[k + 2], seq, ARGV[a + 1])
  redis.call('ZADD', KEYS[k + 3], seq, ARGV[a + 1])
  if ARGV[a + 3] ~= '' then redis.call('ZADD', KEYS[8], ARGV[a + 3], ARGV[a + 1]) end
end
return 1
"""
)

# KEYS: batch, lines. ARGV: line, ok flag + text, ok ('1'/'0'), input, output and cached
# tokens. Recorded and counted once, and only while the batch is unfinished.
_RECORD = Script(
    """
if redis.call('HGET', KEYS[1], 'finished') ~= '0' then return 0 end
if redis.call('HSETNX', KEYS[2], ARGV[1], ARGV[2]) == 0 then return 0 end
if ARGV[3] == '1' then
  redis.call('HINCRBY', KEYS[1], 'completed', 1)
else
  redis.call('HINCRBY', KEYS[1], 'failed', 1)
end
redis.call('HINCRBY', KEYS[1], 'input_tokens', ARGV[4])
redis.call('HINCRBY', KEYS[1], 'output_tokens', ARGV[5])
redis.call('HINCRBY', KEYS[1], 'cached_tokens', ARGV[6])
return 1
"""
)

# KEYS: batch, lease. ARGV: holder, now, until (seconds on the runners' clocks).
_CLAIM = Script(
    """
if redis.call('HGET', KEYS[1], 'finished') ~= '0' then return 0 end
local held = redis.call('HMGET', KEYS[2], 'holder', 'until')
if held[1] and held[1] ~= ARGV[1] and tonumber(held[2]) > tonumber(ARGV[2]) then return 0 end
redis.call('HSET', KEYS[2], 'holder', ARGV[1], 'until', ARGV[3])
return 1
"""
)

# KEYS: lease. ARGV: holder.
_RELEASE = Script(
    """
if redis.call('HGET', KEYS[1], 'holder') == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 0
"""
)

# KEYS: open. ARGV: now, most to return, the lease keys' prefix, most to look at.
_UNLEASED = Script(
    """
local out = {}
local most = tonumber(ARGV[2])
if most <= 0 then return out end
for _, id in ipairs(redis.call('ZRANGE', KEYS[1], 0, tonumber(ARGV[4]) - 1)) do
  local until_ = redis.call('HGET', ARGV[3] .. id, 'until')
  if not until_ or tonumber(until_) <= tonumber(ARGV[1]) then
    out[#out + 1] = id
    if #out >= most then break end
  end
end
return out
"""
)


def _tag(owner: str | None) -> str:
    """An owner's part of a key: bounded, whatever the owner string holds."""
    if owner is None:
        return "_"
    return hashlib.sha256(owner.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def _valid(identifier: str | None) -> bool:
    return identifier is not None and _ID.fullmatch(identifier) is not None


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ReplyError):
        code = exc.code
        return f"server replied {code[:20]}" if code.isalpha() else "server replied an error"
    if isinstance(exc, TimeoutError):
        return "timed out"
    return "ConnectionError"


def _flag(value: bool) -> str:
    return "1" if value else "0"


class RedisBatchStore:
    """Files and batches in Redis (records) and ``directory`` (bytes, shared by every
    replica); see the module docstring for the layout."""

    def __init__(
        self,
        client: RedisClient,
        prefix: str,
        directory: str | Path,
        *,
        op_timeout: float = OP_TIMEOUT,
    ) -> None:
        self._client = client
        self._op_timeout = op_timeout
        self._files = FileDirectory(directory)
        self._p = f"{prefix}:batch:"
        self._started = False

    def __repr__(self) -> str:
        return f"RedisBatchStore(prefix={self._p[:-7]!r}, directory={str(self._files.root)!r})"

    @property
    def directory(self) -> Path:
        return self._files.path

    async def start(self) -> None:
        if self._started:
            return
        await anyio.to_thread.run_sync(self._files.open)
        self._started = True
        with contextlib.suppress(StoreUnavailableError):  # they wait for the next start
            await self._files.tidy(self._known)

    async def aclose(self) -> None:
        self._started = False
        await self._client.aclose()

    def scratch(self) -> Path:
        return self._files.scratch()

    # -- the connection -----------------------------------------------------------------

    async def _do(self, make: Callable[[RedisClient], Awaitable[T]]) -> T:
        """``make(client)``'s result, within the op timeout; StoreUnavailableError else."""
        try:
            async with asyncio.timeout(self._op_timeout):
                return await make(self._client)
        except (RedisError, TimeoutError, OSError) as exc:
            if not isinstance(exc, ReplyError):
                self._client.drop()  # it may be half-open; the next call connects again
            raise StoreUnavailableError(
                f"The batch store (Redis) cannot be reached ({_reason(exc)})"
            ) from None

    async def _execute(self, *args: Arg) -> Any:
        return await self._do(lambda client: client.execute(*args))

    async def _run(self, script: Script, keys: Sequence[Arg], args: Sequence[Arg]) -> Any:
        return await self._do(lambda client: client.run(script, keys, args))

    async def _known(self, ids: list[str]) -> set[str]:
        kept: set[str] = set()
        for start in range(0, len(ids), _IDS):
            part = ids[start : start + _IDS]

            async def exists(client: RedisClient, part: list[str] = part) -> list[Any]:
                replies = [client.execute("EXISTS", self._p + "file:" + i) for i in part]
                return list(await asyncio.gather(*replies))

            found = await self._do(exists)
            kept.update(i for i, there in zip(part, found, strict=True) if there)
        return kept

    # -- files --------------------------------------------------------------------------

    def _file_keys(self, record: FileRecord) -> tuple[str, str, str]:
        owned = f"{self._p}files:{_tag(record.owner)}"
        return f"{self._p}file:{record.id}", owned, f"{owned}:{record.purpose}"

    async def add_file(self, new: NewFile) -> None:
        record, source = new
        target = self._files.file(record.id)
        await anyio.to_thread.run_sync(os.replace, source, target)
        file_key, owned, by_purpose = self._file_keys(record)
        keys = (file_key, owned, by_purpose, self._p + "file-expiry", self._p + "seq")
        expiry = "" if record.expires_at is None else str(record.expires_at)
        added = await self._run(_ADD_FILE, keys, (record.dumps(), record.id, expiry))
        if not added:
            await self._files.unlink_all([record.id])
            raise StoreUnavailableError("The batch store already holds a file with this id")

    async def _file(self, file_id: str) -> FileRecord | None:
        if not _valid(file_id):
            return None
        data = await self._execute("GET", f"{self._p}file:{file_id}")
        return None if data is None else FileRecord.loads(data.decode())

    async def get_file(self, file_id: str, *, owner: str | None) -> FileRecord | None:
        record = await self._file(file_id)
        return record if record is not None and record.owner == owner else None

    async def list_files(
        self,
        *,
        owner: str | None,
        purpose: str | None,
        after: str | None,
        limit: int,
        newest_first: bool,
    ) -> list[FileRecord]:
        if purpose is not None and purpose not in _PURPOSES:
            return []
        key = f"{self._p}files:{_tag(owner)}" + (f":{purpose}" if purpose else "")
        ids = await self._page(key, after, limit, newest_first=newest_first)
        if not ids:
            return []
        found = await self._execute("MGET", *(f"{self._p}file:{i}" for i in ids))
        return [FileRecord.loads(data.decode()) for data in found if data is not None]

    async def _page(
        self, key: str, after: str | None, limit: int, *, newest_first: bool
    ) -> list[str]:
        """Up to ``limit`` members of the sorted set ``key`` in order (newest first, or
        oldest), those past ``after`` (none when ``after`` is not in it)."""
        if after is None:
            command = "ZREVRANGE" if newest_first else "ZRANGE"
            ids = await self._execute(command, key, 0, limit - 1)
        else:
            if not _valid(after):
                return []
            score = await self._execute("ZSCORE", key, after)
            if score is None:
                return []
            bound = f"({score.decode()}"
            if newest_first:
                ids = await self._execute("ZREVRANGEBYSCORE", key, bound, "-inf", "LIMIT", 0, limit)
            else:
                ids = await self._execute("ZRANGEBYSCORE", key, bound, "+inf", "LIMIT", 0, limit)
        return [i.decode() for i in ids]

    async def delete_file(self, file_id: str, *, owner: str | None) -> bool:
        record = await self.get_file(file_id, owner=owner)
        if record is None:
            return False
        keys = (*self._file_keys(record), self._p + "file-expiry")
        deleted = bool(await self._run(_DELETE_FILE, keys, (record.id,)))
        if deleted:
            await self._files.unlink_all([record.id])
        return deleted

    def read_file(self, file_id: str) -> AsyncIterator[bytes]:
        return self._files.read(file_id)

    async def file_in_use(self, file_id: str) -> bool:
        if not _valid(file_id):
            return False
        return bool(await self._execute("SCARD", f"{self._p}reads:{file_id}"))

    async def expire_files(self, now: int) -> int:
        expiry = self._p + "file-expiry"
        ids = [
            i.decode()
            for i in await self._execute("ZRANGEBYSCORE", expiry, "-inf", now, "LIMIT", 0, _IDS)
        ]
        if not ids:
            return 0
        found = await self._execute("MGET", *(f"{self._p}file:{i}" for i in ids))
        gone: list[str] = []
        for file_id, data in zip(ids, found, strict=True):
            if data is None:
                await self._execute("ZREM", expiry, file_id)
                continue
            record = FileRecord.loads(data.decode())
            if await self._run(_DELETE_FILE, (*self._file_keys(record), expiry), (file_id,)):
                gone.append(file_id)
        await self._files.unlink_all(gone)
        return len(gone)

    # -- batches ------------------------------------------------------------------------

    def _batch_key(self, batch_id: str) -> str:
        return f"{self._p}b:{batch_id}"

    async def add_batch(self, batch: BatchRecord) -> None:
        tag = _tag(batch.owner)
        keys = (
            self._batch_key(batch.id),
            f"{self._p}batches:{tag}",
            f"{self._p}open",
            f"{self._p}open:{tag}",
            f"{self._p}reads:{batch.input_file_id}",
            f"{self._p}seq",
        )
        args = (
            batch.id,
            batch.dumps(),
            batch.status.value,
            _flag(batch.status.finished),
            tag,
            batch.input_file_id,
        )
        if not await self._run(_ADD_BATCH, keys, args):
            raise StoreUnavailableError("The batch store already holds a batch with this id")

    def _move_call(
        self, batch: BatchRecord, was: BatchStatus, files: list[NewFile], *, counts: bool
    ) -> tuple[list[Arg], list[Arg]]:
        tag = _tag(batch.owner)
        keys: list[Arg] = [
            self._batch_key(batch.id),
            f"{self._p}open",
            f"{self._p}open:{tag}",
            f"{self._p}reads:{batch.input_file_id}",
            f"{self._p}lines:{batch.id}",
            f"{self._p}lease:{batch.id}",
            f"{self._p}seq",
            f"{self._p}file-expiry",
        ]
        args: list[Arg] = [
            batch.id,
            was.value,
            batch.status.value,
            batch.dumps(),
            _flag(batch.status.finished),
            batch.completed if counts else "",
            batch.failed if counts else "",
            len(files),
        ]
        for record, _ in files:
            keys += self._file_keys(record)
            args += (
                record.id,
                record.dumps(),
                "" if record.expires_at is None else record.expires_at,
            )
        return keys, args

    async def save_batch(self, batch: BatchRecord, *, was: BatchStatus) -> bool:
        keys, args = self._move_call(batch, was, [], counts=False)
        return bool(await self._run(_MOVE, keys, args))

    async def _load(self, batch_id: str, owner: str | None, *, check: bool) -> BatchRecord | None:
        if not _valid(batch_id):
            return None
        reply = await self._execute("HMGET", self._batch_key(batch_id), "data", "owner", *_COUNTS)
        return _batch(reply, _tag(owner) if check else None)

    async def get_batch(self, batch_id: str, *, owner: str | None) -> BatchRecord | None:
        return await self._load(batch_id, owner, check=True)

    async def load_batch(self, batch_id: str) -> BatchRecord | None:
        return await self._load(batch_id, None, check=False)

    async def _batches(self, ids: list[str]) -> list[BatchRecord]:
        found: list[BatchRecord] = []
        for start in range(0, len(ids), _PAGE):
            part = ids[start : start + _PAGE]

            async def fetch(client: RedisClient, part: list[str] = part) -> list[Any]:
                replies = [
                    client.execute("HMGET", self._batch_key(i), "data", "owner", *_COUNTS)
                    for i in part
                ]
                return list(await asyncio.gather(*replies))

            for reply in await self._do(fetch):
                batch = _batch(reply, None)
                if batch is not None:
                    found.append(batch)
        return found

    async def list_batches(
        self, *, owner: str | None, after: str | None, limit: int
    ) -> list[BatchRecord]:
        key = f"{self._p}batches:{_tag(owner)}"
        return await self._batches(await self._page(key, after, limit, newest_first=True))

    async def unfinished(self) -> list[BatchRecord]:
        ids = await self._execute("ZRANGE", f"{self._p}open", 0, -1)
        return await self._batches([i.decode() for i in ids])

    async def active(self, owner: str | None) -> int:
        return int(await self._execute("ZCARD", f"{self._p}open:{_tag(owner)}"))

    # -- leases -------------------------------------------------------------------------

    async def claim(self, batch_id: str, holder: str, *, now: float, ttl: float) -> bool:
        keys = (self._batch_key(batch_id), f"{self._p}lease:{batch_id}")
        return bool(await self._run(_CLAIM, keys, (holder, now, now + ttl)))

    async def release(self, batch_id: str, holder: str) -> None:
        await self._run(_RELEASE, (f"{self._p}lease:{batch_id}",), (holder,))

    async def unleased(self, now: float, *, limit: int) -> list[str]:
        args = (now, limit, f"{self._p}lease:", _SCAN)
        return [i.decode() for i in await self._run(_UNLEASED, (f"{self._p}open",), args)]

    # -- lines --------------------------------------------------------------------------

    async def recorded(self, batch_id: str) -> set[int]:
        return {int(line) for line in await self._execute("HKEYS", f"{self._p}lines:{batch_id}")}

    async def record(self, batch_id: str, result: LineResult) -> bool:
        keys = (self._batch_key(batch_id), f"{self._p}lines:{batch_id}")
        value = _flag(result.ok).encode() + result.text.encode()
        args = (
            result.line,
            value,
            _flag(result.ok),
            result.input_tokens,
            result.output_tokens,
            result.cached_tokens,
        )
        return bool(await self._run(_RECORD, keys, args))

    async def results(self, batch_id: str) -> AsyncIterator[LineResult]:
        key = f"{self._p}lines:{batch_id}"
        lines = sorted(int(line) for line in await self._execute("HKEYS", key))
        for start in range(0, len(lines), _PAGE):
            part = lines[start : start + _PAGE]
            values = await self._execute("HMGET", key, *part)
            for line, value in zip(part, values, strict=True):
                if value is not None:
                    yield LineResult(line, value[1:].decode(), value[:1] == b"1")

    async def finish(self, batch: BatchRecord, files: list[NewFile], *, was: BatchStatus) -> bool:
        kept = await self._execute("HGET", self._batch_key(batch.id), "status")
        if kept is None or kept.decode() != was.value:
            return False
        keys, args = self._move_call(batch, was, files, counts=True)

        def move() -> None:
            for record, source in files:
                os.replace(source, self._files.file(record.id))

        await anyio.to_thread.run_sync(move)
        # Should the call fail, the records may exist after all: the bytes stay (tidy
        # removes those no record vouches for).
        if await self._run(_MOVE, keys, args):
            return True
        await self._files.unlink_all([record.id for record, _ in files])
        return False


def _batch(reply: list[Any], owner_tag: str | None) -> BatchRecord | None:
    """A batch from HMGET data, owner, counts...; None when missing (or not ``owner_tag``'s)."""
    data, owner, *counts = reply
    if data is None or (owner_tag is not None and owner.decode() != owner_tag):
        return None
    completed, failed, input_tokens, output_tokens, cached_tokens = (int(c) for c in counts)
    return BatchRecord.loads(
        data.decode(), (completed, failed, input_tokens, output_tokens, cached_tokens)
    )
