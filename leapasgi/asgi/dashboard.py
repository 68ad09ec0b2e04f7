"""The live dashboard at ``/dashboard/`` (``[server] dashboard = true``): one page and its
script and style, served from the package (no CDN; relative URLs, so any mount prefix works),
and ``/dashboard/events``, a Server-Sent Events stream of snapshots, one a second.

The page is public and holds no data; the events stream and the admin actions it posts to
(``/v1/providers...``) need the admin key. ``EventSource`` cannot send headers, so the page
reads the stream with ``fetch`` and sends the key as ``Authorization`` (kept in the tab's
sessionStorage): no token in a URL, where logs and history would keep it.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from ..exceptions import NotFoundError
from ..recent import RecentRequests
from .routes import error_response

if TYPE_CHECKING:
    from ..gateway import GatewayCore

__all__ = ["DASHBOARD_PATH", "EVENTS_INTERVAL", "dashboard_routes", "snapshot"]

DASHBOARD_PATH = "/dashboard"
# Seconds between two snapshots on the events stream.
EVENTS_INTERVAL = 1.0
_FILES = Path(__file__).parent / "_dashboard"
_TYPES = {
    "index.html": "text/html; charset=utf-8",
    "dashboard.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
}
# The page runs only its own script and style, and talks only to its own origin.
_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


def snapshot(gateway: GatewayCore, recent: RecentRequests) -> dict[str, Any]:
    """What the dashboard shows now: providers, per-second series, the last requests'
    trails, the cache hit rate and spend per tenant. Names and numbers only, no content."""
    providers = []
    for s in gateway.manager.registry.snapshots():
        latency = s.latency
        providers.append(
            {
                "name": s.name,
                "kind": s.kind,
                "status": s.status.value,
                "health": s.health.value,
                "breaker": s.breaker.value,
                "ejected_until": s.ejected_until,
                "held_until": s.held_until,
                "models": list(s.models),
                "requests": s.requests,
                "successes": s.successes,
                "errors": sum(s.errors.values()),
                "success_rate": s.success_rate,
                "in_flight": s.in_flight,
                "limit": s.limit if s.limit is not None else s.max_in_flight,
                "waiting": s.waiting,
                "shed": s.shed,
                "adaptive": s.adaptive,
                "p50_ms": _ms(latency.p50) if latency is not None else None,
                "p95_ms": _ms(latency.p95) if latency is not None else None,
                "last_check_ok": s.last_check_ok,
            }
        )
    return {
        "at": time.time(),
        "interval": EVENTS_INTERVAL,
        "providers": providers,
        "series": recent.series(),
        "requests": list(recent.requests),
        "cache": None
        if gateway.cache is None
        else {"hit_rate": recent.cache_hit_rate(), "lookups": dict(recent.cache)},
        "spend": dict(sorted(recent.spend.items(), key=lambda item: -item[1])[:50]),
    }


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


class Dashboard:
    """The dashboard's handlers, bound to one gateway."""

    def __init__(self, gateway: GatewayCore, recent: RecentRequests) -> None:
        self.gateway = gateway
        self.recent = recent

    async def home(self, request: Request) -> Response:
        """``GET /dashboard``: on to ``dashboard/``, relative, so the page's relative URLs
        resolve under whatever prefix the app is mounted at."""
        return Response(status_code=308, headers={"location": "dashboard/"})

    async def file(self, request: Request) -> Response:
        """The page, its script or its style."""
        name = request.path_params.get("name") or "index.html"
        media = _TYPES.get(name)
        if media is None:
            missing = NotFoundError(f"No route {request.url.path}", code="not_found")
            return error_response(missing)
        headers = {
            "cache-control": "no-cache",
            "x-content-type-options": "nosniff",
            "content-security-policy": _CSP,
            "referrer-policy": "no-referrer",
        }
        return Response((_FILES / name).read_bytes(), media_type=media, headers=headers)

    async def events(self, request: Request) -> Response:
        """``GET /dashboard/events`` (admin): a snapshot now, then one every second."""
        refused = self.gateway.access.refusal(request.scope, admin=True)
        if refused is not None:
            return error_response(refused)
        headers = {"cache-control": "no-store", "x-accel-buffering": "no"}
        return StreamingResponse(self._stream(), media_type="text/event-stream", headers=headers)

    async def _stream(self) -> AsyncIterator[bytes]:
        while True:
            body = json.dumps(snapshot(self.gateway, self.recent), separators=(",", ":"))
            yield f"event: snapshot\ndata: {body}\n\n".encode()
            await asyncio.sleep(EVENTS_INTERVAL)


def dashboard_routes(gateway: GatewayCore) -> list[BaseRoute]:
    """The dashboard's routes; from here on the recorder keeps the last requests for it."""
    recent = gateway.recorder.recent
    if recent is None:
        recent = gateway.recorder.recent = RecentRequests(
            clock=gateway.manager.registry.clock.monotonic
        )
    dashboard = Dashboard(gateway, recent)
    return [
        Route(DASHBOARD_PATH, dashboard.home, methods=["GET"]),
        Route(DASHBOARD_PATH + "/", dashboard.file, methods=["GET"]),
        Route(DASHBOARD_PATH + "/events", dashboard.events, methods=["GET"]),
        Route(DASHBOARD_PATH + "/{name}", dashboard.file, methods=["GET"]),
    ]
