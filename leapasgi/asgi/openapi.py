"""``GET /openapi.json``: an OpenAPI 3.1 document of the gateway's HTTP API.

This module lays out the paths: each operation's parameters, headers, security and responses.
The schemas they refer to are built in ``_openapi_schemas``. The document is built on the first
request and kept.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import Response

from .. import __version__
from ..prometheus import CONTENT_TYPE
from ..tenants.tenancy import WELL_KNOWN
from ..tenants.usage import GROUP_FIELDS
from ._openapi_schemas import (
    ANTHROPIC_ERROR_BODY,
    ERROR_BODY,
    component_schemas,
    event_schema,
    health_schema,
    list_of,
    printable,
    providers_schema,
    ready_schema,
    ref,
    status_change_schema,
    typed_event_schema,
)
from .admin_tenants import MAX_TENANT
from .routes import error_response

if TYPE_CHECKING:
    from ..gateway import GatewayCore

__all__ = ["OPENAPI_PATH", "OPENAPI_VERSION", "OpenAPIEndpoint", "openapi_document"]

OPENAPI_PATH = "/openapi.json"
OPENAPI_VERSION = "3.1.0"


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _header(description: str, kind: str = "string") -> dict[str, Any]:
    return {"description": description, "schema": {"type": kind}}


_TRAIL_HEADERS = {
    "x-leap-attempts": _header("Upstream attempts this request took.", "integer"),
    "x-leap-provider": _header("The provider that served the request."),
    "x-leap-overhead-ms": _header("Time spent in the gateway itself, in milliseconds."),
    "x-request-id": _header("The upstream's request id, when it sent one."),
    "x-leap-cost-usd": {
        "description": "The request's cost in USD, from the upstream's usage and the model's "
        "price; on answers that are not streamed, when the model has a price.",
        "schema": {"type": "number", "minimum": 0},
    },
}
_ERROR_HEADERS = {
    "retry-after": _header("Seconds to wait before retrying (429 and 503).", "integer"),
    "x-should-retry": _header("false once the gateway has already retried and failed over."),
    "x-leap-attempts": _header("Upstream attempts this request took.", "integer"),
    "www-authenticate": _header("On a 401: the challenge; with [oauth], RFC 9728's."),
}
# On the model routes while the response cache is on.
_CACHE_HEADERS = {
    "x-leap-cache": _header("With the response cache on: hit, miss or bypass."),
    "x-leap-cache-key": _header(
        "The answer's cache key (hit or miss): DELETE /v1/cache/{key} forgets it."
    ),
    "age": _header("On a hit: seconds since the answer was stored.", "integer"),
}
_ANSWER_HEADERS = {**_TRAIL_HEADERS, **_CACHE_HEADERS}
# The anthropic SDK reads a request's id from ``request-id``.
_REQUEST_ID = {"request-id": _header("The request's id (also sent as x-request-id).")}
_OPENAI_ERROR = {**_json(ERROR_BODY, "An OpenAI-shaped error."), "headers": _ERROR_HEADERS}
# What a key's policy answers on the model operations, besides the upstreams' errors.
_MODEL_ERROR = {
    **_OPENAI_ERROR,
    "description": "An OpenAI-shaped error. A key's policy may refuse the request: 403 "
    "model_not_allowed; 429 budget_exceeded, budget_held, tenant_rate_limit_exceeded or "
    "tenant_concurrency_exceeded (retry-after says when to try again; none once a total "
    "budget is spent); 503 store_unavailable when the key store cannot be reached.",
}
_ANTHROPIC_ERROR = {
    **_json(
        ANTHROPIC_ERROR_BODY,
        "An Anthropic-shaped error, with Anthropic's status (529 when no provider has capacity). "
        "A key's policy may refuse the request: permission_error (403) for a model it may not "
        "use, rate_limit_error (429) for its rate, concurrency and budget.",
    ),
    "headers": {**_ERROR_HEADERS, **_REQUEST_ID},
}
_EITHER_ERROR = {
    **_json(
        {"anyOf": [ERROR_BODY, ANTHROPIC_ERROR_BODY]},
        "An OpenAI-shaped error; Anthropic's shape when anthropic-version is sent.",
    ),
    "headers": _ERROR_HEADERS,
}


def _operation(
    summary: str,
    responses: dict[str, Any],
    *,
    tags: list[str],
    security: list[dict[str, list[str]]] | None = None,
    body: dict[str, Any] | None = None,
    body_required: bool = True,
    parameters: list[dict[str, Any]] | None = None,
    description: str | None = None,
    error: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One operation; its errors are OpenAI's body unless ``error`` names another response."""
    operation: dict[str, Any] = {"summary": summary, "tags": tags}
    if description is not None:
        operation["description"] = description
    if security is not None:
        operation["security"] = security
    if parameters:
        operation["parameters"] = parameters
    if body is not None:
        content = {"application/json": body}
        operation["requestBody"] = {"required": body_required, "content": content}
    operation["responses"] = {**responses, "default": error or _OPENAI_ERROR}
    return operation


