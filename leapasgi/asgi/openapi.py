"""``GET /openapi.json``: an OpenAPI 3.1 document of the gateway's HTTP API.

This module lays out the paths: each operation's parameters, headers, security and responses,
from the parts in ``_openapi_operations``. The schemas they refer to are built in
``_openapi_schemas``. The document is built on the first request and kept.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import Response

from .. import __version__
from ..prometheus import CONTENT_TYPE
from ..tenants.identity import WELL_KNOWN
from ..tenants.usage import GROUP_FIELDS
from ._openapi_batches import batch_paths
from ._openapi_operations import (
    ANSWER_HEADERS,
    ANTHROPIC_ERROR,
    EITHER_ERROR,
    MODEL_ERROR,
    REQUEST_ID,
    TRAIL_HEADERS,
    header,
    json_body,
    operation,
    optional,
    path_parameter,
    query,
)
from ._openapi_schemas import (
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


_ANTHROPIC_HEADERS = [
    optional("header", "anthropic-version", "Passed on to a provider that speaks Messages."),
    optional("header", "anthropic-beta", "Passed on to a provider that speaks Messages."),
]
# What a request may ask of the gateway itself, on every model endpoint.
_CONTROL_HEADERS = [
    optional(
        "header", "x-leap-hedge", "on or off: hedge this request or not (with routing.hedge_after)."
    ),
    optional(
        "header",
        "x-leap-priority",
        "Its place in a provider's line, -100 to 100 (higher first), within the caller's policy.",
    ),
]
_MODEL_SHAPE = optional(
    "header", "anthropic-version", "Any value: answer in Anthropic's shape (Anthropic's SDKs)."
)
# Read only with anthropic-version, so their schemas cannot promise a refusal without it.
_ANTHROPIC_PAGE = [
    optional("query", "limit", "With anthropic-version: models per page, 1 to 1000 (20)."),
    optional("query", "after_id", "With anthropic-version: the page after this model."),
    optional("query", "before_id", "With anthropic-version: the page before this model."),
]
_RESPONSE_ID = path_parameter("response_id", "A response id; only the key that made it sees it.")


def openapi_document(
    *,
    api_auth: bool,
    admin: bool,
    cache: bool = False,
    oauth: bool = False,
    batches: bool = False,
    server_url: str = "/",
) -> dict[str, Any]:
    """The OpenAPI 3.1 document; ``api_auth``/``admin`` say whether keys are asked for,
    ``cache`` whether the response cache (and its admin routes) is on, ``oauth`` whether
    ``[oauth]`` is (and the protected resource's metadata served), ``batches`` whether the
    Files and Batch APIs are."""
    # Without configured keys a route lets everyone in: the empty requirement says so.
    anyone: list[dict[str, list[str]]] = [] if api_auth else [{}]
    api: list[dict[str, list[str]]] = [{"apiKey": []}, *anyone]
    anthropic_api: list[dict[str, list[str]]] = [{"apiKey": []}, {"anthropicKey": []}, *anyone]
    admin_only: list[dict[str, list[str]]] = [{"adminKey": []}]
    not_served = "" if admin else " Not served (404) while no admin key is configured."
    snapshot = json_body(ref("ProviderSnapshot"), "The provider, after the change.")
    paths: dict[str, Any] = {
        "/v1/chat/completions": {
            "post": operation(
                "Create a chat completion: JSON, or server-sent events when stream is true",
                {
                    "200": {
                        "description": "The completion; with stream true, SSE events each "
                        "carrying a ChatCompletionChunk as JSON, then `data: [DONE]`. An error "
                        'after the first event arrives as one `data: {"error": ...}` event '
                        "and the stream ends without [DONE].",
                        "headers": ANSWER_HEADERS,
                        "content": {
                            "application/json": {"schema": ref("ChatCompletion")},
                            "text/event-stream": {"schema": event_schema()},
                        },
                    }
                },
                tags=["chat"],
                security=api,
                parameters=_CONTROL_HEADERS,
                body={"schema": ref("ChatCompletionRequest")},
                error=MODEL_ERROR,
            )
        },
        "/v1/responses": {
            "post": operation(
                "Create a response (OpenAI Responses): JSON, or server-sent events when stream "
                "is true",
                {
                    "200": {
                        "description": "The response; with stream true, SSE events from "
                        "response.created to response.completed, each carrying JSON that names "
                        "its type. An error after the first event arrives as an `error` event.",
                        "headers": ANSWER_HEADERS,
                        "content": {
                            "application/json": {"schema": ref("Response")},
                            "text/event-stream": {"schema": typed_event_schema()},
                        },
                    }
                },
                tags=["responses"],
                security=api,
                parameters=_CONTROL_HEADERS,
                body={"schema": ref("ResponsesRequest")},
                error=MODEL_ERROR,
                description="The gateway keeps the conversation: previous_response_id names a "
                "stored response of the same key, whatever provider made it; store false keeps "
                "this one out of the store. GET /v1/responses also takes a WebSocket upgrade "
                "(the Responses WebSocket mode, which OpenAPI cannot describe): each "
                "`response.create` frame carries this body and gets the stream's events, one "
                "JSON text frame each.",
            )
        },
        "/v1/responses/{response_id}": {
            "get": operation(
                "Retrieve a stored response",
                {"200": json_body(ref("Response"), "The response.")},
                tags=["responses"],
                security=api,
                parameters=[_RESPONSE_ID],
            ),
            "delete": operation(
                "Delete a stored response",
                {"200": json_body(ref("ResponseDeleted"), "Deleted.")},
                tags=["responses"],
                security=api,
                parameters=[_RESPONSE_ID],
            ),
        },
        "/v1/messages": {
            "post": operation(
                "Create a message (Anthropic Messages): JSON, or server-sent events when stream "
                "is true",
                {
                    "200": {
                        "description": "The message; with stream true, SSE events from "
                        "message_start to message_stop, each carrying JSON that names its type. "
                        "An error after the first event arrives as an `error` event.",
                        "headers": {**ANSWER_HEADERS, **REQUEST_ID},
                        "content": {
                            "application/json": {"schema": ref("Message")},
                            "text/event-stream": {"schema": typed_event_schema()},
                        },
                    }
                },
                tags=["messages"],
                security=anthropic_api,
                body={"schema": ref("MessagesRequest")},
                parameters=[*_ANTHROPIC_HEADERS, *_CONTROL_HEADERS],
                error=ANTHROPIC_ERROR,
            )
        },
        "/v1/messages/count_tokens": {
            "post": operation(
                "Count a message's input tokens: the upstream's count when a provider speaking "
                "Messages serves the model, else the gateway's estimate",
                {
                    "200": {
                        **json_body(ref("MessageTokensCount"), "The count."),
                        "headers": {
                            **TRAIL_HEADERS,
                            **REQUEST_ID,
                            "x-leap-estimate": header("true when the count is an estimate."),
                        },
                    }
                },
                tags=["messages"],
                security=anthropic_api,
                body={"schema": ref("CountTokensRequest")},
                parameters=_ANTHROPIC_HEADERS,
                error=ANTHROPIC_ERROR,
            )
        },
        "/v1/embeddings": {
            "post": operation(
                "Create embeddings",
                {
                    "200": {
                        **json_body(ref("EmbeddingResponse"), "The embeddings."),
                        "headers": ANSWER_HEADERS,
                    }
                },
                tags=["embeddings"],
                security=api,
                parameters=_CONTROL_HEADERS,
                body={"schema": ref("EmbeddingRequest")},
                error=MODEL_ERROR,
            )
        },
        "/v1/models": {
            "get": operation(
                "List every routable model and alias; with anthropic-version, one page of "
                "Anthropic's model list",
                {
                    "200": json_body(
                        {"anyOf": [ref("ModelList"), ref("AnthropicModelList")]}, "The models."
                    )
                },
                tags=["models"],
                security=anthropic_api,
                parameters=[_MODEL_SHAPE, *_ANTHROPIC_PAGE],
                error=EITHER_ERROR,
            )
        },
        "/v1/models/{model_id}": {
            "get": operation(
                "Describe one model; in Anthropic's shape with anthropic-version",
                {"200": json_body({"anyOf": [ref("Model"), ref("AnthropicModel")]}, "The model.")},
                tags=["models"],
                security=anthropic_api,
                parameters=[
                    path_parameter("model_id", "A model id or alias; may hold slashes."),
                    _MODEL_SHAPE,
                ],
                error=EITHER_ERROR,
            )
        },
        "/v1/providers": {
            "get": operation(
                "Status and metrics of every provider (admin)." + not_served,
                {"200": json_body(providers_schema(), "Every provider, and totals.")},
                tags=["admin"],
                security=admin_only,
            )
        },
        "/v1/providers/health": {
            "post": operation(
                "Run every provider's health check now (admin)." + not_served,
                {"200": json_body(list_of(ref("HealthResult")), "One result per provider.")},
                tags=["admin"],
                security=admin_only,
            )
        },
        "/v1/providers/{name}/status": {
            "put": operation(
                "Set a provider's status: active, inactive or maintenance (admin)." + not_served,
                {"200": snapshot},
                tags=["admin"],
                security=admin_only,
                parameters=[path_parameter("name", "The provider's name.")],
                body={"schema": status_change_schema()},
            )
        },
        "/health": {
            "get": operation(
                "Liveness: the process is up",
                {"200": json_body(health_schema(), "Up.")},
                tags=["health"],
                security=[],
            )
        },
        "/health/ready": {
            "get": operation(
                "Readiness: 200 when a provider can serve, else 503; open to probes, and the "
                "providers are listed only to key holders when keys are configured",
                {
                    "200": json_body(ready_schema(), "At least one provider is active."),
                    "503": json_body(ready_schema(), "No provider is active."),
                },
                tags=["health"],
                security=[],
            )
        },
        "/metrics": {
            "get": operation(
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
            "get": operation(
                "This document",
                {"200": json_body({"type": "object"}, "The OpenAPI document.")},
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
    if batches:
        paths.update(batch_paths(api))
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
    key = path_parameter("key", "A cache key, as the x-leap-cache-key header showed it.")
    key["schema"] = {"type": "string", "pattern": "^[0-9a-f]{64}$"}
    return {
        "/v1/cache": {
            "delete": operation(
                "Forget every cached answer (admin)." + not_served,
                {"200": json_body(_DELETED, "How many entries there were.")},
                tags=["admin"],
                security=security,
            )
        },
        "/v1/cache/{key}": {
            "delete": operation(
                "Forget one cached answer (admin); 400 for a malformed key." + not_served,
                {"200": json_body(_DELETED, "1 when the entry was there, else 0.")},
                tags=["admin"],
                security=security,
                parameters=[key],
            )
        },
    }


_KEY_ID = path_parameter("key_id", "A virtual key's id.")
_GROUP_BY = (
    "What the rows are summed by, comma-separated: any of day, tenant, model and provider "
    "(default: day,tenant,model; empty: one row)."
)
_DAY = {"type": "string", "format": "date", "pattern": "^[0-9]{4}-[0-9]{2}-[0-9]{2}$"}
# Names from GROUP_FIELDS between commas, each with white space (str.isspace) around it.
_SPACE = r"[\s\x1c-\x1f]*"
_GROUP = f"({'|'.join(GROUP_FIELDS)})?"
_GROUPS = f"^{_SPACE}{_GROUP}{_SPACE}(,{_SPACE}{_GROUP}{_SPACE})*$"


def _tenancy_paths(security: list[dict[str, list[str]]], not_served: str) -> dict[str, Any]:
    """The admin API of virtual keys and usage."""

    def admin(
        summary: str,
        answers: dict[str, Any],
        *,
        body: str | None = None,
        parameters: list[dict[str, Any]] | None = None,
    ) -> dict[str, Any]:
        return operation(
            f"{summary} (admin).{not_served}",
            answers,
            tags=["admin"],
            security=security,
            body=None if body is None else {"schema": ref(body)},
            # No body is read as {}.
            body_required=False,
            parameters=parameters,
        )

    key = json_body(ref("VirtualKey"), "The key.")
    revoked = json_body(ref("VirtualKey"), "The key, revoked (when first revoked).")
    created = {
        **json_body(ref("CreatedVirtualKey"), "The key, with its secret: shown this once."),
        "headers": {"cache-control": header("no-store.")},
    }
    usage = [
        query("since", "The first day, UTC (default: 30 days before until).", _DAY),
        query("until", "The last day, UTC (default: today).", _DAY),
        query("tenant", "Only this tenant's usage.", printable(1, MAX_TENANT)),
        query("group_by", _GROUP_BY, {"type": "string", "pattern": _GROUPS}),
    ]
    by_tenant = [query("tenant", "Only this tenant's keys.", {"type": "string"})]
    return {
        "/v1/keys": {
            "post": admin(
                "Make a virtual key, with its limits, budget and expiry",
                {"201": created},
                body="KeyCreateRequest",
            ),
            "get": admin(
                "List the virtual keys, oldest first",
                {"200": json_body(list_of(ref("VirtualKey")), "The keys.")},
                parameters=by_tenant,
            ),
        },
        "/v1/keys/{key_id}": {
            "get": admin("Show a virtual key", {"200": key}, parameters=[_KEY_ID]),
            "patch": admin(
                "Change a key's name, limits, budget, expiry, tags or metadata",
                {"200": key},
                body="KeyUpdateRequest",
                parameters=[_KEY_ID],
            ),
            "delete": admin(
                "Revoke a key: refused from now on, kept for the usage reports",
                {"200": revoked},
                parameters=[_KEY_ID],
            ),
        },
        "/v1/keys/{key_id}/revoke": {
            "post": admin("Revoke a key, as DELETE does", {"200": revoked}, parameters=[_KEY_ID])
        },
        "/v1/usage": {
            "get": admin(
                "Usage and cost from since to until (both included), summed by group_by",
                {"200": json_body(ref("UsageReport"), "The rows, sorted, and their total.")},
                parameters=usage,
            )
        },
    }


def _oauth_paths() -> dict[str, Any]:
    """The protected resource's metadata (RFC 9728), public as the spec asks."""
    answer = {
        **json_body(
            ref("ProtectedResourceMetadata"), "The gateway as an OAuth 2.1 protected resource."
        ),
        "headers": {"cache-control": header("public, max-age=3600.")},
    }
    resource = path_parameter("resource", "The resource's path below the gateway (mcp).")
    return {
        WELL_KNOWN: {
            "get": operation(
                "Where to get an access token for the gateway's API (RFC 9728)",
                {"200": answer},
                tags=["oauth"],
                security=[],
            )
        },
        WELL_KNOWN + "/{resource}": {
            "get": operation(
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
                api_auth=gateway.tenancy.identity.required,
                admin=gateway.access.has_admin,
                cache=gateway.cache is not None,
                oauth=gateway.config.oauth is not None,
                batches=gateway.config.batches.enabled,
                server_url=root or "/",
            )
            body = self._rendered[root] = json.dumps(document, separators=(",", ":")).encode()
        return Response(body, media_type="application/json")
