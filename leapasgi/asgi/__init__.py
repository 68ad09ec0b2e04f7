"""The gateway over HTTP: the Starlette app and the ASGI middleware."""

from .app import build_app
from .middleware import LeapMiddleware

__all__ = ["LeapMiddleware", "build_app"]