def _path_parameter(name: str, description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "description": description,
        "schema": {"type": "string", "minLength": 1},
    }


def _optional(where: str, name: str, description: str) -> dict[str, Any]:
    return {"name": name, "in": where, "description": description, "schema": {"type": "string"}}


_ANTHROPIC_HEADERS = [
    _optional("header", "anthropic-version", "Passed on to a provider that speaks Messages."),
    _optional("header", "anthropic-beta", "Passed on to a provider that speaks Messages."),
]
_MODEL_SHAPE = _optional(
    "header", "anthropic-version", "Any value: answer in Anthropic's shape (Anthropic's SDKs)."
)
# Read only with anthropic-version, so their schemas cannot promise a refusal without it.
_ANTHROPIC_PAGE = [
    _optional("query", "limit", "With anthropic-version: models per page, 1 to 1000 (20)."),
    _optional("query", "after_id", "With anthropic-version: the page after this model."),
    _optional("query", "before_id", "With anthropic-version: the page before this model."),
]
_RESPONSE_ID = _path_parameter("response_id", "A response id; only the key that made it sees it.")


def openapi_document(
    *,
    api_auth: bool,
    admin: bool,
    cache: bool = False,
    oauth: bool = False,
    server_url: str = "/",
) -> dict[str, Any]:
    """The OpenAPI 3.1 document; ``api_auth``/``admin`` say whether keys are asked for,
    ``cache`` whether the response cache (and its admin routes) is on, ``oauth`` whether
    ``[oauth]`` is (and the protected resource's metadata served)."""
    # Without configured keys a route lets everyone in: the empty requirement says so.
    anyone: list[dict[str, list[str]]] = [] if api_auth else [{}]
    api: list[dict[str, list[str]]] = [{"apiKey": []}, *anyone]
    anthropic_api: list[dict[str, list[str]]] = [{"apiKey": []}, {"anthropicKey": []}, *anyone]
    admin_only: list[dict[str, list[str]]] = [{"adminKey": []}]
    not_served = "" if admin else " Not served (404) while no admin key is configured."
    snapshot = _json(ref("ProviderSnapshot"), "The provider, after the change.")
    paths: dict[str, Any] = {
        "/v1/chat/completions": {
            "post": _operation(
                "Create a chat completion: JSON, or server-sent events when stream is true",
                {
                    "200": {
                        "description": "The completion; with stream true, SSE events each "
                        "carrying a ChatCompletionChunk as JSON, then `data: [DONE]`. An error "
                        'after the first event arrives as one `data: {"error": ...}` event '
                        "and the stream ends without [DONE].",
                        "headers": _ANSWER_HEADERS,
                        "content": {
                            "application/json": {"schema": ref("ChatCompletion")},
                            "text/event-stream": {"schema": event_schema()},
                        },
                    }
                },
                tags=["chat"],
                security=api,
                body={"schema": ref("ChatCompletionRequest")},
                error=_MODEL_ERROR,
            )
        },
        "/v1/responses": {
            "post": _operation(
                "Create a response (OpenAI Responses): JSON, or server-sent events when stream "
                "is true",
                {
                    "200": {
                        "description": "The response; with stream true, SSE events from "
                        "response.created to response.completed, each carrying JSON that names "
                        "its type. An error after the first event arrives as an `error` event.",
                        "headers": _ANSWER_HEADERS,
                        "content": {
                            "application/json": {"schema": ref("Response")},
                            "text/event-stream": {"schema": typed_event_schema()},
                        },
                    }
                },
                tags=["responses"],
                security=api,
                body={"schema": ref("ResponsesRequest")},
                error=_MODEL_ERROR,
                description="The gateway keeps the conversation: previous_response_id names a "
                "stored response of the same key, whatever provider made it; store false keeps "
                "this one out of the store. GET /v1/responses also takes a WebSocket upgrade "
                "(the Responses WebSocket mode, which OpenAPI cannot describe): each "
                "`response.create` frame carries this body and gets the stream's events, one "
                "JSON text frame each.",
            )
        },
        "/v1/responses/{response_id}": {
            "get": _operation(
                "Retrieve a stored response",
                {"200": _json(ref("Response"), "The response.")},
                tags=["responses"],
                security=api,
                parameters=[_RESPONSE_ID],
            ),
            "delete": _operation(
                "Delete a stored response",
                {"200": _json(ref("ResponseDeleted"), "Deleted.")},
                tags=["responses"],
                security=api,
                parameters=[_RESPONSE_ID],
            ),
        },
        "/v1/messages": {
            "post": _operation(
                "Create a message (Anthropic Messages): JSON, or server-sent events when stream "
                "is true",
                {
                    "200": {
                        "description": "The message; with stream true, SSE events from "
                        "message_start to message_stop, each carrying JSON that names its type. "
                        "An error after the first event arrives as an `error` event.",
                        "headers": {**_ANSWER_HEADERS, **_REQUEST_ID},
                        "content": {
                            "application/json": {"schema": ref("Message")},
                            "text/event-stream": {"schema": typed_event_schema()},
                        },
                    }
                },
                tags=["messages"],
                security=anthropic_api,
                body={"schema": ref("MessagesRequest")},
                parameters=_ANTHROPIC_HEADERS,
                error=_ANTHROPIC_ERROR,
            )
        },
        "/v1/messages/count_tokens": {
            "post": _operation(
                "Count a message's input tokens: the upstream's count when a provider speaking "
                "Messages serves the model, else the gateway's estimate",
                {
                    "200": {
                        **_json(ref("MessageTokensCount"), "The count."),
                        "headers": {
                            **_TRAIL_HEADERS,
                            **_REQUEST_ID,
                            "x-leap-estimate": _header("true when the count is an estimate."),
                        },
                    }
                },
                tags=["messages"],
                security=anthropic_api,
                body={"schema": ref("CountTokensRequest")},
                parameters=_ANTHROPIC_HEADERS,
                error=_ANTHROPIC_ERROR,
            )
        },
        "/v1/embeddings": {
            "post": _operation(
                "Create embeddings",
                {
                    "200": {
                        **_json(ref("EmbeddingResponse"), "The embeddings."),
                        "headers": _ANSWER_HEADERS,
                    }
                },
                tags=["embeddings"],
                security=api,
                body={"schema": ref("EmbeddingRequest")},
                error=_MODEL_ERROR,
            )
        },
        "/v1/models": {
            "get": _operation(
                "List every routable model and alias; with anthropic-version, one page of "
                "Anthropic's model list",
                {
                    "200": _json(
                        {"anyOf": [ref("ModelList"), ref("AnthropicModelList")]}, "The models."
                    )
                },
                tags=["models"],
                security=anthropic_api,
                parameters=[_MODEL_SHAPE, *_ANTHROPIC_PAGE],
                error=_EITHER_ERROR,
            )
        },
        "/v1/models/{model_id}": {
            "get": _operation(
                "Describe one model; in Anthropic's shape with anthropic-version",
                {"200": _json({"anyOf": [ref("Model"), ref("AnthropicModel")]}, "The model.")},
                tags=["models"],
                security=anthropic_api,
                parameters=[
                    _path_parameter("model_id", "A model id or alias; may hold slashes."),
                    _MODEL_SHAPE,
                ],
                error=_EITHER_ERROR,
            )
        },
        "/v1/providers": {
            "get": _operation(
                "Status and metrics of every provider (admin)." + not_served,
                {"200": _json(providers_schema(), "Every provider, and totals.")},
                tags=["admin"],
                security=admin_only,
            )
        },
        "/v1/providers/health": {
            "post": _operation(
                "Run every provider's health check now (admin)." + not_served,
                {"200": _json(list_of(ref("HealthResult")), "One result per provider.")},
                tags=["admin"],
                security=admin_only,
            )
        },
        "/v1/providers/{name}/status": {
            "put": _operation(
                "Set a provider's status: active, inactive or maintenance (admin)." + not_served,
                {"200": snapshot},
                tags=["admin"],
                security=admin_only,
                parameters=[_path_parameter("name", "The provider's name.")],
                body={"schema": status_change_schema()},
            )
        },
        "/health": {
            "get": _operation(
                "Liveness: the process is up",
                {"200": _json(health_schema(), "Up.")},
                tags=["health"],
                security=[],
            )
        },
        "/health/ready": {
            "get": _operation(
                "Readiness: 200 when a provider can serve, else 503; open to probes, and the "
                "providers are listed only to key holders when keys are configured",
                {
                    "200": _json(ready_schema(), "At least one provider is active."),
                    "503": _json(ready_schema(), "No provider is active."),
                },
                tags=["health"],
                security=[],
            )
        },
        "/metrics": {
            "get": _operation(
                "Prometheus metrics",
                {
                    "200": {
                        "description": "The Prometheus text format.",
                        "content": {CONTENT_TYPE: {"schema": {"type": "string"}}},
                    }
                },
                tags=["health"],
                security=api,
            )
        },
        OPENAPI_PATH: {
            "get": _operation(
                "This document",
                {"200": _json({"type": "object"}, "The OpenAPI document.")},
                tags=["meta"],
                security=api,
            )
        },
    }
    paths.update(_tenancy_paths(admin_only, not_served))
    if cache:
        paths.update(_cache_paths(admin_only, not_served))
    if oauth:
        paths.update(_oauth_paths())
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "leapasgi",
            "version": __version__,
            "description": "An OpenAI-compatible LLM gateway that also speaks Anthropic's "
            "Messages. Errors carry the OpenAI error body, but for the Messages operations, and "
            "the model operations when anthropic-version is sent, which answer in Anthropic's.",
        },
        "servers": [{"url": server_url}],
        "security": api,
        "paths": paths,
        "components": {
            "schemas": component_schemas(),
            "securitySchemes": {
                "apiKey": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "One of the gateway's API keys (server.api_keys), a "
                    "virtual key (lk-..., from POST /v1/keys), or with [oauth] an access token.",
                },
                "anthropicKey": {
                    "type": "apiKey",
                    "in": "header",
                    "name": "x-api-key",
                    "description": "An API key as Anthropic's SDKs send it; read only when no "
                    "Authorization header is sent.",
                },
                "adminKey": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "The gateway's admin key (server.admin_key).",
                },
            },
        },
    }


