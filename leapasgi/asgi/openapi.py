"""``GET /openapi.json``: an OpenAPI 3.1 document of the gateway's HTTP API.

The schemas come from the wire models (pydantic) and the admin dataclasses, so the document
follows the code. Two things pydantic cannot say are added here: a tagged union needs its tag
(``role``, ``type``) even though each model has a default for it, and a few rules checked in
Python validators (stop sequences, logit_bias, metadata, options that need another field).
The document is built on the first request and kept.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from pydantic import TypeAdapter
from pydantic.json_schema import JsonSchemaMode
from starlette.requests import Request
from starlette.responses import Response

from .. import __version__
from ..manager import HealthResult
from ..prometheus import CONTENT_TYPE
from ..registry import ProviderSnapshot, RegistryStats
from ..types import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ErrorEnvelope,
    Model,
    ModelList,
)
from .routes import error_response

if TYPE_CHECKING:
    from ..gateway import GatewayCore

__all__ = ["OPENAPI_PATH", "OPENAPI_VERSION", "OpenAPIEndpoint", "openapi_document"]

OPENAPI_PATH = "/openapi.json"
OPENAPI_VERSION = "3.1.0"
_REF = "#/components/schemas/{model}"
_ERROR = {"$ref": "#/components/schemas/ErrorEnvelope"}

_MODELS: tuple[tuple[str, JsonSchemaMode, Any], ...] = (
    ("ChatCompletionRequest", "validation", ChatCompletionRequest),
    ("ChatCompletion", "serialization", ChatCompletion),
    ("ChatCompletionChunk", "serialization", ChatCompletionChunk),
    ("Model", "serialization", Model),
    ("ModelList", "serialization", ModelList),
    ("ErrorEnvelope", "serialization", ErrorEnvelope),
    ("ProviderSnapshot", "serialization", ProviderSnapshot),
    ("RegistryStats", "serialization", RegistryStats),
    ("HealthResult", "serialization", HealthResult),
)

_NON_EMPTY = {"type": "array", "minItems": 1}
# Rules the request models check in Python validators. Keywords for arrays and objects do not
# apply to other types, so each rule can sit beside the field's own schema.
_REQUEST_RULES: list[dict[str, Any]] = [
    {
        "properties": {
            "stop": {"maxItems": 4},
            "logit_bias": {"additionalProperties": {"minimum": -100, "maximum": 100}},
            "metadata": {
                "maxProperties": 16,
                "propertyNames": {"maxLength": 64},
                "additionalProperties": {"maxLength": 512},
            },
        }
    },
    {
        "if": {
            "required": ["stream_options"],
            "properties": {"stream_options": {"type": "object"}},
        },
        "then": {"required": ["stream"], "properties": {"stream": {"const": True}}},
    },
    {
        "if": {"required": ["top_logprobs"], "properties": {"top_logprobs": {"type": "integer"}}},
        "then": {"required": ["logprobs"], "properties": {"logprobs": {"const": True}}},
    },
    {
        "if": {
            "required": ["tool_choice"],
            "properties": {"tool_choice": {"not": {"enum": [None, "none"]}}},
        },
        "then": {"required": ["tools"], "properties": {"tools": _NON_EMPTY}},
    },
]
# An assistant message needs content unless it carries tool calls, a function call or audio.
_ASSISTANT_RULE: dict[str, Any] = {
    "anyOf": [
        {"required": ["content"], "properties": {"content": {"not": {"type": "null"}}}},
        {"required": ["tool_calls"], "properties": {"tool_calls": _NON_EMPTY}},
        {"required": ["function_call"], "properties": {"function_call": {"type": "object"}}},
        {"required": ["audio"], "properties": {"audio": {"type": "object", "minProperties": 1}}},
    ]
}


def _component_schemas() -> dict[str, Any]:
    """Every schema the document refers to, by name."""
    inputs = [(name, mode, TypeAdapter(kind)) for name, mode, kind in _MODELS]
    _, found = TypeAdapter.json_schemas(inputs, ref_template=_REF)
    schemas: dict[str, Any] = found.get("$defs", {})
    for schema in _walk(schemas):
        _require_tags(schema, schemas)
    request = schemas["ChatCompletionRequest"]
    request["allOf"] = [*request.get("allOf", []), *copy.deepcopy(_REQUEST_RULES)]
    for name, schema in schemas.items():
        if name.startswith("AssistantMessage"):
            schema["allOf"] = [*schema.get("allOf", []), copy.deepcopy(_ASSISTANT_RULE)]
    # The gateway always sends all four keys of an error, null where they do not apply.
    schemas["ErrorDetail"]["required"] = ["message", "type", "param", "code"]
    return schemas


def _walk(value: Any) -> Iterator[dict[str, Any]]:
    if isinstance(value, dict):
        yield value
        for item in value.values():
            yield from _walk(item)
    elif isinstance(value, list):
        for item in value:
            yield from _walk(item)


def _require_tags(schema: dict[str, Any], schemas: dict[str, Any]) -> None:
    """In a union of models told apart by a constant field, that field is required."""
    members = schema.get("oneOf")
    if not isinstance(members, list):
        return
    refs = [m for m in members if isinstance(m, dict) and "$ref" in m]
    if len(refs) < 2:
        return
    consts = [_consts(schemas[m["$ref"].rsplit("/", 1)[1]]) for m in refs]
    shared = set.intersection(*(set(c) for c in consts))
    if len(shared) != 1:
        return
    tag = shared.pop()
    for member in refs:
        member["required"] = [tag]
    if len(refs) == len(members):
        mapping = {c[tag]: m["$ref"] for c, m in zip(consts, refs, strict=True)}
        schema["discriminator"] = {"propertyName": tag, "mapping": mapping}


def _consts(schema: dict[str, Any]) -> dict[str, Any]:
    return {
        name: prop["const"]
        for name, prop in schema.get("properties", {}).items()
        if isinstance(prop, dict) and "const" in prop
    }


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def _header(description: str, kind: str = "string") -> dict[str, Any]:
    return {"description": description, "schema": {"type": kind}}


_TRAIL_HEADERS = {
    "x-leap-attempts": _header("Upstream attempts this request took.", "integer"),
    "x-leap-provider": _header("The provider that served the request."),
    "x-leap-overhead-ms": _header("Time spent in the gateway itself, in milliseconds."),
    "x-request-id": _header("The upstream's request id, when it sent one."),
}
_ERROR_HEADERS = {
    "retry-after": _header("Seconds to wait before retrying (429 and 503).", "integer"),
    "x-should-retry": _header("false once the gateway has already retried and failed over."),
    "x-leap-attempts": _header("Upstream attempts this request took.", "integer"),
}


def _operation(
    summary: str,
    responses: dict[str, Any],
    *,
    tags: list[str],
    security: list[dict[str, list[str]]] | None = None,
    body: dict[str, Any] | None = None,
    parameters: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    operation: dict[str, Any] = {"summary": summary, "tags": tags}
    if security is not None:
        operation["security"] = security
    if parameters:
        operation["parameters"] = parameters
    if body is not None:
        operation["requestBody"] = {"required": True, "content": {"application/json": body}}
    error = {**_json(_ERROR, "An OpenAI-shaped error."), "headers": _ERROR_HEADERS}
    operation["responses"] = {**responses, "default": error}
    return operation


def _path_parameter(name: str, description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "description": description,
        "schema": {"type": "string", "minLength": 1},
    }


def openapi_document(*, api_auth: bool, admin: bool, server_url: str = "/") -> dict[str, Any]:
    """The OpenAPI 3.1 document; ``api_auth``/``admin`` say whether keys are asked for."""
    # Without configured keys a route lets everyone in: the empty requirement says so.
    api: list[dict[str, list[str]]] = [{"apiKey": []}] if api_auth else [{"apiKey": []}, {}]
    admin_only: list[dict[str, list[str]]] = [{"adminKey": []}]
    not_served = "" if admin else " Not served (404) while no admin key is configured."
    snapshot = _json(_ref("ProviderSnapshot"), "The provider, after the change.")
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
                        "headers": _TRAIL_HEADERS,
                        "content": {
                            "application/json": {"schema": _ref("ChatCompletion")},
                            "text/event-stream": {"schema": _event_schema()},
                        },
                    }
                },
                tags=["chat"],
                security=api,
                body={"schema": _ref("ChatCompletionRequest")},
            )
        },
        "/v1/models": {
            "get": _operation(
                "List every routable model and alias",
                {"200": _json(_ref("ModelList"), "The models.")},
                tags=["models"],
                security=api,
            )
        },
        "/v1/models/{model_id}": {
            "get": _operation(
                "Describe one model",
                {"200": _json(_ref("Model"), "The model.")},
                tags=["models"],
                security=api,
                parameters=[_path_parameter("model_id", "A model id or alias; may hold slashes.")],
            )
        },
        "/v1/providers": {
            "get": _operation(
                "Status and metrics of every provider (admin)." + not_served,
                {"200": _json(_providers_schema(), "Every provider, and totals.")},
                tags=["admin"],
                security=admin_only,
            )
        },
        "/v1/providers/health": {
            "post": _operation(
                "Run every provider's health check now (admin)." + not_served,
                {"200": _json(_list_of(_ref("HealthResult")), "One result per provider.")},
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
                body={"schema": _status_change_schema()},
            )
        },
        "/health": {
            "get": _operation(
                "Liveness: the process is up",
                {"200": _json(_health_schema(), "Up.")},
                tags=["health"],
                security=[],
            )
        },
        "/health/ready": {
            "get": _operation(
                "Readiness: 200 when a provider can serve, else 503; open to probes, and the "
                "providers are listed only to key holders when keys are configured",
                {
                    "200": _json(_ready_schema(), "At least one provider is active."),
                    "503": _json(_ready_schema(), "No provider is active."),
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
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "leapasgi",
            "version": __version__,
            "description": "An OpenAI-compatible LLM gateway. Errors always carry the OpenAI "
            "error body.",
        },
        "servers": [{"url": server_url}],
        "security": api,
        "paths": paths,
        "components": {
            "schemas": _component_schemas(),
            "securitySchemes": {
                "apiKey": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "One of the gateway's API keys (server.api_keys).",
                },
                "adminKey": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "The gateway's admin key (server.admin_key).",
                },
            },
        },
    }


def _event_schema() -> dict[str, Any]:
    """One server-sent event (before OpenAPI 3.2's itemSchema, ``schema`` describes each event):
    its data is a chunk as JSON, an error body, or ``[DONE]``."""
    json_data = {
        "type": "string",
        "contentMediaType": "application/json",
        "contentSchema": {"anyOf": [_ref("ChatCompletionChunk"), _ERROR]},
    }
    return {
        "type": "object",
        "required": ["data"],
        "properties": {"event": {"type": "string"}, "id": {"type": "string"}},
        "if": {"properties": {"data": {"const": "[DONE]"}}},
        "else": {"properties": {"data": json_data}},
    }


def _list_of(item: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["object", "data"],
        "properties": {"object": {"const": "list"}, "data": {"type": "array", "items": item}},
    }


def _providers_schema() -> dict[str, Any]:
    schema = _list_of(_ref("ProviderSnapshot"))
    schema["required"].append("stats")
    schema["properties"]["stats"] = _ref("RegistryStats")
    return schema


def _status_change_schema() -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["status"],
        "properties": {
            "status": {"type": "string", "enum": ["active", "inactive", "maintenance"]},
            "reason": {"type": "string", "maxLength": 200},
        },
    }


def _health_schema() -> dict[str, Any]:
    return {"type": "object", "required": ["status"], "properties": {"status": {"const": "ok"}}}


def _ready_schema() -> dict[str, Any]:
    provider = {
        "type": "object",
        "required": ["name", "status", "health", "breaker"],
        "properties": {
            "name": {"type": "string"},
            "status": _ref("ProviderStatus"),
            "health": _ref("Health"),
            "breaker": _ref("BreakerState"),
        },
    }
    return {
        "type": "object",
        "required": ["status"],
        "properties": {
            "status": {"enum": ["ready", "unavailable"]},
            "providers": {"type": "array", "items": provider},
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
        refused = self._gateway.access.refusal(request.scope)
        if refused is not None:
            return error_response(refused)
        root: str = request.scope.get("root_path", "")
        body = self._rendered.get(root)
        if body is None:
            gateway = self._gateway
            document = openapi_document(
                api_auth=gateway.access.keys_required,
                admin=gateway.access.has_admin,
                server_url=root or "/",
            )
            body = self._rendered[root] = json.dumps(document, separators=(",", ":")).encode()
        return Response(body, media_type="application/json")
