"""The parts the OpenAPI document's operations are made of: JSON answers, headers, parameters,
and the error responses (OpenAI's body, Anthropic's, either) with the headers errors carry.

``openapi`` lays out the paths from these; the schemas they name are in ``_openapi_schemas``.
"""

from __future__ import annotations

from typing import Any

from ._openapi_schemas import ANTHROPIC_ERROR_BODY, ERROR_BODY

__all__ = [
    "ANSWER_HEADERS",
    "ANTHROPIC_ERROR",
    "CACHE_HEADERS",
    "EITHER_ERROR",
    "ERROR_HEADERS",
    "MODEL_ERROR",
    "OPENAI_ERROR",
    "REQUEST_ID",
    "TRAIL_HEADERS",
    "header",
    "json_body",
    "operation",
    "optional",
    "path_parameter",
    "query",
]


def json_body(schema: dict[str, Any], description: str) -> dict[str, Any]:
    """A response (or answer) whose JSON body is ``schema``."""
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def header(description: str, kind: str = "string") -> dict[str, Any]:
    """A response header of type ``kind``."""
    return {"description": description, "schema": {"type": kind}}


TRAIL_HEADERS = {
    "x-leap-attempts": header("Upstream attempts this request took.", "integer"),
    "x-leap-provider": header("The provider that served the request."),
    "x-leap-overhead-ms": header("Time spent in the gateway itself, in milliseconds."),
    "x-request-id": header("The upstream's request id, when it sent one."),
    "x-leap-cost-usd": {
        "description": "The request's cost in USD, from the upstream's usage and the model's "
        "price; on answers that are not streamed, when the model has a price.",
        "schema": {"type": "number", "minimum": 0},
    },
}
ERROR_HEADERS = {
    "retry-after": header("Seconds to wait before retrying (429 and 503).", "integer"),
    "x-should-retry": header("false once the gateway has already retried and failed over."),
    "x-leap-attempts": header("Upstream attempts this request took.", "integer"),
    "www-authenticate": header("On a 401: the challenge; with [oauth], RFC 9728's."),
}
# On the model routes while the response cache is on.
CACHE_HEADERS = {
    "x-leap-cache": header("With the response cache on: hit, miss or bypass."),
    "x-leap-cache-key": header(
        "The answer's cache key (hit or miss): DELETE /v1/cache/{key} forgets it."
    ),
    "age": header("On a hit: seconds since the answer was stored.", "integer"),
}
ANSWER_HEADERS = {**TRAIL_HEADERS, **CACHE_HEADERS}
# The anthropic SDK reads a request's id from ``request-id``.
REQUEST_ID = {"request-id": header("The request's id (also sent as x-request-id).")}
OPENAI_ERROR = {**json_body(ERROR_BODY, "An OpenAI-shaped error."), "headers": ERROR_HEADERS}
# What a key's policy answers on the model operations, besides the upstreams' errors.
MODEL_ERROR = {
    **OPENAI_ERROR,
    "description": "An OpenAI-shaped error. A key's policy may refuse the request: 403 "
    "model_not_allowed; 429 budget_exceeded, budget_held, tenant_rate_limit_exceeded or "
    "tenant_concurrency_exceeded (retry-after says when to try again; none once a total "
    "budget is spent); 503 store_unavailable when the key store cannot be reached.",
}
ANTHROPIC_ERROR = {
    **json_body(
        ANTHROPIC_ERROR_BODY,
        "An Anthropic-shaped error, with Anthropic's status (529 when no provider has capacity). "
        "A key's policy may refuse the request: permission_error (403) for a model it may not "
        "use, rate_limit_error (429) for its rate, concurrency and budget.",
    ),
    "headers": {**ERROR_HEADERS, **REQUEST_ID},
}
EITHER_ERROR = {
    **json_body(
        {"anyOf": [ERROR_BODY, ANTHROPIC_ERROR_BODY]},
        "An OpenAI-shaped error; Anthropic's shape when anthropic-version is sent.",
    ),
    "headers": ERROR_HEADERS,
}


def operation(
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
    built: dict[str, Any] = {"summary": summary, "tags": tags}
    if description is not None:
        built["description"] = description
    if security is not None:
        built["security"] = security
    if parameters:
        built["parameters"] = parameters
    if body is not None:
        content = {"application/json": body}
        built["requestBody"] = {"required": body_required, "content": content}
    built["responses"] = {**responses, "default": error or OPENAI_ERROR}
    return built


def path_parameter(name: str, description: str) -> dict[str, Any]:
    """A path parameter: any string that is not empty."""
    return {
        "name": name,
        "in": "path",
        "required": True,
        "description": description,
        "schema": {"type": "string", "minLength": 1},
    }


def optional(where: str, name: str, description: str) -> dict[str, Any]:
    """An optional string parameter ``where`` (header, query) it is."""
    return {"name": name, "in": where, "description": description, "schema": {"type": "string"}}


def query(name: str, description: str, schema: dict[str, Any]) -> dict[str, Any]:
    """An optional query parameter of ``schema``."""
    return {"name": name, "in": "query", "description": description, "schema": schema}
