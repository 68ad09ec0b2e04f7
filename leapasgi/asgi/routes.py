"""The gateway's other routes: models, health, metrics and the admin API."""

from __future__ import annotations

import dataclasses
import datetime
import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response

from ..access import Role
from ..cache import is_cache_key
from ..exceptions import InvalidRequestError, LeapError, ModelNotFoundError, NotFoundError
from ..outcome import CLIENT_CLOSED
from ..prometheus import CONTENT_TYPE
from ..protocols.messages import anthropic_error
from ..registry import ProviderStatus
from ..tenants.identity import tenant_of_scope
from ..types import Model
from ._http import ClientGone, error_headers, read_body

if TYPE_CHECKING:
    from ..gateway import GatewayCore

__all__ = ["Routes", "anthropic_response", "error_response"]

# Anthropic's model list pages: the default size and the largest a client may ask for.
ANTHROPIC_PAGE = 20
MAX_ANTHROPIC_PAGE = 1000


def error_response(error: LeapError) -> JSONResponse:
    """An OpenAI error body with the error's status and retry headers."""
    headers = {k.decode(): v.decode() for k, v in error_headers(error)}
    return JSONResponse(error.to_body(), status_code=error.http_status, headers=headers)


def _anthropic(request: Request) -> bool:
    return "anthropic-version" in request.headers


def anthropic_response(error: LeapError) -> JSONResponse:
    """An Anthropic error body with Anthropic's status for ``error``."""
    status, body = anthropic_error(error)
    headers = {k.decode(): v.decode() for k, v in error_headers(error)}
    return JSONResponse(body, status_code=status, headers=headers)


