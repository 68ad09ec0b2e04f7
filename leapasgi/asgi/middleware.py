"""``LeapMiddleware``: serve the gateway's routes in front of any ASGI app."""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.types import ASGIApp, Receive, Scope, Send

if TYPE_CHECKING:
    from .gateway import Gateway

__all__ = ["LeapMiddleware"]


class LeapMiddleware:
    """Requests (and WebSockets) under ``prefix`` go to the gateway; everything else, lifespan
    included, passes through to ``app`` untouched. ``prefix`` stands for the gateway's ``/v1``."""

    def __init__(self, app: ASGIApp, gateway: Gateway, *, prefix: str = "/v1") -> None:
        self.app = app
        self.gateway = gateway
        self.prefix = prefix.rstrip("/")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            path: str = scope["path"]
            # Under a root_path (``--root-path``, a mount), the path includes it (ASGI spec).
            root: str = scope.get("root_path", "")
            if root and path.startswith(root):
                path = path[len(root) :]
            prefix = self.prefix
            if path == prefix or path.startswith(prefix + "/"):
                inner = dict(scope)
                inner["path"] = root + "/v1" + path[len(prefix) :]
                await self.gateway.app(inner, receive, send)
                return
        await self.app(scope, receive, send)
