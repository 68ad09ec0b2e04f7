"""The gateway mounted inside a Starlette app; it starts on first use.

uvicorn examples.starlette_mount:app --port 8000      # OpenAI base URL: /llm/v1
"""

from __future__ import annotations

from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route

from leapasgi import Gateway

gateway = Gateway.from_config(Path(__file__).with_name("gateway.toml"))


async def home(request: Request) -> JSONResponse:
    """The host app's own route."""
    return JSONResponse({"app": "my service", "llm": "/llm/v1"})


app = Starlette(routes=[Route("/", home), Mount("/llm", app=gateway.app)])