_DELETED = {
    "type": "object",
    "required": ["deleted"],
    "properties": {"deleted": {"type": "integer", "minimum": 0}},
}


def _cache_paths(security: list[dict[str, list[str]]], not_served: str) -> dict[str, Any]:
    """The response cache's admin routes."""
    key = _path_parameter("key", "A cache key, as the x-leap-cache-key header showed it.")
    key["schema"] = {"type": "string", "pattern": "^[0-9a-f]{64}$"}
    return {
        "/v1/cache": {
            "delete": _operation(
                "Forget every cached answer (admin)." + not_served,
                {"200": _json(_DELETED, "How many entries there were.")},
                tags=["admin"],
                security=security,
            )
        },
        "/v1/cache/{key}": {
            "delete": _operation(
                "Forget one cached answer (admin); 400 for a malformed key." + not_served,
                {"200": _json(_DELETED, "1 when the entry was there, else 0.")},
                tags=["admin"],
                security=security,
                parameters=[key],
            )
        },
    }


_KEY_ID = _path_parameter("key_id", "A virtual key's id.")
_DAY = {"type": "string", "format": "date", "pattern": "^[0-9]{4}-[0-9]{2}-[0-9]{2}$"}
# Names from GROUP_FIELDS between commas, each with white space (str.isspace) around it.
_SPACE = r"[\s\x1c-\x1f]*"
_GROUP = f"({'|'.join(GROUP_FIELDS)})?"
_GROUPS = f"^{_SPACE}{_GROUP}{_SPACE}(,{_SPACE}{_GROUP}{_SPACE})*$"


