"""``GET /openapi.json``: an OpenAPI 3.1 document of the gateway's HTTP API.

The schemas come from the wire models (pydantic) and the admin dataclasses, so the document
follows the code. Two things pydantic cannot say are added here: a tagged union needs its tag
(``role``, ``type``) even though each model has a default for it, and a few rules checked in
Python validators (stop sequences, logit_bias, metadata, options that need another field).
The Responses and Messages bodies, passed through to providers that speak them, get compact
hand-made schemas of the fields the gateway reads; other fields are allowed.
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
from ..types.embeddings import EmbeddingRequest, EmbeddingResponse
from .routes import error_response

if TYPE_CHECKING:
    from ..gateway import GatewayCore

__all__ = ["OPENAPI_PATH", "OPENAPI_VERSION", "OpenAPIEndpoint", "openapi_document"]

OPENAPI_PATH = "/openapi.json"
OPENAPI_VERSION = "3.1.0"
_REF = "#/components/schemas/{model}"
_ERROR = {"$ref": "#/components/schemas/ErrorEnvelope"}
_ANTHROPIC_BODY = {"$ref": "#/components/schemas/AnthropicError"}

_MODELS: tuple[tuple[str, JsonSchemaMode, Any], ...] = (
    ("ChatCompletionRequest", "validation", ChatCompletionRequest),
    ("ChatCompletion", "serialization", ChatCompletion),
    ("ChatCompletionChunk", "serialization", ChatCompletionChunk),
    ("EmbeddingRequest", "validation", EmbeddingRequest),
    ("EmbeddingResponse", "serialization", EmbeddingResponse),
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
    return {**schemas, **_protocol_schemas()}


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
# The anthropic SDK reads a request's id from ``request-id``.
_REQUEST_ID = {"request-id": _header("The request's id (also sent as x-request-id).")}
_OPENAI_ERROR = {**_json(_ERROR, "An OpenAI-shaped error."), "headers": _ERROR_HEADERS}
_ANTHROPIC_ERROR = {
    **_json(
        _ANTHROPIC_BODY,
        "An Anthropic-shaped error, with Anthropic's status (529 when no provider has capacity).",
    ),
    "headers": {**_ERROR_HEADERS, **_REQUEST_ID},
}
_EITHER_ERROR = {
    **_json(
        {"anyOf": [_ERROR, _ANTHROPIC_BODY]},
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
        operation["requestBody"] = {"required": True, "content": {"application/json": body}}
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


def openapi_document(*, api_auth: bool, admin: bool, server_url: str = "/") -> dict[str, Any]:
    """The OpenAPI 3.1 document; ``api_auth``/``admin`` say whether keys are asked for."""
    # Without configured keys a route lets everyone in: the empty requirement says so.
    anyone: list[dict[str, list[str]]] = [] if api_auth else [{}]
    api: list[dict[str, list[str]]] = [{"apiKey": []}, *anyone]
    anthropic_api: list[dict[str, list[str]]] = [{"apiKey": []}, {"anthropicKey": []}, *anyone]
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
        "/v1/responses": {
            "post": _operation(
                "Create a response (OpenAI Responses): JSON, or server-sent events when stream "
                "is true",
                {
                    "200": {
                        "description": "The response; with stream true, SSE events from "
                        "response.created to response.completed, each carrying JSON that names "
                        "its type. An error after the first event arrives as an `error` event.",
                        "headers": _TRAIL_HEADERS,
                        "content": {
                            "application/json": {"schema": _ref("Response")},
                            "text/event-stream": {"schema": _typed_event_schema()},
                        },
                    }
                },
                tags=["responses"],
                security=api,
                body={"schema": _ref("ResponsesRequest")},
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
                {"200": _json(_ref("Response"), "The response.")},
                tags=["responses"],
                security=api,
                parameters=[_RESPONSE_ID],
            ),
            "delete": _operation(
                "Delete a stored response",
                {"200": _json(_ref("ResponseDeleted"), "Deleted.")},
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
                        "headers": {**_TRAIL_HEADERS, **_REQUEST_ID},
                        "content": {
                            "application/json": {"schema": _ref("Message")},
                            "text/event-stream": {"schema": _typed_event_schema()},
                        },
                    }
                },
                tags=["messages"],
                security=anthropic_api,
                body={"schema": _ref("MessagesRequest")},
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
                        **_json(_ref("MessageTokensCount"), "The count."),
                        "headers": {
                            **_TRAIL_HEADERS,
                            **_REQUEST_ID,
                            "x-leap-estimate": _header("true when the count is an estimate."),
                        },
                    }
                },
                tags=["messages"],
                security=anthropic_api,
                body={"schema": _ref("CountTokensRequest")},
                parameters=_ANTHROPIC_HEADERS,
                error=_ANTHROPIC_ERROR,
            )
        },
        "/v1/embeddings": {
            "post": _operation(
                "Create embeddings",
                {
                    "200": {
                        **_json(_ref("EmbeddingResponse"), "The embeddings."),
                        "headers": _TRAIL_HEADERS,
                    }
                },
                tags=["embeddings"],
                security=api,
                body={"schema": _ref("EmbeddingRequest")},
            )
        },
        "/v1/models": {
            "get": _operation(
                "List every routable model and alias; with anthropic-version, one page of "
                "Anthropic's model list",
                {
                    "200": _json(
                        {"anyOf": [_ref("ModelList"), _ref("AnthropicModelList")]}, "The models."
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
                {"200": _json({"anyOf": [_ref("Model"), _ref("AnthropicModel")]}, "The model.")},
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
            "description": "An OpenAI-compatible LLM gateway that also speaks Anthropic's "
            "Messages. Errors carry the OpenAI error body, but for the Messages operations, and "
            "the model operations when anthropic-version is sent, which answer in Anthropic's.",
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


def _typed_event_schema() -> dict[str, Any]:
    """One server-sent event of the Responses or Messages stream: named, its data a JSON object
    whose ``type`` repeats the name (``error`` for an error)."""
    typed = {"type": "object", "required": ["type"], "properties": {"type": {"type": "string"}}}
    json_data = {"type": "string", "contentMediaType": "application/json", "contentSchema": typed}
    return {
        "type": "object",
        "required": ["event", "data"],
        "properties": {"event": {"type": "string"}, "data": json_data},
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


def _object(required: list[str], **properties: Any) -> dict[str, Any]:
    """An object with these fields; others are allowed (kept, and passed through)."""
    return {
        "type": "object",
        "required": required,
        "properties": properties,
        "additionalProperties": True,
    }


_STRING = {"type": "string"}
_NAME = {"type": "string", "minLength": 1}
_TYPED = _object(["type"], type=_STRING)
_TYPED_LIST = {"type": "array", "items": _TYPED}
_NULLABLE_STRING = {"type": ["string", "null"]}


def _protocol_schemas() -> dict[str, Any]:
    """The Responses and Messages bodies, by their required fields, and Anthropic's shapes."""
    blocks = {"anyOf": [_STRING, _TYPED_LIST]}
    # Claude Code sends system messages between turns too.
    message = _object(
        ["role", "content"], role={"enum": ["user", "assistant", "system"]}, content=blocks
    )
    count = _object(
        ["model", "messages"],
        model=_NAME,
        messages={"type": "array", "minItems": 1, "items": message},
        system={"anyOf": [*blocks["anyOf"], {"type": "null"}]},
        tools={"type": ["array", "null"], "items": {"type": "object"}},
    )
    request = copy.deepcopy(count)
    request["required"].append("max_tokens")
    request["properties"] |= {
        "max_tokens": {"type": "integer", "minimum": 1},
        "stream": {"type": ["boolean", "null"]},
    }
    responses_request = _object(
        ["model"],
        model=_NAME,
        input={
            "description": "A string (one user message) or input items.",
            "anyOf": [_STRING, {"type": "array", "items": {"type": "object"}}],
        },
        instructions=_NULLABLE_STRING,
        previous_response_id=_NULLABLE_STRING,
        store={"type": ["boolean", "null"]},
        stream={"type": ["boolean", "null"]},
    )
    # Instructions alone are something to answer too.
    responses_request["anyOf"] = [{"required": ["input"]}, {"required": ["instructions"]}]
    return {
        "ResponsesRequest": responses_request,
        "Response": _object(
            ["id", "object", "created_at", "status", "model", "output"],
            id=_STRING,
            object={"const": "response"},
            created_at={"type": "number"},
            status={
                "enum": ["completed", "failed", "in_progress", "cancelled", "queued", "incomplete"]
            },
            model=_STRING,
            output=_TYPED_LIST,
            error={"type": ["object", "null"]},
            usage={"type": ["object", "null"]},
        ),
        "ResponseDeleted": _object(
            ["id", "object", "deleted"],
            id=_STRING,
            object={"const": "response.deleted"},
            deleted={"const": True},
        ),
        "MessagesRequest": request,
        "CountTokensRequest": count,
        "Message": _object(
            ["id", "type", "role", "content", "model", "stop_reason", "usage"],
            id=_STRING,
            type={"const": "message"},
            role={"const": "assistant"},
            content=_TYPED_LIST,
            model=_STRING,
            stop_reason=_NULLABLE_STRING,
            stop_sequence=_NULLABLE_STRING,
            usage=_object(
                ["input_tokens", "output_tokens"],
                input_tokens={"type": "integer"},
                output_tokens={"type": "integer"},
            ),
        ),
        "MessageTokensCount": _object(
            ["input_tokens"],
            input_tokens={"type": "integer", "minimum": 0},
            estimated={"const": True, "description": "Present when the gateway estimated."},
        ),
        "AnthropicError": _object(
            ["type", "error"],
            type={"const": "error"},
            error=_object(["type", "message"], type=_STRING, message=_STRING),
            request_id=_STRING,
        ),
        "AnthropicModel": _object(
            ["type", "id", "display_name", "created_at"],
            type={"const": "model"},
            id=_STRING,
            display_name=_STRING,
            created_at={"type": "string", "format": "date-time"},
        ),
        "AnthropicModelList": _object(
            ["data", "has_more", "first_id", "last_id"],
            data={"type": "array", "items": _ref("AnthropicModel")},
            has_more={"type": "boolean"},
            first_id=_NULLABLE_STRING,
            last_id=_NULLABLE_STRING,
        ),
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
