"""A real fake of OpenAI's Files and Batches API on 127.0.0.1.

It keeps uploaded files, creates batches and moves them along only when the test says so:
``start`` (validating -> in_progress), ``run`` (answers some or all requests), ``finalize``,
``complete`` (writes the output and error files), ``expire``, ``fail``, and ``settle_cancel``
after a client's cancel. Its state is plain data the test may tamper with (``files[id].data``,
``batches[id]``), and ``fail_next`` / ``hang_next`` / ``stall`` script hostile answers. It
also answers ``/v1/chat/completions`` one request at a time (``chats``: the bodies), as the
same service does interactively.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

__all__ = ["Answer", "FakeBatchUpstream", "Scripted", "StoredFile", "completion_answer"]

# How one request of a batch is answered: (status_code, body).
Answer = tuple[int, dict[str, Any]]

_CREATED = 1_733_000_000


def completion_answer(custom_id: str, body: dict[str, Any]) -> Answer:
    """A chat completion naming the request it answers."""
    return 200, {
        "id": f"chatcmpl-{custom_id}",
        "object": "chat.completion",
        "created": _CREATED,
        "model": body.get("model", "m1"),
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": f"answer to {custom_id}"},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 10, "completion_tokens": 2, "total_tokens": 12},
    }


@dataclass
class StoredFile:
    id: str
    purpose: str
    filename: str
    data: bytes


@dataclass
class Scripted:
    """An answer for the next request, whatever it asks: a status and a JSON or text body."""

    status: int
    json_body: Any = None
    text: str | None = None
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class _Run:
    lines: list[dict[str, Any]]
    answers: dict[str, Answer] = field(default_factory=dict)


class FakeBatchUpstream:
    """The fake; ``async with FakeBatchUpstream(key=...) as fake`` serves on a free port."""

    def __init__(
        self,
        *,
        key: str | None = None,
        answer: Callable[[str, dict[str, Any]], Answer] = completion_answer,
        chunk_size: int = 64 * 1024,
    ) -> None:
        self.key = key
        self.answer = answer
        self.chunk_size = chunk_size
        self.files: dict[str, StoredFile] = {}
        self.batches: dict[str, dict[str, Any]] = {}
        self.seen: list[tuple[str, str, dict[str, str]]] = []
        self.chats: list[dict[str, Any]] = []
        self.script: deque[Scripted] = deque()
        self.hang: int = 0
        self.stalls: dict[str, int] = {}
        self._runs: dict[str, _Run] = {}
        self._ids = itertools.count(1)
        self._released = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def __aenter__(self) -> FakeBatchUpstream:
        app = web.Application(client_max_size=256 * 1024 * 1024, middlewares=[self._gate])
        app.router.add_post("/v1/files", self._upload)
        app.router.add_get("/v1/files/{id}/content", self._content)
        app.router.add_delete("/v1/files/{id}", self._delete)
        app.router.add_post("/v1/batches", self._create)
        app.router.add_get("/v1/batches", self._list)
        app.router.add_get("/v1/batches/{id}", self._retrieve)
        app.router.add_post("/v1/batches/{id}/cancel", self._cancel)
        app.router.add_post("/v1/chat/completions", self._chat)
        self._runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._released.set()
        assert self._runner is not None
        await self._runner.cleanup()

    # Scripting.

    def fail_next(self, status: int, json_body: Any = None, *, text: str | None = None) -> None:
        """The next request is answered with ``status`` and this body."""
        self.script.append(Scripted(status, json_body, text))

    def hang_next(self) -> None:
        """The next request is never answered."""
        self.hang += 1

    def stall(self, file_id: str, after: int) -> None:
        """Downloads of ``file_id`` send ``after`` bytes, then go silent."""
        self.stalls[file_id] = after

    def store(self, data: bytes, *, purpose: str = "batch_output") -> str:
        """Keep a file as if the upstream wrote it; its id."""
        file_id = f"file-{next(self._ids)}"
        self.files[file_id] = StoredFile(file_id, purpose, "out.jsonl", data)
        return file_id

    # Moving a batch along.

    def start(self, batch_id: str) -> None:
        self._move(batch_id, "in_progress")

    def run(self, batch_id: str, count: int | None = None) -> None:
        """Answer the first ``count`` requests not yet answered (all when None)."""
        job = self._runs[batch_id]
        pending = [line for line in job.lines if line["custom_id"] not in job.answers]
        for line in pending[:count]:
            job.answers[line["custom_id"]] = self.answer(line["custom_id"], line["body"])
        self._count(batch_id)

    def finalize(self, batch_id: str) -> None:
        self._move(batch_id, "finalizing")

    def complete(self, batch_id: str) -> None:
        """Answer what is left, write the files, and mark the batch completed."""
        self.run(batch_id)
        self._write(batch_id, unanswered=None)
        self._move(batch_id, "completed")

    def expire(self, batch_id: str) -> None:
        """The window ran out: what was not answered gets a ``batch_expired`` error line."""
        self._write(batch_id, unanswered=("batch_expired", "The batch expired first."))
        self._move(batch_id, "expired")

    def settle_cancel(self, batch_id: str) -> None:
        """A cancelling batch stops: the rest get ``batch_cancelled`` error lines."""
        assert self.batches[batch_id]["status"] == "cancelling"
        self._write(batch_id, unanswered=("batch_cancelled", "The batch was cancelled."))
        self._move(batch_id, "cancelled")

    def creates(self) -> int:
        """Batches created through the API (POST /v1/batches answered or not)."""
        return sum(1 for method, path, _ in self.seen if (method, path) == ("POST", "/v1/batches"))

    def fail(self, batch_id: str, *issues: dict[str, Any]) -> None:
        self.batches[batch_id]["errors"] = {"object": "list", "data": list(issues)}
        self._move(batch_id, "failed")

    def _move(self, batch_id: str, status: str) -> None:
        batch = self.batches[batch_id]
        batch["status"] = status
        batch[f"{status}_at"] = _CREATED + 60

    def _count(self, batch_id: str) -> None:
        job = self._runs[batch_id]
        failed = sum(1 for status, _ in job.answers.values() if status >= 400)
        self.batches[batch_id]["request_counts"] = {
            "total": len(job.lines),
            "completed": len(job.answers) - failed,
            "failed": failed,
        }

    def _write(self, batch_id: str, *, unanswered: tuple[str, str] | None) -> None:
        job = self._runs[batch_id]
        output: list[bytes] = []
        errors: list[bytes] = []
        for number, line in enumerate(job.lines, 1):
            custom_id = line["custom_id"]
            record: dict[str, Any] = {"id": f"batch_req_{number}", "custom_id": custom_id}
            if custom_id in job.answers:
                status, body = job.answers[custom_id]
                record["response"] = {
                    "status_code": status,
                    "request_id": f"req_{number}",
                    "body": body,
                }
                record["error"] = None
                (output if status < 400 else errors).append(json.dumps(record).encode())
            elif unanswered is not None:
                code, message = unanswered
                record["response"] = None
                record["error"] = {"code": code, "message": message}
                errors.append(json.dumps(record).encode())
        batch = self.batches[batch_id]
        if output:
            batch["output_file_id"] = self.store(b"\n".join(output) + b"\n")
        if errors:
            batch["error_file_id"] = self.store(b"\n".join(errors) + b"\n")
        failed = sum(1 for status, _ in job.answers.values() if status >= 400)
        batch["request_counts"] = {
            "total": len(job.lines),
            "completed": len(job.answers) - failed,
            "failed": len(job.lines) - (len(job.answers) - failed),
        }

    # The API.

    @web.middleware
    async def _gate(
        self, request: web.Request, handler: Callable[[web.Request], Any]
    ) -> web.StreamResponse:
        self.seen.append((request.method, request.path_qs, dict(request.headers)))
        if self.hang:
            self.hang -= 1
            await self._released.wait()
        if self.script:
            scripted = self.script.popleft()
            if scripted.text is not None:
                return web.Response(
                    status=scripted.status, text=scripted.text, headers=scripted.headers
                )
            return web.json_response(
                scripted.json_body, status=scripted.status, headers=scripted.headers
            )
        if self.key is not None and request.headers.get("Authorization") != f"Bearer {self.key}":
            return _error(401, "Incorrect API key provided.", "invalid_api_key")
        response: web.StreamResponse = await handler(request)
        return response

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.chats.append(body)
        _, answer = self.answer(f"chat-{len(self.chats)}", body)
        return web.json_response(answer)

    async def _upload(self, request: web.Request) -> web.StreamResponse:
        form = await request.post()
        upload = form.get("file")
        purpose = form.get("purpose")
        if not isinstance(upload, web.FileField) or not isinstance(purpose, str):
            return _error(400, "A file and a purpose are required.")
        data = upload.file.read()
        file_id = f"file-{next(self._ids)}"
        self.files[file_id] = StoredFile(file_id, purpose, upload.filename, data)
        return web.json_response(_file_object(self.files[file_id]))

    async def _content(self, request: web.Request) -> web.StreamResponse:
        stored = self.files.get(request.match_info["id"])
        if stored is None:
            return _error(404, "No such file.")
        response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        await response.prepare(request)
        data = stored.data
        stall = self.stalls.get(stored.id)
        if stall is not None:
            await response.write(data[:stall])
            await self._released.wait()
        for start in range(0, len(data), self.chunk_size):
            await response.write(data[start : start + self.chunk_size])
        await response.write_eof()
        return response

    async def _delete(self, request: web.Request) -> web.StreamResponse:
        stored = self.files.pop(request.match_info["id"], None)
        if stored is None:
            return _error(404, "No such file.")
        return web.json_response({"id": stored.id, "object": "file", "deleted": True})

    async def _create(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        stored = self.files.get(body.get("input_file_id", ""))
        if stored is None or stored.purpose != "batch":
            return _error(400, "The input file is not a batch file.", param="input_file_id")
        if body.get("completion_window") != "24h":
            return _error(400, "Only 24h.", param="completion_window")
        batch_id = f"batch_{next(self._ids)}"
        lines = [json.loads(line) for line in stored.data.splitlines() if line.strip()]
        self._runs[batch_id] = _Run(lines)
        self.batches[batch_id] = {
            "id": batch_id,
            "object": "batch",
            "endpoint": body["endpoint"],
            "errors": None,
            "input_file_id": stored.id,
            "completion_window": "24h",
            "status": "validating",
            "output_file_id": None,
            "error_file_id": None,
            "created_at": _CREATED,
            "expires_at": _CREATED + 86_400,
            "request_counts": {"total": 0, "completed": 0, "failed": 0},
            "metadata": body.get("metadata"),
        }
        if any(line.get("url") != body["endpoint"] for line in lines):
            self.fail(batch_id, {"code": "invalid_url", "message": "A line's url differs."})
        return web.json_response(self.batches[batch_id])

    async def _list(self, request: web.Request) -> web.StreamResponse:
        newest = list(reversed(self.batches.values()))
        after = request.query.get("after")
        if after is not None:
            ids = [batch["id"] for batch in newest]
            newest = newest[ids.index(after) + 1 :] if after in ids else []
        limit = int(request.query.get("limit", "20"))
        page = newest[:limit]
        return web.json_response(
            {
                "object": "list",
                "data": page,
                "first_id": page[0]["id"] if page else None,
                "last_id": page[-1]["id"] if page else None,
                "has_more": len(newest) > limit,
            }
        )

    async def _retrieve(self, request: web.Request) -> web.StreamResponse:
        batch = self.batches.get(request.match_info["id"])
        if batch is None:
            return _error(404, "No such batch.")
        return web.json_response(batch)

    async def _cancel(self, request: web.Request) -> web.StreamResponse:
        batch = self.batches.get(request.match_info["id"])
        if batch is None:
            return _error(404, "No such batch.")
        if batch["status"] not in ("validating", "in_progress", "finalizing"):
            return _error(409, f"A {batch['status']} batch cannot be cancelled.")
        self._move(batch["id"], "cancelling")
        return web.json_response(batch)


def _file_object(stored: StoredFile) -> dict[str, Any]:
    return {
        "id": stored.id,
        "object": "file",
        "bytes": len(stored.data),
        "created_at": _CREATED,
        "filename": stored.filename,
        "purpose": stored.purpose,
        "status": "processed",
    }


def _error(
    status: int, message: str, code: str | None = None, *, param: str | None = None
) -> web.Response:
    error = {"message": message, "type": "invalid_request_error", "param": param, "code": code}
    return web.json_response({"error": error}, status=status)