def _query(name: str, description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "in": "query", "description": description, "schema": schema}


def _tenancy_paths(security: list[dict[str, list[str]]], not_served: str) -> dict[str, Any]:
    """The admin API of virtual keys and usage."""
    key = _json(ref("VirtualKey"), "The key.")
    tenant = printable(1, MAX_TENANT)
    usage = [
        _query("since", "The first day, UTC (default: 30 days before until).", _DAY),
        _query("until", "The last day, UTC (default: today).", _DAY),
        _query("tenant", "Only this tenant's usage.", tenant),
        _query(
            "group_by",
            "What the rows are summed by, comma-separated: any of day, tenant, model and "
            "provider (default: day,tenant,model; empty: one row).",
            {"type": "string", "pattern": _GROUPS},
        ),
    ]

    def admin(summary: str, answer: dict[str, Any], **options: Any) -> dict[str, Any]:
        return _operation(
            summary + " (admin)." + not_served,
            answer,
            tags=["admin"],
            security=security,
            **options,
        )

    created = {
        **_json(ref("CreatedVirtualKey"), "The key, with its secret: shown this once."),
        "headers": {"cache-control": _header("no-store.")},
    }
    return {
        "/v1/keys": {
            "post": admin(
                "Make a virtual key: its tenant, limits, budget, expiry, tags and metadata",
                {"201": created},
                body={"schema": ref("KeyCreateRequest")},
                body_required=False,
            ),
            "get": admin(
                "List the virtual keys, oldest first, revoked and expired ones too",
                {"200": _json(list_of(ref("VirtualKey")), "The keys.")},
                parameters=[_query("tenant", "Only this tenant's keys.", {"type": "string"})],
            ),
        },
        "/v1/keys/{key_id}": {
            "get": admin("Show a virtual key", {"200": key}, parameters=[_KEY_ID]),
            "patch": admin(
                "Change a key's name, limits, budget, expiry, tags or metadata",
                {"200": _json(ref("VirtualKey"), "The key, changed.")},
                parameters=[_KEY_ID],
                body={"schema": ref("KeyUpdateRequest")},
                body_required=False,
            ),
            "delete": admin(
                "Revoke a key: refused from now on, kept for the usage reports",
                {"200": _json(ref("VirtualKey"), "The key, revoked (at its first revocation).")},
                parameters=[_KEY_ID],
            ),
        },
        "/v1/keys/{key_id}/revoke": {
            "post": admin(
                "Revoke a key, as DELETE does",
                {"200": _json(ref("VirtualKey"), "The key, revoked (at its first revocation).")},
                parameters=[_KEY_ID],
            )
        },
        "/v1/usage": {
            "get": admin(
                "Usage and cost from since to until (both included), summed by group_by",
                {
                    "200": _json(
                        ref("UsageReport"), "The rows, sorted by their names, and the total."
                    )
                },
                parameters=usage,
            )
        },
    }


