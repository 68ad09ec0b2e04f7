"""GET /openapi.json: a valid OpenAPI 3.1 document whose request schema agrees with the
gateway's own validator."""

from __future__ import annotations

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
from leapasgi.config import GatewayConfig, HealthConfig, ProviderConfig, ServerConfig
from leapasgi.exceptions import InvalidRequestError
from leapasgi.types import parse_chat_request

pytestmark = pytest.mark.anyio

KEY = "sk-doc-0123456789"

OPERATIONS = {
    ("/v1/chat/completions", "post"),
    ("/v1/models", "get"),
    ("/v1/models/{model_id}", "get"),
    ("/v1/providers", "get"),
    ("/v1/providers/health", "post"),
    ("/v1/providers/{name}/status", "put"),
    ("/health", "get"),
    ("/health/ready", "get"),
    ("/metrics", "get"),
    ("/openapi.json", "get"),
}


def gateway(**server: Any) -> Gateway:
    config = GatewayConfig(
        providers=[ProviderConfig(name="mock", type="mock")],
        health=HealthConfig(interval=0),
        server=ServerConfig(**server),
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


async def test_every_reference_resolves_and_every_error_is_the_openai_body(
    client: httpx.AsyncClient,
) -> None:
    document = await document_of(client)
    schemas = document["components"]["schemas"]
    refs = {node["$ref"] for node in _objects(document) if isinstance(node.get("$ref"), str)}
    assert refs
    assert {ref.rsplit("/", 1)[1] for ref in refs} <= set(schemas)
    error = _validator(document, "ErrorEnvelope")
    error.validate({"error": {"message": "m", "type": "t", "param": None, "code": None}})
    assert not error.is_valid({"error": {"message": "no type, param or code"}})
    assert not error.is_valid({"detail": "Not Found"})
    for item in document["paths"].values():
        for operation in item.values():
            default = operation["responses"]["default"]["content"]["application/json"]
            assert default["schema"] == {"$ref": "#/components/schemas/ErrorEnvelope"}


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
    for gw, key, api in (
        (open_gateway, None, [{"apiKey": []}, {}]),
        (keyed, KEY, [{"apiKey": []}]),
    ):
        transport = httpx.ASGITransport(app=gw.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as c:
            document = await document_of(c, key=key)
        paths = document["paths"]
        for path, method in (("/v1/models", "get"), ("/metrics", "get"), ("/openapi.json", "get")):
            assert paths[path][method]["security"] == api
        assert paths["/v1/providers"]["get"]["security"] == [{"adminKey": []}]
        assert paths["/health"]["get"]["security"] == []
        schemes = document["components"]["securitySchemes"]
        assert schemes["apiKey"] == schemes["apiKey"] | {"type": "http", "scheme": "bearer"}


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
    schema = {"$ref": f"#/components/schemas/{name}", "components": document["components"]}
    return jsonschema.Draft202012Validator(schema)


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


def _objects(value: Any) -> Iterator[dict[str, Any]]:
    """Every JSON object in ``value``, at any depth."""
    if isinstance(value, dict):
        yield value
        for item in value.values():
            yield from _objects(item)
    elif isinstance(value, list):
        for item in value:
            yield from _objects(item)
