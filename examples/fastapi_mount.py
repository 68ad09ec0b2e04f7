"""The gateway mounted inside a FastAPI app, started and stopped by the app's lifespan.

    uvicorn examples.fastapi_mount:app --port 8000
    curl localhost:8000/llm/v1/chat/completions \\
        -d '{"model": "default", "messages": [{"role": "user", "content": "hi"}]}'
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from fastapi import FastAPI

from leapasgi import Gateway

gateway = Gateway.from_config(Path(__file__).with_name("gateway.toml"))


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    # Mounted apps get no lifespan events of their own: the host runs the gateway's.
    async with gateway:
        yield


app = FastAPI(lifespan=lifespan)
app.mount("/llm", gateway.app)  # OpenAI base URL: http://host/llm/v1


@app.get("/")
async def home() -> dict[str, str]:
    """The host app's own routes keep working."""
    return {"app": "my service", "llm": "/llm/v1"}