def _oauth_paths() -> dict[str, Any]:
    """The protected resource's metadata (RFC 9728), public as the spec asks."""
    answer = {
        **_json(
            ref("ProtectedResourceMetadata"), "The gateway as an OAuth 2.1 protected resource."
        ),
        "headers": {"cache-control": _header("public, max-age=3600.")},
    }
    resource = _path_parameter("resource", "The resource's path below the gateway (mcp).")
    return {
        WELL_KNOWN: {
            "get": _operation(
                "Where to get an access token for the gateway's API (RFC 9728)",
                {"200": answer},
                tags=["oauth"],
                security=[],
            )
        },
        WELL_KNOWN + "/{resource}": {
            "get": _operation(
                "Where to get an access token for a resource below the gateway, such as /mcp",
                {"200": answer},
                tags=["oauth"],
                security=[],
                parameters=[resource],
            )
        },
    }


class OpenAPIEndpoint:
    """Serves the document of one gateway, built on its first request and then kept."""

    def __init__(self, gateway: GatewayCore) -> None:
        self._gateway = gateway
        # One rendering per mount point (root_path); in practice there is one.
        self._rendered: dict[str, bytes] = {}

    async def serve(self, request: Request) -> Response:
        """``GET /openapi.json``, behind the API keys like every route but the probes."""
        refused = await self._gateway.refusal(request.scope)
        if refused is not None:
            return error_response(refused)
        root: str = request.scope.get("root_path", "")
        body = self._rendered.get(root)
        if body is None:
            gateway = self._gateway
            document = openapi_document(
                api_auth=gateway.tenancy.required,
                admin=gateway.access.has_admin,
                cache=gateway.cache is not None,
                oauth=gateway.config.oauth is not None,
                server_url=root or "/",
            )
            body = self._rendered[root] = json.dumps(document, separators=(",", ":")).encode()
        return Response(body, media_type="application/json")
