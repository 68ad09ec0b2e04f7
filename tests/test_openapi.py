"""GET /openapi.json: a valid OpenAPI 3.1 document whose request schemas agree with the
gateway's own validators, and whose answer schemas hold for what the gateway answers."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import jsonschema
import pytest
from pydantic import SecretStr
from schemathesis.specs.openapi.definitions import OPENAPI_31
from starlette.applications import Starlette
from starlette.routing import Mount

from leapasgi import Gateway
from leapasgi.asgi import openapi
from leapasgi.asgi.admin_tenants import create_key, update_key, usage_query
from leapasgi.config import (
    BatchesConfig,
    GatewayConfig,
    HealthConfig,
    OAuthConfig,
    PriceConfig,
    ProviderConfig,
    ServerConfig,
    TenantsConfig,
)
from leapasgi.exceptions import InvalidRequestError
from leapasgi.tenants.base import UsageRow
from leapasgi.tenants.keys import new_key
from leapasgi.tenants.oauth import protected_resource_metadata
from leapasgi.tenants.policy import OPEN
from leapasgi.types import parse_chat_request

pytestmark = pytest.mark.anyio

KEY = "sk-doc-0123456789"

OPERATIONS = {
    ("/v1/chat/completions", "post"),
    ("/v1/responses", "post"),
    ("/v1/responses/{response_id}", "get"),
    ("/v1/responses/{response_id}", "delete"),
    ("/v1/messages", "post"),
    ("/v1/messages/count_tokens", "post"),
    ("/v1/embeddings", "post"),
    ("/v1/models", "get"),
    ("/v1/models/{model_id}", "get"),
    ("/v1/providers", "get"),
    ("/v1/providers/health", "post"),
    ("/v1/providers/{name}/status", "put"),
    ("/health", "get"),
    ("/health/ready", "get"),
    ("/metrics", "get"),
    ("/openapi.json", "get"),
    ("/v1/keys", "post"),
    ("/v1/keys", "get"),
    ("/v1/keys/{key_id}", "get"),
    ("/v1/keys/{key_id}", "patch"),
    ("/v1/keys/{key_id}", "delete"),
    ("/v1/keys/{key_id}/revoke", "post"),
    ("/v1/usage", "get"),
}
ADMIN_OPERATIONS = {op for op in OPERATIONS if op[0].startswith(("/v1/keys", "/v1/usage"))}
WELL_KNOWN = "/.well-known/oauth-protected-resource"
OAUTH_OPERATIONS = {(WELL_KNOWN, "get"), (WELL_KNOWN + "/{resource}", "get")}
# The Messages operations answer errors in Anthropic's shape; the model operations do when the
# request has anthropic-version; every other operation answers OpenAI's error body.
ANTHROPIC_ERRORS = {("/v1/messages", "post"), ("/v1/messages/count_tokens", "post")}
EITHER_ERRORS = {("/v1/models", "get"), ("/v1/models/{model_id}", "get")}
OPENAI_ERROR = {"$ref": "#/components/schemas/ErrorEnvelope"}
ANTHROPIC_ERROR = {"$ref": "#/components/schemas/AnthropicError"}


def gateway(*, oauth: OAuthConfig | None = None, **server: Any) -> Gateway:
    config = GatewayConfig(
        providers=[ProviderConfig(name="mock", type="mock")],
        health=HealthConfig(interval=0),
        server=ServerConfig(**server),
        oauth=oauth,
    )
    return Gateway(config=config)


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=gateway().app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gw") as c:
        yield c


async def document_of(
    client: httpx.AsyncClient, path: str = "/openapi.json", *, key: str | None = None
) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    response = await client.get(path, headers=headers)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    body: dict[str, Any] = response.json()
    return body


async def test_the_document_is_valid_openapi_3_1(client: httpx.AsyncClient) -> None:
    document = await document_of(client)
    assert document["openapi"] == "3.1.0"
    jsonschema.Draft202012Validator(OPENAPI_31).validate(document)
    for schema in document["components"]["schemas"].values():
        jsonschema.Draft202012Validator.check_schema(schema)
    found = {(path, method) for path, item in document["paths"].items() for method in item}
    assert found == OPERATIONS


async def test_every_reference_resolves_and_every_error_is_its_protocols_body(
    client: httpx.AsyncClient,
) -> None:
    document = await document_of(client)
    schemas = document["components"]["schemas"]
    refs = {node["$ref"] for node in _objects(document) if isinstance(node.get("$ref"), str)}
    assert refs
    assert {ref.rsplit("/", 1)[1] for ref in refs} <= set(schemas)
    openai_body = {"error": {"message": "m", "type": "t", "param": None, "code": None}}
    anthropic_body = {"type": "error", "error": {"type": "api_error", "message": "m"}}
    error = _validator(document, "ErrorEnvelope")
    error.validate(openai_body)
    assert not error.is_valid({"error": {"message": "no type, param or code"}})
    assert not error.is_valid({"detail": "Not Found"})
    assert not error.is_valid(anthropic_body)
    anthropic = _validator(document, "AnthropicError")
    anthropic.validate(anthropic_body | {"request_id": "req_1"})
    assert not anthropic.is_valid({"type": "error", "error": {"message": "no type"}})
    assert not anthropic.is_valid(openai_body)
    for path, item in document["paths"].items():
        for method, operation in item.items():
            default = operation["responses"]["default"]["content"]["application/json"]
            if (path, method) in ANTHROPIC_ERRORS:
                expected: dict[str, Any] = ANTHROPIC_ERROR
            elif (path, method) in EITHER_ERRORS:
                expected = {"anyOf": [OPENAI_ERROR, ANTHROPIC_ERROR]}
            else:
                expected = OPENAI_ERROR
            assert default["schema"] == expected, (path, method)


async def test_the_document_is_built_once(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = 0
    build = openapi.openapi_document

    def counting(**options: Any) -> dict[str, Any]:
        nonlocal calls
        calls += 1
        return build(**options)

    monkeypatch.setattr(openapi, "openapi_document", counting)
    first = await client.get("/openapi.json")
    second = await client.get("/openapi.json")
    assert first.content == second.content
    assert calls == 1


async def test_keys_show_in_the_security_requirements() -> None:
    open_gateway = gateway()
    keyed = gateway(api_keys=[SecretStr(KEY)], admin_key=SecretStr("a-0123456789"))
    for gw, key, anyone in ((open_gateway, None, [{}]), (keyed, KEY, [])):
        transport = httpx.ASGITransport(app=gw.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as c:
            document = await document_of(c, key=key)
        paths = document["paths"]
        for path, method in (
            ("/v1/responses", "post"),
            ("/v1/embeddings", "post"),
            ("/metrics", "get"),
            ("/openapi.json", "get"),
        ):
            assert paths[path][method]["security"] == [{"apiKey": []}, *anyone]
        # Where Anthropic's SDKs call, the key may come as x-api-key too.
        for path, method in ANTHROPIC_ERRORS | EITHER_ERRORS:
            assert paths[path][method]["security"] == [
                {"apiKey": []},
                {"anthropicKey": []},
                *anyone,
            ]
        for path, method in ADMIN_OPERATIONS | {("/v1/providers", "get")}:
            assert paths[path][method]["security"] == [{"adminKey": []}], (path, method)
        assert paths["/health"]["get"]["security"] == []
        schemes = document["components"]["securitySchemes"]
        assert schemes["apiKey"] == schemes["apiKey"] | {"type": "http", "scheme": "bearer"}
        anthropic_key = {"type": "apiKey", "in": "header", "name": "x-api-key"}
        assert schemes["anthropicKey"] == schemes["anthropicKey"] | anthropic_key


async def test_with_keys_on_the_document_needs_one_too() -> None:
    keyed = gateway(api_keys=[SecretStr(KEY)])
    transport = httpx.ASGITransport(app=keyed.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gw") as c:
        refused = await c.get("/openapi.json")
        wrong = await c.get("/openapi.json", headers={"Authorization": "Bearer nope-0123456"})
    assert (refused.status_code, wrong.status_code) == (401, 401)
    assert set(refused.json()["error"]) == {"message", "type", "param", "code"}
    assert KEY not in refused.text


async def test_a_method_the_document_does_not_list_gets_405_with_allow(
    client: httpx.AsyncClient,
) -> None:
    # Found by schemathesis's unsupported_method check: the 405 had lost its Allow header.
    response = await client.delete("/v1/models")
    assert response.status_code == 405
    assert set(response.headers["allow"].replace(" ", "").split(",")) == {"GET", "HEAD"}
    assert set(response.json()["error"]) == {"message", "type", "param", "code"}


async def test_a_mounted_gateway_names_its_prefix_as_the_server() -> None:
    host = Starlette(routes=[Mount("/llm", app=gateway().app)])
    transport = httpx.ASGITransport(app=host)
    async with httpx.AsyncClient(transport=transport, base_url="http://host") as c:
        document = await document_of(c, "/llm/openapi.json")
    assert document["servers"] == [{"url": "/llm"}]


def _validator(document: dict[str, Any], name: str) -> jsonschema.Draft202012Validator:
    return _validator_of(document, {"$ref": f"#/components/schemas/{name}"})


USER = {"role": "user", "content": "hi"}
TOOL = {"type": "function", "function": {"name": "get_weather", "parameters": {}}}
ACCEPTED: list[dict[str, Any]] = [
    {"model": "m", "messages": [USER]},
    {"model": "m", "messages": [USER], "unknown_field": {"kept": True}},
    {"model": "m", "messages": [USER], "stream": True, "stream_options": {"include_usage": True}},
    {"model": "m", "messages": [USER], "logprobs": True, "top_logprobs": 3},
    {"model": "m", "messages": [USER], "tools": [TOOL], "tool_choice": "auto"},
    {"model": "m", "messages": [USER], "tool_choice": "none"},
    {"model": "m", "messages": [USER], "stop": ["a", "b", "c", "d"], "n": 2, "temperature": 2},
    {"model": "m", "messages": [USER], "logit_bias": {"50256": -100}, "metadata": {"k": "v"}},
    {
        "model": "m",
        "messages": [
            {"role": "system", "content": [{"type": "text", "text": "be brief"}]},
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:x"}}]},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
                ],
            },
            {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
        ],
    },
    {"model": "m", "messages": [USER], "response_format": {"type": "json_object"}},
]
REFUSED: list[dict[str, Any]] = [
    {"model": "m"},
    {"model": "m", "messages": []},
    {"model": "", "messages": [USER]},
    {"model": "m", "messages": [{"content": "no role"}]},
    {"model": "m", "messages": [{"role": "robot", "content": "hi"}]},
    {"model": "m", "messages": [{"role": "user", "content": [{"text": "no type"}]}]},
    {"model": "m", "messages": [{"role": "assistant", "content": None}]},
    {"model": "m", "messages": [USER], "n": 0},
    {"model": "m", "messages": [USER], "temperature": 2.5},
    {"model": "m", "messages": [USER], "stop": ["a", "b", "c", "d", "e"]},
    {"model": "m", "messages": [USER], "logit_bias": {"1": 101}},
    {"model": "m", "messages": [USER], "metadata": {str(i): "v" for i in range(17)}},
    {"model": "m", "messages": [USER], "metadata": {"k": "v" * 513}},
    {"model": "m", "messages": [USER], "stream_options": {"include_usage": True}},
    {"model": "m", "messages": [USER], "top_logprobs": 3},
    {"model": "m", "messages": [USER], "tool_choice": "auto"},
    {"model": "m", "messages": [USER], "tools": [{"type": "function", "function": {}}]},
    {"model": "m", "messages": [USER], "response_format": {"type": "xml"}},
]


def _accepted_by_the_gateway(body: dict[str, Any]) -> bool:
    try:
        parse_chat_request(body)
    except InvalidRequestError:
        return False
    return True


async def test_the_chat_request_schema_agrees_with_the_validator(
    client: httpx.AsyncClient,
) -> None:
    validator = _validator(await document_of(client), "ChatCompletionRequest")
    for body in ACCEPTED:
        assert _accepted_by_the_gateway(body), body
        assert validator.is_valid(body), (body, next(validator.iter_errors(body)).message)
    for body in REFUSED:
        assert not _accepted_by_the_gateway(body), body
        assert not validator.is_valid(body), body


MESSAGE = {"model": "mock-chat", "max_tokens": 16, "messages": [USER]}
COUNT = {"model": "mock-chat", "messages": [USER]}
ITEM = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]}
# (path, body): accepted by the gateway (200) and by the document's request schema.
PROTOCOL_ACCEPTED: list[tuple[str, dict[str, Any]]] = [
    ("/v1/responses", {"model": "mock-chat", "input": "hi"}),
    ("/v1/responses", {"model": "mock-chat", "input": [ITEM], "store": False, "x": 1}),
    ("/v1/responses", {"model": "mock-chat", "instructions": "say hi"}),
    ("/v1/messages", MESSAGE),
    ("/v1/messages", MESSAGE | {"system": [{"type": "text", "text": "brief"}], "stream": None}),
    (
        "/v1/messages",
        MESSAGE | {"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]},
    ),
    ("/v1/messages/count_tokens", COUNT),
    ("/v1/messages/count_tokens", COUNT | {"system": None, "tools": None}),
    ("/v1/messages/count_tokens", COUNT | {"max_tokens": 5, "thinking": {"type": "disabled"}}),
    ("/v1/embeddings", {"model": "mock-embed", "input": "hi"}),
    ("/v1/embeddings", {"model": "mock-embed", "input": ["a", "b"], "encoding_format": "base64"}),
    ("/v1/embeddings", {"model": "mock-embed", "input": [[1, 2], [3]], "dimensions": 8}),
]
# (path, body): refused by the document's request schema, and so by the gateway (4xx).
PROTOCOL_REFUSED: list[tuple[str, dict[str, Any]]] = [
    ("/v1/responses", {"input": "hi"}),
    ("/v1/responses", {"model": "", "input": "hi"}),
    ("/v1/responses", {"model": "mock-chat"}),
    ("/v1/responses", {"model": "mock-chat", "input": 5}),
    ("/v1/responses", {"model": "mock-chat", "input": "hi", "instructions": 5}),
    ("/v1/messages", {"model": "mock-chat", "messages": [USER]}),
    ("/v1/messages", MESSAGE | {"max_tokens": 0}),
    ("/v1/messages", MESSAGE | {"messages": []}),
    ("/v1/messages", MESSAGE | {"messages": [{"role": "robot", "content": "hi"}]}),
    ("/v1/messages", MESSAGE | {"messages": [{"role": "user", "content": [{"text": "x"}]}]}),
    ("/v1/messages/count_tokens", {"model": "mock-chat"}),
    ("/v1/messages/count_tokens", COUNT | {"system": 5}),
    ("/v1/embeddings", {"model": "mock-embed"}),
    ("/v1/embeddings", {"model": "mock-embed", "input": []}),
    ("/v1/embeddings", {"model": "mock-embed", "input": "hi", "encoding_format": "hex"}),
    ("/v1/embeddings", {"model": "mock-embed", "input": "hi", "dimensions": 0}),
]


async def test_the_protocol_request_schemas_agree_with_the_gateway(
    client: httpx.AsyncClient,
) -> None:
    document = await document_of(client)
    for path, body in PROTOCOL_ACCEPTED + PROTOCOL_REFUSED:
        accepted = (path, body) in PROTOCOL_ACCEPTED
        schema = document["paths"][path]["post"]["requestBody"]["content"]["application/json"]
        validator = _validator_of(document, schema["schema"])
        assert validator.is_valid(body) == accepted, (path, body)
        response = await client.post(path, json=body)
        assert (response.status_code == 200) == accepted, (path, body, response.text)
        _assert_answer_conforms(document, path, "post", response)


ANTHROPIC = {"anthropic-version": "2023-06-01"}
# (method, url, the document's path, headers, body): answers of each shape, errors included.
ANSWERS: list[tuple[str, str, str, dict[str, str], dict[str, Any] | None]] = [
    ("POST", "/v1/responses", "/v1/responses", {}, {"model": "x", "input": "hi", "stream": True}),
    (
        "POST",
        "/v1/responses",
        "/v1/responses",
        {},
        {"model": "mock-chat", "input": "hi", "stream": True},
    ),
    ("POST", "/v1/messages", "/v1/messages", {}, MESSAGE | {"stream": True}),
    ("POST", "/v1/messages/count_tokens", "/v1/messages/count_tokens", {}, COUNT | {"model": "x"}),
    ("GET", "/v1/responses/resp_nope", "/v1/responses/{response_id}", {}, None),
    ("DELETE", "/v1/responses/resp_nope", "/v1/responses/{response_id}", {}, None),
    ("GET", "/v1/models", "/v1/models", {}, None),
    ("GET", "/v1/models", "/v1/models", ANTHROPIC, None),
    ("GET", "/v1/models?limit=1&after_id=mock-chat", "/v1/models", ANTHROPIC, None),
    ("GET", "/v1/models?limit=0", "/v1/models", ANTHROPIC, None),
    ("GET", "/v1/models/mock-chat", "/v1/models/{model_id}", ANTHROPIC, None),
    ("GET", "/v1/models/nope", "/v1/models/{model_id}", ANTHROPIC, None),
    ("GET", "/v1/models/nope", "/v1/models/{model_id}", {}, None),
]


async def test_the_answers_are_as_documented(client: httpx.AsyncClient) -> None:
    document = await document_of(client)
    for method, url, path, headers, body in ANSWERS:
        response = await client.request(method, url, headers=headers, json=body)
        _assert_answer_conforms(document, path, method.lower(), response)
    created = await client.post("/v1/responses", json={"model": "mock-chat", "input": "hi"})
    stored = f"/v1/responses/{created.json()['id']}"
    statuses = []
    for method in ("get", "delete", "get"):
        response = await client.request(method, stored)
        _assert_answer_conforms(document, "/v1/responses/{response_id}", method, response)
        statuses.append(response.status_code)
    assert statuses == [200, 200, 404]


async def test_with_anthropic_version_the_model_routes_answer_in_anthropics_shape(
    client: httpx.AsyncClient,
) -> None:
    # The answers' anyOf lets either shape through: check each against its own schema.
    document = await document_of(client)
    for url, status, name in (
        ("/v1/models?limit=1", 200, "AnthropicModelList"),
        ("/v1/models/mock-chat", 200, "AnthropicModel"),
        ("/v1/models?before_id=x", 200, "AnthropicModelList"),
        ("/v1/models?limit=1001", 400, "AnthropicError"),
        ("/v1/models/nope", 404, "AnthropicError"),
    ):
        response = await client.get(url, headers=ANTHROPIC)
        assert response.status_code == status, url
        _validator(document, name).validate(response.json())


ADMIN = "admin-doc-0123456789"
AS_ADMIN = {"Authorization": f"Bearer {ADMIN}"}
WALL = 1_800_000_000.0
REFUSALS = (
    "model_not_allowed",
    "budget_exceeded",
    "budget_held",
    "tenant_rate_limit_exceeded",
    "tenant_concurrency_exceeded",
    "store_unavailable",
)


async def test_a_key_the_tenancy_asks_for_shows_in_the_security_requirements() -> None:
    # No static API key, yet every caller needs one: a virtual key, or the admin key.
    config = GatewayConfig(
        providers=[ProviderConfig(name="mock", type="mock")],
        health=HealthConfig(interval=0),
        server=ServerConfig(admin_key=SecretStr(ADMIN)),
        tenants=TenantsConfig(require_key=True),
    )
    transport = httpx.ASGITransport(app=Gateway(config=config).app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gw") as c:
        assert (await c.get("/openapi.json")).status_code == 401
        document = await document_of(c, key=ADMIN)
    assert document["paths"]["/v1/chat/completions"]["post"]["security"] == [{"apiKey": []}]
    assert document["security"] == [{"apiKey": []}]


async def test_with_oauth_the_protected_resource_metadata_is_documented_and_public() -> None:
    oauth = OAuthConfig(
        issuer="https://issuer.example", audience=["leapasgi"], required_scopes=["llm"]
    )
    transport = httpx.ASGITransport(app=gateway(oauth=oauth, admin_key=SecretStr(ADMIN)).app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gw") as c:
        document = await document_of(c, key=ADMIN)
        answers = [await c.get(WELL_KNOWN), await c.get(f"{WELL_KNOWN}/mcp/deep")]
    jsonschema.Draft202012Validator(OPENAPI_31).validate(document)
    found = {(path, method) for path, item in document["paths"].items() for method in item}
    assert found == OPERATIONS | OAUTH_OPERATIONS
    for path, method in OAUTH_OPERATIONS:
        assert document["paths"][path][method]["security"] == []
    for answer, path in zip(answers, [WELL_KNOWN, f"{WELL_KNOWN}/{{resource}}"], strict=True):
        assert answer.status_code == 200
        assert answer.headers["cache-control"] == "public, max-age=3600"
        _assert_answer_conforms(document, path, "get", answer)
    assert answers[1].json()["resource"] == "http://gw/mcp/deep"
    # Every field the gateway publishes is documented, and every required one is published.
    schema = document["components"]["schemas"]["ProtectedResourceMetadata"]
    published = protected_resource_metadata(oauth, "https://gw")
    assert set(schema["properties"]) == set(published)
    assert set(schema["required"]) <= set(published)


# Bodies of POST /v1/keys (PATCH takes the same but tenant): accepted by the gateway's checks
# and by the document's schema, or refused by both.
KEY_ACCEPTED: list[dict[str, Any]] = [
    {},
    {
        "tenant": "team-a",
        "name": "ci runner",
        "models": ["gpt-4o", "fast"],
        "rpm": 60,
        "tpm": 10000,
        "max_in_flight": 4,
        "budget": {"usd": 25, "period": "day", "alert_at": 0.8},
        "expires_in": 3600,
        "tags": ["ci", "eu"],
        "metadata": {"owner": "ops", "nested": {"n": [1, None]}},
    },
    {
        "tenant": None,
        "name": None,
        "models": None,
        "rpm": None,
        "tpm": None,
        "max_in_flight": None,
        "budget": None,
        "expires_at": None,
        "tags": None,
        "metadata": None,
    },
    {"name": "", "models": [], "tags": ["t"] * 16, "metadata": {}},
    {"name": "équipe ünïcode", "expires_at": WALL + 1, "budget": {"usd": 0.5, "alert_at": None}},
]
KEY_REFUSED: list[dict[str, Any]] = [
    {"tenant": ""},
    {"tenant": "t" * 129},
    {"tenant": "a\nb"},
    {"name": 5},
    {"name": "n" * 201},
    {"name": "tab\there"},
    {"models": "gpt-4o"},
    {"models": [""]},
    {"models": ["m"] * 257},
    {"models": [5]},
    {"rpm": 0},
    {"rpm": "60"},
    {"rpm": True},
    {"tpm": 1.5},
    {"max_in_flight": -1},
    {"budget": 5},
    {"budget": {"period": "day"}},
    {"budget": {"usd": 0}},
    {"budget": {"usd": 5, "period": "week"}},
    {"budget": {"usd": 5, "alert_at": 1}},
    {"budget": {"usd": 5, "extra": 1}},
    {"expires_in": 0},
    {"expires_in": "1d"},
    {"expires_in": False},
    {"expires_at": WALL + 10, "expires_in": 10},
    {"expires_at": None, "expires_in": None},
    {"tags": "ci"},
    {"tags": ["t"] * 17},
    {"tags": ["x" * 65]},
    {"tags": [""]},
    {"metadata": [1]},
    {"metadata": {f"k{i}": i for i in range(33)}},
    {"metadata": {"k" * 65: 1}},
    {"metadata": {"": 1}},
    {"secret": "lk-mine"},
    {"id": "key_0123456789abcdef"},
    {"object": "virtual_key"},
]
# Refused by the gateway, yet the schema cannot say so: a past expiry, the metadata's depth
# and size in JSON, an integer sent as a float, unprintable characters that are not controls.
KEY_REFUSED_BY_THE_GATEWAY_ONLY: list[dict[str, Any]] = [
    {"expires_at": WALL - 1},
    {"expires_in": 10**400},
    {"rpm": 60.0},
    {"metadata": {"deep": [[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]}},
    {"metadata": {"big": "x" * 4100}},
    {"name": "line\u2028separator"},
]


def _key_body_accepted(body: dict[str, Any], *, update: bool) -> bool:
    try:
        if update:
            key, _ = new_key(tenant="team-a", policy=OPEN, expires_at=None, now=WALL)
            update_key(key, body, now=WALL)
        else:
            create_key(body, now=WALL)
    except InvalidRequestError:
        return False
    return True


async def test_the_key_body_schemas_agree_with_the_gateways_checks(
    client: httpx.AsyncClient,
) -> None:
    document = await document_of(client)
    refused_to_update: list[dict[str, Any]] = [{"tenant": "team-b"}, {"tenant": None}]
    for name, update in (("KeyCreateRequest", False), ("KeyUpdateRequest", True)):
        validator = _validator(document, name)
        drop = "tenant" if update else ""
        accepted = [{k: v for k, v in body.items() if k != drop} for body in KEY_ACCEPTED]
        refused = KEY_REFUSED + (refused_to_update if update else [])
        for body in accepted:
            assert _key_body_accepted(body, update=update), (name, body)
            assert validator.is_valid(body), (name, body, next(validator.iter_errors(body)))
        for body in refused:
            assert not _key_body_accepted(body, update=update), (name, body)
            assert not validator.is_valid(body), (name, body)
        for body in KEY_REFUSED_BY_THE_GATEWAY_ONLY:
            assert not _key_body_accepted(body, update=update), (name, body)
            assert validator.is_valid(body), (name, body)


# Queries of GET /v1/usage: accepted by usage_query and by every parameter's schema, or not.
USAGE_ACCEPTED: list[dict[str, str]] = [
    {},
    {"since": "2027-01-01", "until": "2027-01-31", "tenant": "team-a"},
    {"until": "0001-01-01"},
    {"since": "2024-02-29"},
    {"group_by": ""},
    {"group_by": "model, provider"},
    {"group_by": " day ,\ttenant,"},
    {"group_by": "day,day"},
    {"group_by": "\x1cmodel\u3000"},
]
USAGE_REFUSED: list[dict[str, str]] = [
    {"since": "2027-1-1"},
    {"since": "20270101"},
    {"since": "2027-01-01T00:00:00"},
    {"until": "2027-02-30"},
    {"until": "0000-12-31"},
    {"group_by": "day,week"},
    {"group_by": "day tenant"},
    {"group_by": "Day"},
    {"tenant": ""},
    {"tenant": "x" * 129},
    {"tenant": "a\x00b"},
]


def _usage_accepted(params: dict[str, str]) -> bool:
    try:
        usage_query(
            since=params.get("since"),
            until=params.get("until"),
            tenant=params.get("tenant"),
            group_by=params.get("group_by"),
            now=WALL,
        )
    except InvalidRequestError:
        return False
    return True


async def test_the_usage_parameters_agree_with_the_gateways_checks(
    client: httpx.AsyncClient,
) -> None:
    document = await document_of(client)
    parameters = document["paths"]["/v1/usage"]["get"]["parameters"]
    schemas = {p["name"]: p["schema"] for p in parameters}
    assert set(schemas) == {"since", "until", "tenant", "group_by"}
    assert all(p["in"] == "query" and not p.get("required") for p in parameters)
    checker = jsonschema.Draft202012Validator.FORMAT_CHECKER
    validators = {
        name: jsonschema.Draft202012Validator(schema, format_checker=checker)
        for name, schema in schemas.items()
    }
    for params in USAGE_ACCEPTED + USAGE_REFUSED:
        accepted = params in USAGE_ACCEPTED
        assert _usage_accepted(params) == accepted, params
        valid = all(validators[name].is_valid(value) for name, value in params.items())
        assert valid == accepted, params
    # Days in the wrong order: only the gateway can tell.
    assert not _usage_accepted({"since": "2027-01-10", "until": "2027-01-01"})


async def test_the_admin_apis_answers_are_as_documented() -> None:
    config = GatewayConfig(
        providers=[ProviderConfig(name="mock", type="mock")],
        health=HealthConfig(interval=0),
        server=ServerConfig(admin_key=SecretStr(ADMIN)),
        prices={"mock-chat": PriceConfig(input=1000, output=2000)},
    )
    gw = Gateway(config=config)
    transport = httpx.ASGITransport(app=gw.app)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as c:
            document = await document_of(c, key=ADMIN)
            await _walk_the_admin_api(c, document)
    finally:
        await gw.aclose()


async def _walk_the_admin_api(c: httpx.AsyncClient, document: dict[str, Any]) -> None:
    schemas = document["components"]["schemas"]
    fields = KEY_ACCEPTED[1] | {"models": ["mock-chat"]}
    made = await c.post("/v1/keys", json=fields, headers=AS_ADMIN)
    assert made.status_code == 201, made.text
    assert made.headers["cache-control"] == "no-store"
    _assert_answer_conforms(document, "/v1/keys", "post", made)
    created = made.json()
    assert set(schemas["CreatedVirtualKey"]["properties"]) == set(created)
    assert set(schemas["VirtualKey"]["properties"]) == set(created) - {"secret"}
    key = f"/v1/keys/{created['id']}"
    # Requests with the key: its policy's refusal, and a cost in the documented header.
    as_key = {"Authorization": f"Bearer {created['secret']}"}
    refused = await c.post(
        "/v1/chat/completions", json={"model": "gpt-4o", "messages": [USER]}, headers=as_key
    )
    assert (refused.status_code, refused.json()["error"]["code"]) == (403, "model_not_allowed")
    _assert_answer_conforms(document, "/v1/chat/completions", "post", refused)
    chat = await c.post(
        "/v1/chat/completions", json={"model": "mock-chat", "messages": [USER]}, headers=as_key
    )
    assert chat.status_code == 200, chat.text
    chat_answer = document["paths"]["/v1/chat/completions"]["post"]["responses"]["200"]
    cost = chat_answer["headers"]["x-leap-cost-usd"]["schema"]
    assert float(chat.headers["x-leap-cost-usd"]) > 0
    _validator_of(document, cost).validate(float(chat.headers["x-leap-cost-usd"]))
    for path in ("/v1/chat/completions", "/v1/responses", "/v1/embeddings"):
        refusals = document["paths"][path]["post"]["responses"]["default"]["description"]
        assert all(code in refusals for code in REFUSALS), path
    calls: list[tuple[str, str, str, dict[str, Any] | None, int]] = [
        ("GET", "/v1/keys", "/v1/keys", None, 200),
        ("GET", "/v1/keys?tenant=team-a", "/v1/keys", None, 200),
        ("GET", key, "/v1/keys/{key_id}", None, 200),
        ("PATCH", key, "/v1/keys/{key_id}", {"rpm": None, "name": "renamed"}, 200),
        ("PATCH", key, "/v1/keys/{key_id}", {"tenant": "team-b"}, 400),
        ("DELETE", key, "/v1/keys/{key_id}", None, 200),
        ("POST", f"{key}/revoke", "/v1/keys/{key_id}/revoke", None, 200),
        ("GET", "/v1/keys/key_0123456789abcdef", "/v1/keys/{key_id}", None, 404),
        ("POST", "/v1/keys", "/v1/keys", {"rpm": 0}, 400),
        ("GET", "/v1/usage", "/v1/usage", None, 200),
        ("GET", "/v1/usage?group_by=&tenant=team-a", "/v1/usage", None, 200),
        ("GET", "/v1/usage?since=yesterday", "/v1/usage", None, 400),
    ]
    answers = {}
    for method, url, path, body, status in calls:
        response = await c.request(method, url, json=body, headers=AS_ADMIN)
        assert response.status_code == status, (method, url, response.text)
        _assert_answer_conforms(document, path, method.lower(), response)
        answers[method, url] = response.json()
    assert answers["GET", "/v1/keys"]["data"][0]["id"] == created["id"]
    report = answers["GET", "/v1/usage"]
    assert set(schemas["UsageReport"]["properties"]) == set(report)
    # The refused request is counted too, as an error.
    row = next(row for row in report["data"] if row["model"] == "mock-chat")
    assert set(schemas["UsageRow"]["required"]) == set(row) == set(UsageRow.__dataclass_fields__)
    assert set(schemas["UsageTotals"]["required"]) == set(report["total"])
    assert row["cost_usd"] == pytest.approx(float(chat.headers["x-leap-cost-usd"]))


def _assert_answer_conforms(
    document: dict[str, Any], path: str, method: str, response: httpx.Response
) -> None:
    """The answer's status, media type and body (each event of a stream) are documented."""
    responses = document["paths"][path][method]["responses"]
    documented = responses.get(str(response.status_code), responses["default"])
    media = response.headers["content-type"].split(";")[0]
    schema = documented["content"][media]["schema"]
    validator = _validator_of(document, schema)
    where = (method, path, response.status_code)
    if media != "text/event-stream":
        body = response.json()
        assert validator.is_valid(body), (*where, next(validator.iter_errors(body)).message)
        return
    data = _validator_of(document, schema["properties"]["data"]["contentSchema"])
    events = _events(response.text)
    assert events, where
    for event in events:
        assert validator.is_valid(event), (*where, event)
        assert data.is_valid(json.loads(event["data"])), (*where, event)


