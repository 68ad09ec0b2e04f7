"""The gateway over HTTP: the ``Gateway`` with its ASGI app, and the ASGI middleware."""

from .app import build_app
from .gateway import Gateway
from .middleware import LeapMiddleware
from .routes import error_response

__all__ = ["Gateway", "LeapMiddleware", "build_app", "error_response"]
