"""``/v1/files``: upload a batch input file (multipart, JSONL, checked line by line as it
arrives), list, retrieve, download and delete files. Each file is its uploader's (``owner_of``):
anyone else gets a 404."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import anyio
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.types import Message, Receive

from ..access import owner_of
from ..batches import FileRecord
from ..batches.lines import LineChecker, split_lines
from ..batches.objects import file_id
from ..exceptions import (
    ConflictError,
    InvalidRequestError,
    LeapError,
    NotFoundError,
    RequestTooLargeError,
)
from .routes import error_response

if TYPE_CHECKING:
    from ..batches import BatchRunner
    from ..config import BatchesConfig
    from ..gateway import GatewayCore

__all__ = ["FilesAPI", "expiry_seconds", "list_page", "page_limit"]

# Room for the multipart framing and the other fields around the file's bytes.
_FORM_OVERHEAD = 64 * 1024
_CHUNK = 64 * 1024
MAX_FILE_LIST = 10_000
# OpenAI's bounds on expires_after.seconds: an hour to 30 days.
MIN_EXPIRY = 3600
MAX_EXPIRY = 2_592_000


def expiry_seconds(value: object, param: str) -> int:
    """``expires_after.seconds``: an integer from an hour to 30 days."""
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidRequestError(f"{param} must be an integer", param=param)
    if not MIN_EXPIRY <= value <= MAX_EXPIRY:
        raise InvalidRequestError(
            f"{param} must be between {MIN_EXPIRY} and {MAX_EXPIRY}", param=param
        )
    return value


def page_limit(text: str | None, *, default: int, most: int) -> int:
    """A list's ``limit`` query parameter, from 1 to ``most``."""
    if text is None:
        return default
    if not text.isdigit() or not 1 <= int(text) <= most:
        raise InvalidRequestError(f"limit must be an integer from 1 to {most}", param="limit")
    return int(text)


def _missing(file: str) -> NotFoundError:
    shown = file if len(file) <= 64 and file.isprintable() else "..."
    return NotFoundError(f"No such File object: {shown}", param="id", code="file_not_found")


class _Capped:
    """The request's receive, refusing a body past ``limit`` bytes as it arrives."""

    def __init__(self, receive: Receive, limit: int) -> None:
        self._receive = receive
        self._limit = limit
        self._size = 0

    async def __call__(self) -> Message:
        message = await self._receive()
        self._size += len(message.get("body", b""))
        if self._size > self._limit:
            raise RequestTooLargeError(f"The file is larger than the {self._limit} byte limit")
        return message