def _events(text: str) -> list[dict[str, str]]:
    """The events of an SSE body, as field name to value; comments left out."""
    events = []
    for block in text.split("\n\n"):
        lines = [line for line in block.splitlines() if not line.startswith(":")]
        fields = dict(line.split(": ", 1) for line in lines)
        if fields:
            events.append(fields)
    return events


def _validator_of(
    document: dict[str, Any], schema: dict[str, Any]
) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator({**schema, "components": document["components"]})


def _objects(value: Any) -> Iterator[dict[str, Any]]:
    """Every JSON object in ``value``, at any depth."""
    if isinstance(value, dict):
        yield value
        for item in value.values():
            yield from _objects(item)
    elif isinstance(value, list):
        for item in value:
            yield from _objects(item)


BATCH_OPERATIONS = {
    ("/v1/files", "post"),
    ("/v1/files", "get"),
    ("/v1/files/{file_id}", "get"),
    ("/v1/files/{file_id}", "delete"),
    ("/v1/files/{file_id}/content", "get"),
    ("/v1/batches", "post"),
    ("/v1/batches", "get"),
    ("/v1/batches/{batch_id}", "get"),
    ("/v1/batches/{batch_id}/cancel", "post"),
}


async def test_with_batches_on_the_files_and_batch_operations_are_listed() -> None:
    config = GatewayConfig(
        providers=[ProviderConfig(name="mock", type="mock")],
        health=HealthConfig(interval=0),
        batches=BatchesConfig(enabled=True),
    )
    async with Gateway(config=config) as gw:
        transport = httpx.ASGITransport(app=gw.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as c:
            document = await document_of(c)
            created = await c.post(
                "/v1/files",
                files={
                    "file": (
                        "a.jsonl",
                        b'{"custom_id":"a","method":"POST",'
                        b'"url":"/v1/embeddings","body":{"model":"mock-embed","input":"x"}}',
                    )
                },
                data={"purpose": "batch"},
            )
            listed = await c.get("/v1/files")
    jsonschema.Draft202012Validator(OPENAPI_31).validate(document)
    found = {(path, method) for path, item in document["paths"].items() for method in item}
    assert found == OPERATIONS | BATCH_OPERATIONS
    paths = document["paths"]
    answer = paths["/v1/files"]["post"]["responses"]["200"]["content"]["application/json"]
    jsonschema.Draft202012Validator(answer["schema"]).validate(created.json())
    page = paths["/v1/files"]["get"]["responses"]["200"]["content"]["application/json"]
    jsonschema.Draft202012Validator(page["schema"]).validate(listed.json())
    create = paths["/v1/batches"]["post"]["requestBody"]["content"]["application/json"]
    jsonschema.Draft202012Validator(create["schema"]).validate(
        {"input_file_id": "file-1", "endpoint": "/v1/embeddings", "completion_window": "24h"}
    )
