"""The gateway's other routes: models, health, metrics and the admin API."""

from __future__ import annotations

import dataclasses
import json
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response

from ..access import Role
from ..exceptions import InvalidRequestError, LeapError, ModelNotFoundError
from ..outcome import CLIENT_CLOSED
from ..prometheus import CONTENT_TYPE
from ..registry import ProviderStatus
from ._http import ClientGone, error_headers, read_body

if TYPE_CHECKING:
    from ..gateway import GatewayCore

__all__ = ["Routes", "error_response"]


def error_response(error: LeapError) -> JSONResponse:
    """An OpenAI error body with the error's status and retry headers."""
    headers = {k.decode(): v.decode() for k, v in error_headers(error)}
    return JSONResponse(error.to_body(), status_code=error.http_status, headers=headers)


class Routes:
    """Request handlers bound to one gateway."""

    def __init__(self, gateway: GatewayCore) -> None:
        self.gateway = gateway

    def _refuse(self, request: Request, *, admin: bool = False) -> Response | None:
        """None when the caller may go on; else the gateway's one access check's refusal."""
        refused = self.gateway.access.refusal(request.scope, admin=admin)
        return None if refused is None else error_response(refused)

    async def models(self, request: Request) -> Response:
        """``GET /v1/models``: every routable model and alias."""
        if (refused := self._refuse(request)) is not None:
            return refused
        models = await self.gateway.manager.list_models()
        return JSONResponse({"object": "list", "data": [m.to_wire() for m in models]})

    async def model(self, request: Request) -> Response:
        """``GET /v1/models/{id}``."""
        if (refused := self._refuse(request)) is not None:
            return refused
        wanted = request.path_params["model_id"]
        for model in await self.gateway.manager.list_models():
            if model.id == wanted:
                return JSONResponse(model.to_wire())
        return error_response(ModelNotFoundError(f"The model `{wanted}` does not exist"))

    async def health(self, request: Request) -> Response:
        """``GET /health``: the process is up."""
        return JSONResponse({"status": "ok"})

    async def ready(self, request: Request) -> Response:
        """``GET /health/ready``: 200 when at least one provider can serve, else 503.

        Open to probes; with gateway auth on, the providers are listed only to key holders.
        """
        providers = [
            {"name": s.name, "status": s.status, "health": s.health, "breaker": s.breaker}
            for s in self.gateway.manager.registry.snapshots()
        ]
        ready = any(p["status"] == ProviderStatus.ACTIVE for p in providers)
        body: dict[str, Any] = {"status": "ready" if ready else "unavailable"}
        if self._may_see_details(request):
            body["providers"] = providers
        return JSONResponse(body, status_code=200 if ready else 503)

    def _may_see_details(self, request: Request) -> bool:
        return self.gateway.access.role(request.scope) >= Role.API

    async def metrics(self, request: Request) -> Response:
        """``GET /metrics`` in the Prometheus text format; behind the API keys when set."""
        if (refused := self._refuse(request)) is not None:
            return refused
        snapshots = self.gateway.manager.registry.snapshots()
        text = self.gateway.metrics.render(snapshots)
        return PlainTextResponse(text, media_type=CONTENT_TYPE)

    async def providers(self, request: Request) -> Response:
        """``GET /v1/providers`` (admin): status and metrics of every provider."""
        if (refused := self._refuse(request, admin=True)) is not None:
            return refused
        snapshots = self.gateway.manager.registry.snapshots()
        return JSONResponse(
            {
                "object": "list",
                "data": [_plain(s) for s in snapshots],
                "stats": _plain(self.gateway.manager.registry.stats()),
            }
        )

    async def set_status(self, request: Request) -> Response:
        """``PUT /v1/providers/{name}/status`` (admin): active, inactive or maintenance."""
        if (refused := self._refuse(request, admin=True)) is not None:
            return refused
        name = request.path_params["name"]
        limit = self.gateway.config.server.max_body_bytes
        try:
            body = json.loads(await read_body(request.receive, request.scope, limit) or b"{}")
            if not isinstance(body, dict) or not isinstance(body.get("status"), str):
                raise InvalidRequestError('Send {"status": "active"}', param="status")
            cause = str(body.get("reason") or "set by an admin")[:200]
            registry = self.gateway.manager.registry
            registry.set_status(name, body["status"], cause=cause)
            return JSONResponse(_plain(registry.snapshot(name)))
        except (ValueError, RecursionError):
            return error_response(InvalidRequestError("The body is not valid JSON"))
        except LeapError as error:
            return error_response(error)
        except ClientGone:
            return Response(status_code=CLIENT_CLOSED)

    async def run_health_checks(self, request: Request) -> Response:
        """``POST /v1/providers/health`` (admin): check every provider now."""
        if (refused := self._refuse(request, admin=True)) is not None:
            return refused
        results = await self.gateway.manager.check_health()
        return JSONResponse({"object": "list", "data": [_plain(r) for r in results]})


def _plain(value: Any) -> Any:
    """Dataclasses (snapshots, quantiles, transitions) as JSON-ready data."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return value
