"""The schemas of the OpenAPI document: ``components/schemas`` and the inline body schemas.

The component schemas come from the wire models (pydantic) and the admin dataclasses, so the
document follows the code. Two things pydantic cannot say are added here: a tagged union needs
its tag (``role``, ``type``) even though each model has a default for it, and a few rules checked
in Python validators (stop sequences, logit_bias, metadata, options that need another field).
The Responses and Messages bodies, passed through to providers that speak them, get compact
hand-made schemas of the fields the gateway reads; other fields are allowed.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

from pydantic import TypeAdapter
from pydantic.json_schema import JsonSchemaMode

from ..manager import HealthResult
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

__all__ = [
    "ANTHROPIC_ERROR_BODY",
    "ERROR_BODY",
    "component_schemas",
    "event_schema",
    "health_schema",
    "list_of",
    "providers_schema",
    "ready_schema",
    "ref",
    "status_change_schema",
    "typed_event_schema",
]

_REF = "#/components/schemas/{model}"
ERROR_BODY = {"$ref": "#/components/schemas/ErrorEnvelope"}
ANTHROPIC_ERROR_BODY = {"$ref": "#/components/schemas/AnthropicError"}

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


def component_schemas() -> dict[str, Any]:
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


def ref(name: str) -> dict[str, Any]:
    """A reference to the component schema ``name``."""
    return {"$ref": f"#/components/schemas/{name}"}


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


def event_schema() -> dict[str, Any]:
    """One server-sent event (before OpenAPI 3.2's itemSchema, ``schema`` describes each event):
    its data is a chunk as JSON, an error body, or ``[DONE]``."""
    json_data = {
        "type": "string",
        "contentMediaType": "application/json",
        "contentSchema": {"anyOf": [ref("ChatCompletionChunk"), ERROR_BODY]},
    }
    return {
        "type": "object",
        "required": ["data"],
        "properties": {"event": {"type": "string"}, "id": {"type": "string"}},
        "if": {"properties": {"data": {"const": "[DONE]"}}},
        "else": {"properties": {"data": json_data}},
    }


def typed_event_schema() -> dict[str, Any]:
    """One server-sent event of the Responses or Messages stream: named, its data a JSON object
    whose ``type`` repeats the name (``error`` for an error)."""
    typed = {"type": "object", "required": ["type"], "properties": {"type": {"type": "string"}}}
    json_data = {"type": "string", "contentMediaType": "application/json", "contentSchema": typed}
    return {
        "type": "object",
        "required": ["event", "data"],
        "properties": {"event": {"type": "string"}, "data": json_data},
    }


def list_of(item: dict[str, Any]) -> dict[str, Any]:
    """An OpenAI-style list object whose ``data`` holds ``item``s."""
    return {
        "type": "object",
        "required": ["object", "data"],
        "properties": {"object": {"const": "list"}, "data": {"type": "array", "items": item}},
    }


def providers_schema() -> dict[str, Any]:
    """The body of ``GET /v1/providers``: every provider, and totals."""
    schema = list_of(ref("ProviderSnapshot"))
    schema["required"].append("stats")
    schema["properties"]["stats"] = ref("RegistryStats")
    return schema


def status_change_schema() -> dict[str, Any]:
    """The body of ``PUT /v1/providers/{name}/status``."""
    return {
        "type": "object",
        "required": ["status"],
        "properties": {
            "status": {"type": "string", "enum": ["active", "inactive", "maintenance"]},
            "reason": {"type": "string", "maxLength": 200},
        },
    }


def health_schema() -> dict[str, Any]:
    """The body of ``GET /health``."""
    return {"type": "object", "required": ["status"], "properties": {"status": {"const": "ok"}}}


def ready_schema() -> dict[str, Any]:
    """The body of ``GET /health/ready``."""
    provider = {
        "type": "object",
        "required": ["name", "status", "health", "breaker"],
        "properties": {
            "name": {"type": "string"},
            "status": ref("ProviderStatus"),
            "health": ref("Health"),
            "breaker": ref("BreakerState"),
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
            data={"type": "array", "items": ref("AnthropicModel")},
            has_more={"type": "boolean"},
            first_id=_NULLABLE_STRING,
            last_id=_NULLABLE_STRING,
        ),
    }
