"""``Gateway``: the gateway's core with its ASGI app, the object most users hold."""

from __future__ import annotations

from ..gateway import GatewayCore
from .app import GatewayApp, build_app

__all__ = ["Gateway"]


class Gateway(GatewayCore):
    """One gateway: ``.app`` is its ASGI app (mount it anywhere, or serve it on its own);
    ``async with gateway`` runs its lifetime. Everything else is ``GatewayCore``'s."""

    _app: GatewayApp | None = None

    @property
    def app(self) -> GatewayApp:
        """The ASGI app, built once."""
        if self._app is None:
            self._app = build_app(self)
        return self._app