class FilesAPI:
    """The Files API of one gateway's batches."""

    def __init__(self, gateway: GatewayCore, runner: BatchRunner, config: BatchesConfig) -> None:
        self._gateway = gateway
        self._runner = runner
        self._store = runner.store
        self._config = config

    async def _owner(self, request: Request) -> str | None:
        """Whose the request is; raises the refusal when the caller may not call."""
        refused = await self._gateway.refusal(request.scope)
        if refused is not None:
            raise refused
        await self._runner.start()
        return owner_of(request.scope)

    async def _answer(self, request: Request, serve: Any) -> Response:
        try:
            owner = await self._owner(request)
            response: Response = await serve(request, owner)
        except LeapError as error:
            return error_response(error)
        return response

    async def files(self, request: Request) -> Response:
        """``POST`` (upload) or ``GET`` (list) ``/v1/files``."""
        if request.method == "POST":
            return await self._answer(request, self._upload)
        return await self._answer(request, self._list)

    async def file(self, request: Request) -> Response:
        """``GET`` or ``DELETE /v1/files/{file_id}``."""
        if request.method == "DELETE":
            return await self._answer(request, self._delete)
        return await self._answer(request, self._retrieve)

    async def content(self, request: Request) -> Response:
        """``GET /v1/files/{file_id}/content``."""
        return await self._answer(request, self._content)

    async def _upload(self, request: Request, owner: str | None) -> Response:
        limit = self._config.max_file_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit + _FORM_OVERHEAD:
            raise RequestTooLargeError(f"The file is larger than the {limit} byte limit")
        capped = Request(request.scope, _Capped(request.receive, limit + _FORM_OVERHEAD))
        try:
            form = await capped.form(max_files=1, max_fields=8, max_part_size=1024)
        except (MultiPartException, HTTPException) as exc:
            message = getattr(exc, "message", None) or getattr(exc, "detail", "")
            raise InvalidRequestError(f"The upload is not valid multipart: {message}") from None
        try:
            purpose = form.get("purpose")
            if purpose != "batch":
                raise InvalidRequestError(
                    "purpose must be 'batch': the gateway keeps files for batches only",
                    param="purpose",
                )
            upload = form.get("file")
            if not isinstance(upload, UploadFile):
                raise InvalidRequestError("file: send the file as a multipart file", param="file")
            ttl = self._config.file_ttl
            if form.get("expires_after[anchor]") is not None or "expires_after[seconds]" in form:
                if form.get("expires_after[anchor]") != "created_at":
                    raise InvalidRequestError(
                        "expires_after.anchor must be 'created_at'", param="expires_after.anchor"
                    )
                ttl = expiry_seconds(form.get("expires_after[seconds]"), "expires_after.seconds")
            return await self._keep(upload, owner, int(ttl))
        finally:
            await form.close()

    async def _keep(self, upload: UploadFile, owner: str | None, ttl: int) -> Response:
        config = self._config
        checker = LineChecker(config.max_lines)
        path = self._store.scratch()
        size = 0

        async def chunks() -> AsyncIterator[bytes]:
            nonlocal size
            while chunk := await upload.read(_CHUNK):
                size += len(chunk)
                if size > config.max_file_bytes:
                    raise RequestTooLargeError(
                        f"The file is larger than the {config.max_file_bytes} byte limit"
                    )
                await out.write(chunk)
                yield chunk

        try:
            async with await anyio.open_file(path, "wb") as out:
                lines = split_lines(chunks(), max_line_bytes=config.max_line_bytes)
                async for number, raw in lines:
                    checker.check(raw, number)
            if checker.lines == 0:
                raise InvalidRequestError("The file holds no requests", param="file")
            now = self._runner.now()
            filename = (upload.filename or "input.jsonl")[:255]
            record = FileRecord(
                file_id(), owner, filename, "batch", size, now, now + ttl, checker.lines
            )
            await self._store.add_file((record, path))
        finally:
            await anyio.to_thread.run_sync(lambda: path.unlink(missing_ok=True))
        return JSONResponse(record.to_json())

    async def _list(self, request: Request, owner: str | None) -> Response:
        query = request.query_params
        limit = page_limit(query.get("limit"), default=MAX_FILE_LIST, most=MAX_FILE_LIST)
        order = query.get("order", "desc")
        if order not in ("asc", "desc"):
            raise InvalidRequestError("order must be asc or desc", param="order")
        records = await self._store.list_files(
            owner=owner,
            purpose=query.get("purpose"),
            after=query.get("after"),
            limit=limit + 1,
            newest_first=order == "desc",
        )
        return JSONResponse(list_page([r.to_json() for r in records], limit))

    async def _retrieve(self, request: Request, owner: str | None) -> Response:
        return JSONResponse((await self._find(request, owner)).to_json())

    async def _find(self, request: Request, owner: str | None) -> FileRecord:
        wanted = request.path_params["file_id"]
        record = await self._store.get_file(wanted, owner=owner)
        if record is None or (
            record.expires_at is not None and record.expires_at <= self._runner.now()
        ):
            raise _missing(wanted)
        return record

    async def _content(self, request: Request, owner: str | None) -> Response:
        record = await self._find(request, owner)
        return StreamingResponse(
            self._store.read_file(record.id),
            media_type="application/jsonl" if record.lines else "application/octet-stream",
            headers={"content-length": str(record.bytes)},
        )

    async def _delete(self, request: Request, owner: str | None) -> Response:
        record = await self._find(request, owner)
        if await self._store.file_in_use(record.id):
            raise ConflictError(
                "The file is the input of a batch that has not finished; cancel it first",
                param="id",
                code="file_in_use",
            )
        if not await self._store.delete_file(record.id, owner=owner):
            raise _missing(record.id)
        return JSONResponse({"id": record.id, "object": "file", "deleted": True})


def list_page(data: list[dict[str, Any]], limit: int) -> dict[str, Any]:
    """A cursor page of ``data`` (fetched one past ``limit``, to know whether more follow)."""
    shown = data[:limit]
    return {
        "object": "list",
        "data": shown,
        "first_id": shown[0]["id"] if shown else None,
        "last_id": shown[-1]["id"] if shown else None,
        "has_more": len(data) > limit,
    }
