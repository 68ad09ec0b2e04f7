"""What the Files and Batch APIs share: whose a request is (the gateway's refusal first, the
batch runner started), errors answered as OpenAI's, and the list pages, ``limit`` and
``expires_after`` values both take."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import Response

from ..access import owner_of
from ..exceptions import InvalidRequestError, LeapError
from .routes import error_response

if TYPE_CHECKING:
    from ..batches import BatchRunner
    from ..config import BatchesConfig
    from ..gateway import GatewayCore

__all__ = ["BatchEndpoint", "expiry_seconds", "list_page", "page_limit", "shown_id"]

# OpenAI's bounds on expires_after.seconds: an hour to 30 days.
MIN_EXPIRY = 3600
MAX_EXPIRY = 2_592_000

Serve = Callable[[Request, str | None], Awaitable[Response]]


class BatchEndpoint:
    """The base of the Files and Batch APIs of one gateway: each request is served for its
    owner (``owner_of``), and a LeapError is answered as an error response."""

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

    async def _answer(self, request: Request, serve: Serve) -> Response:
        try:
            owner = await self._owner(request)
            return await serve(request, owner)
        except LeapError as error:
            return error_response(error)


def shown_id(wanted: str) -> str:
    """An id the caller sent, as an error message may quote it."""
    return wanted if len(wanted) <= 64 and wanted.isprintable() else "..."


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
