"""The schemas of the OpenAPI document: ``components/schemas`` and the inline body schemas.

The component schemas come from the wire models (pydantic) and the admin dataclasses, so the
document follows the code. Two things pydantic cannot say are added here: a tagged union needs
its tag (``role``, ``type``) even though each model has a default for it, and a few rules checked
in Python validators (stop sequences, logit_bias, metadata, options that need another field).
The Responses and Messages bodies, passed through to providers that speak them, get compact
hand-made schemas of the fields the gateway reads; other fields are allowed. The admin API's
key bodies take their limits from ``PolicyConfig`` and their sizes from ``admin_tenants``.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

from pydantic import TypeAdapter
from pydantic.json_schema import JsonSchemaMode

from ..config import PolicyConfig
from ..manager import HealthResult
from ..registry import ProviderSnapshot, RegistryStats
from ..tenants.base import UsageRow
from ..tenants.usage import GROUP_FIELDS
from ..types import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ErrorEnvelope,
    Model,
    ModelList,
)
from ..types.embeddings import EmbeddingRequest, EmbeddingResponse
from .admin_tenants import (
    MAX_METADATA,
    MAX_METADATA_BYTES,
    MAX_METADATA_DEPTH,
    MAX_METADATA_KEY,
    MAX_MODEL_NAME,
    MAX_MODELS,
    MAX_NAME,
    MAX_TAG,
    MAX_TAGS,
    MAX_TENANT,
)

__all__ = [
    "ANTHROPIC_ERROR_BODY",
    "ERROR_BODY",
    "component_schemas",
    "event_schema",
    "health_schema",
    "list_of",
    "printable",
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
    ("UsageRow", "serialization", UsageRow),
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
    return {**schemas, **_protocol_schemas(), **_tenancy_schemas(schemas["UsageRow"])}


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


# Control characters, which a key's text fields refuse; the gateway refuses the other
# unprintable characters too (str.isprintable), which no portable pattern can list.
_PRINTABLE = r"^[^\x00-\x1f\x7f-\x9f]*$"
_NULLABLE_LIMIT = {"type": ["integer", "null"], "minimum": 1}
_LIMITS = {
    "rpm": "Requests per minute (null: no limit).",
    "tpm": "Tokens per minute, prompt and completion (null: no limit).",
    "max_in_flight": "Requests at once (null: no limit).",
    "budget": "At most usd per period (null: no budget).",
    "hedge": "Whether its requests may be hedged (false: never sent twice).",
    "priority": "Its requests' place in a provider's queue, higher first.",
    "max_priority": "The highest priority a request may ask for with x-leap-priority "
    "(null: its own).",
}


def printable(min_length: int, max_length: int, description: str | None = None) -> dict[str, Any]:
    """A string of ``min_length`` to ``max_length`` printable characters."""
    schema: dict[str, Any] = {
        "type": "string",
        "minLength": min_length,
        "maxLength": max_length,
        "pattern": _PRINTABLE,
    }
    if description is not None:
        schema["description"] = description
    return schema


def _or_null(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {**schema, "type": [schema["type"], "null"], "description": description}


def _policy_fields() -> tuple[dict[str, Any], dict[str, Any]]:
    """The limits and budget a key's body sets, as ``PolicyConfig`` checks them (the budget's
    schema named Budget), and the Budget schema."""
    policy = PolicyConfig.model_json_schema(ref_template=_REF)
    budget = policy["$defs"]["BudgetConfig"]
    for node in _walk(policy):
        if node.get("$ref") == _REF.format(model="BudgetConfig"):
            node["$ref"] = ref("Budget")["$ref"]
    for node in _walk([policy["properties"], budget]):
        node.pop("title", None)
    fields = {}
    for name, description in _LIMITS.items():
        field = policy["properties"][name]
        field.pop("default", None)
        fields[name] = {**field, "description": description}
    return fields, budget


def _key_update_schema(limits: dict[str, Any]) -> dict[str, Any]:
    """The body of ``PATCH /v1/keys/{key_id}``: what it sends changes, null clears."""
    metadata = (
        f"Free JSON kept with the key: at most {MAX_METADATA} entries, "
        f"{MAX_METADATA_DEPTH} levels deep and {MAX_METADATA_BYTES} bytes (null: none)."
    )
    return {
        "type": "object",
        "description": "The fields to change; those not sent stay as they are, and null "
        "clears a limit, the budget, the expiry, the tags or the metadata.",
        "properties": {
            "name": _or_null(printable(0, MAX_NAME), "A label (null: none)."),
            "models": {
                "type": ["array", "null"],
                "description": "The model and alias names the key may use (null: every one).",
                "maxItems": MAX_MODELS,
                "items": printable(1, MAX_MODEL_NAME),
            },
            **limits,
            "expires_at": {
                "type": ["number", "null"],
                "description": "When the key expires, in seconds since the epoch; in the "
                "future (null: never).",
            },
            "expires_in": {
                "type": ["number", "null"],
                "exclusiveMinimum": 0,
                "description": "Seconds from now until the key expires (null: never).",
            },
            "tags": {
                "type": ["array", "null"],
                "description": "Labels, repeats dropped (null: none).",
                "maxItems": MAX_TAGS,
                "items": printable(1, MAX_TAG),
            },
            "metadata": {
                "type": ["object", "null"],
                "description": metadata,
                "maxProperties": MAX_METADATA,
                "propertyNames": printable(1, MAX_METADATA_KEY),
            },
        },
        "additionalProperties": False,
        "not": {
            "required": ["expires_at", "expires_in"],
            "description": "expires_at or expires_in, not both.",
        },
    }


def _virtual_key_schema() -> dict[str, Any]:
    """A key as the admin API shows it (``VirtualKey.public``): never its secret."""
    wall = {"type": ["number", "null"], "description": "Seconds since the epoch."}
    properties: dict[str, Any] = {
        "id": {"type": "string", "description": "key_ and 16 hex digits."},
        "object": {"const": "virtual_key"},
        "hint": {"type": "string", "description": "The secret's first characters."},
        "tenant": _STRING,
        "name": _STRING,
        "models": {"type": ["array", "null"], "items": _STRING},
        "rpm": _NULLABLE_LIMIT,
        "tpm": _NULLABLE_LIMIT,
        "max_in_flight": _NULLABLE_LIMIT,
        "budget": {"anyOf": [ref("Budget"), {"type": "null"}]},
        "hedge": {"type": "boolean"},
        "priority": {"type": "integer"},
        "max_priority": {"type": ["integer", "null"]},
        "created_at": {"type": "number", "description": "Seconds since the epoch."},
        "expires_at": wall,
        "revoked_at": wall,
        "tags": {"type": "array", "items": _STRING},
        "metadata": {"type": "object"},
    }
    return {"type": "object", "required": list(properties), "properties": properties}


def _usage_schemas(row: dict[str, Any]) -> dict[str, Any]:
    """A usage report and its total (a row without the names it is grouped by)."""
    row["required"] = list(row["properties"])
    counts = {k: v for k, v in row["properties"].items() if k not in GROUP_FIELDS}
    day = {"type": "string", "format": "date"}
    report = {
        "type": "object",
        "required": ["object", "since", "until", "tenant", "group_by", "data", "total"],
        "properties": {
            "object": {"const": "list"},
            "since": day,
            "until": day,
            "tenant": _NULLABLE_STRING,
            "group_by": {"type": "array", "items": {"enum": list(GROUP_FIELDS)}},
            "data": {"type": "array", "items": ref("UsageRow")},
            "total": ref("UsageTotals"),
        },
    }
    totals = {"type": "object", "required": list(counts), "properties": counts}
    return {"UsageReport": report, "UsageTotals": totals}


def _tenancy_schemas(usage_row: dict[str, Any]) -> dict[str, Any]:
    """The admin API's keys and usage, and the RFC 9728 metadata of the protected resource."""
    limits, budget = _policy_fields()
    update = _key_update_schema(limits)
    create = copy.deepcopy(update)
    create["description"] = "The new key's fields; all may be left out."
    create["properties"] = {
        "tenant": _or_null(
            printable(1, MAX_TENANT),
            "Whose the key is in usage reports (null: the key's own id); fixed once made.",
        ),
        **create["properties"],
    }
    key = _virtual_key_schema()
    created = copy.deepcopy(key)
    created["required"].append("secret")
    created["properties"]["secret"] = {
        "type": "string",
        "pattern": "^lk-",
        "description": "The key itself: in this answer only, never shown again.",
    }
    metadata = _object(
        ["resource", "authorization_servers", "bearer_methods_supported", "resource_name"],
        resource=_STRING,
        authorization_servers={"type": "array", "minItems": 1, "items": _STRING},
        bearer_methods_supported={"type": "array", "items": {"const": "header"}},
        resource_name=_STRING,
        scopes_supported={"type": "array", "items": _STRING},
    )
    return {
        "Budget": budget,
        "KeyCreateRequest": create,
        "KeyUpdateRequest": update,
        "VirtualKey": key,
        "CreatedVirtualKey": created,
        **_usage_schemas(usage_row),
        "ProtectedResourceMetadata": metadata,
    }
