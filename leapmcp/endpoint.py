"""The MCP server over Streamable HTTP, as one ASGI endpoint of a gateway.

    McpEndpoint: bearer key -> POST only -> Host/Origin (DNS rebinding) -> the SDK's session
                 manager, stateless, running the tools of ``build_server``

Starlette runs no lifespan for a mounted app, so the endpoint runs its session manager from
``start()`` to ``aclose()``, which the gateway calls from its own lifetime (``async with
gateway``), or from the first request when nothing started it. The session manager runs in a
task of its own, since its task group must outlive whichever request or lifespan started it.
A session manager runs once; each start builds a fresh MCP server, so a gateway can restart.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterable

from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.server.transport_security import TransportSecuritySettings
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from leapasgi import GatewayCore, InvalidRequestError
from leapasgi.asgi import error_response

from .tools import build_server

__all__ = [
    "LOOPBACK_HOSTS",
    "LOOPBACK_ORIGINS",
    "MCP_PATH",
    "McpEndpoint",
    "build_http_app",
    "transport_security",
]

MCP_PATH = "/mcp"
# Always accepted: a DNS-rebinding page reaches a local server under its own, foreign name.
LOOPBACK_HOSTS = ("127.0.0.1", "127.0.0.1:*", "localhost", "localhost:*", "[::1]", "[::1]:*")
LOOPBACK_ORIGINS = tuple(
    f"{scheme}://{host}" for scheme in ("http", "https") for host in LOOPBACK_HOSTS
)


def transport_security(
    *,
    allowed_hosts: Iterable[str] | None = None,
    allowed_origins: Iterable[str] | None = None,
) -> TransportSecuritySettings:
    """DNS-rebinding protection that accepts loopback names plus the ones given.

    A host entry is ``name``, ``name:port`` or ``name:*`` (any port); an origin is
    ``https://name[:port]`` or ``https://name:*``. A request without an Origin header passes.
    """
    return TransportSecuritySettings(
        enable_dns_rebinding_protection=True,
        allowed_hosts=[*LOOPBACK_HOSTS, *(allowed_hosts or ())],
        allowed_origins=[*LOOPBACK_ORIGINS, *(allowed_origins or ())],
    )


class McpEndpoint:
    """The gateway's MCP server as an ASGI app: mount it at ``/mcp`` (a Starlette ``Route``).

    Requests pass the gateway's access check first (one of its API keys, or its admin key,
    when ``server.api_keys`` is set); a refusal is a 401 with an OpenAI error body and
    ``WWW-Authenticate``, before anything else is read. The server is stateless (no
    ``Mcp-Session-Id``): it takes POST requests only.
    """

    def __init__(
        self,
        gateway: GatewayCore,
        *,
        admin_tools: bool = False,
        security: TransportSecuritySettings | None = None,
    ) -> None:
        self._gateway = gateway
        self._admin_tools = admin_tools
        self._security = security or transport_security()
        self._running: _Running | None = None
        self._lock: asyncio.Lock | None = None

    @classmethod
    def from_config(cls, gateway: GatewayCore) -> McpEndpoint:
        """The endpoint the gateway's ``[server]`` settings describe (``mcp_*``)."""
        server = gateway.config.server
        security = transport_security(
            allowed_hosts=[*server.allowed_hosts, *server.mcp_allowed_hosts],
            allowed_origins=[*server.allowed_origins, *server.mcp_allowed_origins],
        )
        return cls(gateway, admin_tools=server.mcp_admin_tools, security=security)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        refused = await self._gateway.refusal(scope, resource="/mcp")
        if refused is not None:
            await error_response(refused)(scope, receive, send)
            return
        if scope["method"] != "POST":
            # Without sessions there is no event stream to GET and no session to DELETE; the
            # spec's answer is 405 (the SDK would hold a GET open, silent, until it hangs up).
            await _post_only()(scope, receive, send)
            return
        running = self._running or await self._start()
        await running.handle(scope, receive, send)

    async def start(self) -> None:
        """Start the session manager now (the gateway calls this from its lifetime)."""
        await self._start()

    async def aclose(self) -> None:
        """Stop the session manager: open sessions and streams end."""
        running, self._running = self._running, None
        if running is not None:
            await running.stop()

    async def _start(self) -> _Running:
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if self._running is None:
                server = build_server(self._gateway, admin_tools=self._admin_tools)
                # Creates the session manager; the Starlette app it returns is not used.
                # Stateless: no tool needs a session, and without one any worker process
                # (``serve --workers N``) can answer any request, and no idle session or
                # event stream outlives its request.
                server.streamable_http_app(transport_security=self._security, stateless_http=True)
                self._running = await _Running.begin(server.session_manager)
            return self._running


class _Running:
    """One session manager running in its own task until told to stop."""

    def __init__(self, handle: ASGIApp, task: asyncio.Task[None], stop: asyncio.Event) -> None:
        self.handle = handle
        self._task = task
        self._stop = stop

    @classmethod
    async def begin(cls, manager: StreamableHTTPSessionManager) -> _Running:
        ready = asyncio.Event()
        stop = asyncio.Event()
        task = asyncio.create_task(_serve(manager, ready, stop), name="leapmcp-sessions")
        waiting = asyncio.create_task(ready.wait())
        try:
            await asyncio.wait({task, waiting}, return_when=asyncio.FIRST_COMPLETED)
        except BaseException:
            task.cancel()
            raise
        finally:
            waiting.cancel()
        if not ready.is_set():
            await task  # raises why it ended
            raise RuntimeError("The MCP session manager stopped before it started")
        return cls(manager.handle_request, task, stop)

    async def stop(self) -> None:
        self._stop.set()
        await self._task


async def _serve(
    manager: StreamableHTTPSessionManager, ready: asyncio.Event, stop: asyncio.Event
) -> None:
    async with manager.run():
        ready.set()
        await stop.wait()


def _post_only() -> JSONResponse:
    error = InvalidRequestError(
        "The MCP endpoint takes POST requests only", code="method_not_allowed"
    )
    return JSONResponse(error.to_body(), status_code=405, headers={"allow": "POST"})


def build_http_app(
    gateway: GatewayCore,
    *,
    admin_tools: bool = False,
    security: TransportSecuritySettings | None = None,
) -> Starlette:
    """A Starlette app serving only ``/mcp``; its lifespan runs the gateway and the endpoint."""
    endpoint = McpEndpoint(gateway, admin_tools=admin_tools, security=security)
    gateway.add_service(endpoint)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with gateway:
            yield

    return Starlette(routes=[Route(MCP_PATH, endpoint)], lifespan=lifespan)