def anthropic_model(model: Model) -> dict[str, Any]:
    """A model as Anthropic's API lists it."""
    created = datetime.datetime.fromtimestamp(model.created, datetime.UTC)
    return {
        "type": "model",
        "id": model.id,
        "display_name": model.id,
        "created_at": created.strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def anthropic_page(models: list[Model], query: Mapping[str, str]) -> dict[str, Any]:
    """One page of Anthropic's model list: ``limit`` (1 to 1000, default 20) models after
    ``after_id`` or before ``before_id``."""
    raw_limit = query.get("limit", str(ANTHROPIC_PAGE))
    if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= MAX_ANTHROPIC_PAGE:
        raise InvalidRequestError(
            f"limit must be an integer from 1 to {MAX_ANTHROPIC_PAGE}", param="limit"
        )
    limit = int(raw_limit)
    ids = [m.id for m in models]
    start, stop = 0, len(models)
    after, before = query.get("after_id"), query.get("before_id")
    if after is not None:
        start = ids.index(after) + 1 if after in ids else len(ids)
        stop = min(stop, start + limit)
    elif before is not None:
        stop = ids.index(before) if before in ids else 0
        start = max(0, stop - limit)
    else:
        stop = min(stop, limit)
    page = [anthropic_model(m) for m in models[start:stop]]
    more = stop < len(models) if before is None else start > 0
    return {
        "data": page,
        "has_more": more,
        "first_id": page[0]["id"] if page else None,
        "last_id": page[-1]["id"] if page else None,
    }


class Routes:
    """Request handlers bound to one gateway."""

    def __init__(self, gateway: GatewayCore) -> None:
        self.gateway = gateway

    def _refuse(self, request: Request, *, admin: bool = False) -> Response | None:
        """None when the caller may go on; else the gateway's one access check's refusal."""
        refused = self.gateway.access.refusal(request.scope, admin=admin)
        return None if refused is None else error_response(refused)

    async def models(self, request: Request) -> Response:
        """``GET /v1/models``: every routable model and alias; in Anthropic's shape (paged
        with ``limit``, ``after_id``, ``before_id``) when the request has ``anthropic-version``."""
        anthropic = _anthropic(request)
        refused = await self.gateway.refusal(request.scope)
        if refused is not None:
            return anthropic_response(refused) if anthropic else error_response(refused)
        models = self._allowed(request, await self.gateway.manager.list_models())
        if anthropic:
            try:
                return JSONResponse(anthropic_page(models, request.query_params))
            except LeapError as error:
                return anthropic_response(error)
        return JSONResponse({"object": "list", "data": [m.to_wire() for m in models]})

    @staticmethod
    def _allowed(request: Request, models: list[Model]) -> list[Model]:
        """The models the caller's policy lets it use (every one without a model list)."""
        tenant = tenant_of_scope(request.scope)
        if tenant is None or tenant.policy.models is None:
            return models
        allows = tenant.policy.allows
        return [model for model in models if allows(model.id)]

    async def resource_metadata(self, request: Request) -> Response:
        """``GET /.well-known/oauth-protected-resource[/<path>]``: the gateway as an OAuth 2.1
        protected resource (RFC 9728), so MCP hosts find where to sign in; 404 without
        ``[oauth]``. Public, as the spec requires."""
        oauth = self.gateway.config.oauth
        if oauth is None:
            return error_response(NotFoundError("OAuth2 is not configured", code="not_found"))
        from ..tenants.oauth import protected_resource_metadata

        path = request.path_params.get("resource", "")
        resource = self.gateway.tenancy.identity.resource_url(
            request.scope, f"/{path}" if path else ""
        )
        return JSONResponse(
            protected_resource_metadata(oauth, resource),
            headers={"cache-control": "public, max-age=3600"},
        )

    async def model(self, request: Request) -> Response:
        """``GET /v1/models/{id}``."""
        anthropic = _anthropic(request)
        refused = await self.gateway.refusal(request.scope)
        if refused is not None:
            return anthropic_response(refused) if anthropic else error_response(refused)
        wanted = request.path_params["model_id"]
        for model in self._allowed(request, await self.gateway.manager.list_models()):
            if model.id == wanted:
                return JSONResponse(anthropic_model(model) if anthropic else model.to_wire())
        missing = ModelNotFoundError(f"The model `{wanted}` does not exist")
        return anthropic_response(missing) if anthropic else error_response(missing)

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
            # Degraded still serves (on local state); the detail says so.
            status = self.gateway.state.status()
            body["state"] = {
                "backend": status.backend,
                "shared": status.shared,
                "degraded": status.degraded,
                "detail": status.detail,
                "replicas": status.replicas,
            }
        return JSONResponse(body, status_code=200 if ready else 503)

    def _may_see_details(self, request: Request) -> bool:
        return self.gateway.access.role(request.scope) >= Role.API

    async def metrics(self, request: Request) -> Response:
        """``GET /metrics`` in the Prometheus text format; behind the API keys when set."""
        if (refused := await self.gateway.refusal(request.scope)) is not None:
            return error_response(refused)
        snapshots = self.gateway.manager.registry.snapshots()
        cache = self.gateway.cache
        state = self.gateway.state
        text = self.gateway.metrics.render(
            snapshots,
            cache=cache.snapshot() if cache is not None else None,
            state=state.status() if state.kind != "memory" else None,
        )
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

    async def clear_cache(self, request: Request) -> Response:
        """``DELETE /v1/cache`` (admin): forget every cached answer."""
        if (refused := self._refuse(request, admin=True)) is not None:
            return refused
        cache = self.gateway.cache
        if cache is None:
            return error_response(_cache_off())
        return JSONResponse({"deleted": await cache.clear()})

    async def forget_cached(self, request: Request) -> Response:
        """``DELETE /v1/cache/{key}`` (admin): forget one cached answer, by the key its
        x-leap-cache-key header showed."""
        if (refused := self._refuse(request, admin=True)) is not None:
            return refused
        cache = self.gateway.cache
        if cache is None:
            return error_response(_cache_off())
        key = request.path_params["key"]
        if not is_cache_key(key):
            refusal = InvalidRequestError(
                "Not a cache key: send the x-leap-cache-key header's value (64 hex digits)",
                param="key",
            )
            return error_response(refusal)
        return JSONResponse({"deleted": int(await cache.forget(key))})


def _cache_off() -> NotFoundError:
    return NotFoundError("The response cache is off ([cache] enabled = false)", code="not_found")


def _plain(value: Any) -> Any:
    """Dataclasses (snapshots, quantiles, transitions) as JSON-ready data."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return value
