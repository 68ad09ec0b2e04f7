"""The gateway's Starlette app: routes, OpenAI-shaped errors everywhere, and its lifespan."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route, WebSocketRoute
from starlette.types import ASGIApp, Receive, Scope, Send

from .._logging import printable
from ..exceptions import InvalidRequestError, LeapError, NotFoundError
from ..tenants.identity import WELL_KNOWN
from .admin_tenants import tenant_routes
from .batches import batch_routes
from .chat import ChatEndpoint
from .dashboard import dashboard_routes
from .embeddings import EmbeddingsEndpoint
from .messages import CountTokensEndpoint, MessagesEndpoint
from .openapi import OPENAPI_PATH, OpenAPIEndpoint
from .responses import ResponseResource, ResponsesEndpoint
from .responses_ws import ResponsesSocket, deny_websocket
from .routes import Routes, anthropic_response, error_response
from .sites import CorsSend, SiteGuard, preflight_headers

if TYPE_CHECKING:
    from ..gateway import GatewayCore

__all__ = ["GatewayApp", "build_app"]

logger = logging.getLogger("leapasgi")


CHAT_PATH = "/v1/chat/completions"
MCP_PATH = "/mcp"


class GatewayApp:
    """The gateway's ASGI app: every request and WebSocket handshake passes the Host and
    Origin checks first; the model endpoints (chat completions, Responses, Messages,
    embeddings) then go straight to their endpoints (the hot paths skip Starlette's routing and
    middleware); every other route is a Starlette app."""

    def __init__(self, posts: dict[str, ASGIApp], routes: Starlette, sites: SiteGuard) -> None:
        self.posts = posts
        self.routes = routes
        self.sites = sites

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "websocket":
                # Browsers send any page's WebSockets with their Origin and no CORS check.
                refused, _ = self.sites.check(scope)
                if refused is not None:
                    await deny_websocket(scope, send, refused)
                    return
            await self.routes(scope, receive, send)
            return
        refused, cors_origin = self.sites.check(scope)
        if refused is not None:
            await error_response(refused)(scope, receive, send)
            return
        if cors_origin is not None:
            if scope["method"] == "OPTIONS" and any(
                name == b"access-control-request-method" for name, _ in scope["headers"]
            ):
                await _preflight(cors_origin, scope, send)
                return
            send = CorsSend(send, cors_origin)
        if scope["method"] == "POST":
            path: str = scope["path"]
            root: str = scope.get("root_path", "")
            if root and path.startswith(root):
                path = path[len(root) :]  # mounted: Starlette keeps the full path
            endpoint = self.posts.get(path)
            if endpoint is not None:
                await endpoint(scope, receive, send)
                return
        await self.routes(scope, receive, send)


async def _preflight(origin: bytes, scope: Scope, send: Send) -> None:
    headers = [(b"content-length", b"0"), *preflight_headers(origin, scope)]
    await send({"type": "http.response.start", "status": 204, "headers": headers})
    await send({"type": "http.response.body", "body": b""})


def build_app(gateway: GatewayCore) -> GatewayApp:
    """The ASGI app serving ``gateway``; mount it anywhere or run it on its own."""
    routes = Routes(gateway)
    stored = ResponseResource(gateway.response_store, gateway.refusal)
    # POSTs served past Starlette; it still lists them, for 405s and the OpenAPI document.
    posts: dict[str, ASGIApp] = {
        CHAT_PATH: ChatEndpoint(gateway, route=CHAT_PATH),
        "/v1/responses": ResponsesEndpoint(gateway, route="/v1/responses"),
        "/v1/messages": MessagesEndpoint(gateway, route="/v1/messages"),
        "/v1/messages/count_tokens": CountTokensEndpoint(gateway),
        "/v1/embeddings": EmbeddingsEndpoint(gateway, route="/v1/embeddings"),
    }

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with gateway:
            yield

    mcp: list[BaseRoute] = []
    if gateway.config.server.mcp:
        mcp.append(Route(MCP_PATH, _mcp_endpoint(gateway)))
    dashboard = dashboard_routes(gateway) if gateway.config.server.dashboard else []
    # The Files and Batch APIs exist only with [batches] enabled: off, they cost nothing.
    batches = batch_routes(gateway) if gateway.config.batches.enabled else []
    starlette = Starlette(
        routes=[
            *(Route(path, endpoint, methods=["POST"]) for path, endpoint in posts.items()),
            WebSocketRoute("/v1/responses", ResponsesSocket(gateway)),
            Route("/v1/responses/{response_id}", stored.serve, methods=["GET", "DELETE"]),
            Route("/v1/models", routes.models, methods=["GET"]),
            Route("/v1/models/{model_id:path}", routes.model, methods=["GET"]),
            Route("/v1/providers", routes.providers, methods=["GET"]),
            Route("/v1/providers/health", routes.run_health_checks, methods=["POST"]),
            Route("/v1/providers/{name}/status", routes.set_status, methods=["PUT"]),
            *tenant_routes(gateway),
            *batches,
            Route("/v1/cache", routes.clear_cache, methods=["DELETE"]),
            Route("/v1/cache/{key}", routes.forget_cached, methods=["DELETE"]),
            Route(WELL_KNOWN, routes.resource_metadata, methods=["GET"]),
            Route(WELL_KNOWN + "/{resource:path}", routes.resource_metadata, methods=["GET"]),
            Route("/health", routes.health, methods=["GET"]),
            Route("/health/ready", routes.ready, methods=["GET"]),
            Route("/metrics", routes.metrics, methods=["GET"]),
            Route(OPENAPI_PATH, OpenAPIEndpoint(gateway).serve, methods=["GET"]),
            *mcp,
            *dashboard,
        ],
        exception_handlers={HTTPException: _http_error, Exception: _server_error},
        lifespan=lifespan,
    )
    # Starlette would redirect /v1/models/ to /v1/models at an address it reads from the
    # client's Host header; an unknown path is a 404 instead, whoever sent it.
    starlette.router.redirect_slashes = False
    server = gateway.config.server
    sites = SiteGuard(
        allowed_hosts=[*server.allowed_hosts, *server.mcp_allowed_hosts],
        allowed_origins=[*server.allowed_origins, *server.mcp_allowed_origins],
    )
    return GatewayApp(posts, starlette, sites)


def _mcp_endpoint(gateway: GatewayCore) -> ASGIApp:
    """The MCP server at /mcp, run from the gateway's lifetime (or from its first request)."""
    # leapmcp sits above leapasgi: it is imported only when a config asks for /mcp.
    from leapmcp import McpEndpoint

    endpoint = McpEndpoint.from_config(gateway)
    gateway.add_service(endpoint)
    return endpoint


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    error: LeapError
    if exc.status_code == 404:
        error = NotFoundError(f"No route {request.url.path}", code="not_found")
    else:
        # upstream_status carries the route's own status (405...) to the response.
        error = InvalidRequestError(str(exc.detail), upstream_status=exc.status_code)
    response = anthropic_response(error) if _speaks_anthropic(request) else error_response(error)
    if exc.headers:
        # A 405 carries Allow (RFC 9110 requires it); keep whatever the route said.
        response.headers.update(exc.headers)
    return response


def _speaks_anthropic(request: Request) -> bool:
    """Anthropic's clients get Anthropic's error shape: the Messages routes, and any request
    naming an ``anthropic-version``."""
    path = request.url.path
    root = request.scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root) :]
    return path.startswith("/v1/messages") or "anthropic-version" in request.headers


async def _server_error(request: Request, exc: Exception) -> Response:
    logger.exception("unhandled error on %s", printable(request.url.path))
    return error_response(LeapError("The gateway failed unexpectedly", code="internal_error"))
