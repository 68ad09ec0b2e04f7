"""The gateway as ASGI middleware in front of any ASGI app: /v1/... is served by the gateway,
everything else goes to the app untouched.

    uvicorn examples.middleware:app --port 8000          # OpenAI base URL: /v1
"""

from __future__ import annotations

from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from leapasgi import Gateway, LeapMiddleware

gateway = Gateway.from_config(Path(__file__).with_name("gateway.toml"))


async def home(request: Request) -> PlainTextResponse:
    """The wrapped app's own route."""
    return PlainTextResponse("the wrapped app")


app = LeapMiddleware(Starlette(routes=[Route("/", home)]), gateway, prefix="/v1")
