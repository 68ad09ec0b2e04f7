import base64
import json
import math
from array import array
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
import openai
import openai.types as sdk_types
import pytest

from leapasgi.exceptions import InvalidRequestError
from leapasgi.types.embeddings import (
    MAX_EMBEDDING_INPUTS,
    Embedding,
    EmbeddingRequest,
    EmbeddingResponse,
    EmbeddingUsage,
    decode_base64_embedding,
    deterministic_embedding,
    encode_base64_embedding,
    parse_embedding_request,
)

DIMENSIONS = 1536
# float32 keeps about 7 significant digits; the mock's values are float32 already.
FLOAT32_TOLERANCE = 1e-7


def embed(request: EmbeddingRequest) -> EmbeddingResponse:
    """What a mock provider answers: one deterministic vector per input."""
    dimensions = request.dimensions or DIMENSIONS
    texts = request.texts()
    tokens = sum(len(t) if isinstance(t, list) else len(t.split()) for t in texts)
    return EmbeddingResponse(
        data=[
            Embedding(index=i, embedding=deterministic_embedding(text, dimensions))
            for i, text in enumerate(texts)
        ],
        model=request.model,
        usage=EmbeddingUsage(prompt_tokens=tokens, total_tokens=tokens),
    ).encoded(request.encoding_format)


def close_to(actual: list[float], expected: list[float]) -> bool:
    return len(actual) == len(expected) and all(
        math.isclose(a, e, rel_tol=FLOAT32_TOLERANCE, abs_tol=FLOAT32_TOLERANCE)
        for a, e in zip(actual, expected, strict=True)
    )


@pytest.mark.parametrize(
    ("value", "texts"),
    [
        ("hello", ["hello"]),
        (["a", "b"], ["a", "b"]),
        ([1, 2, 3], [[1, 2, 3]]),
        ([[1, 2], [3]], [[1, 2], [3]]),
    ],
)
def test_every_input_form_round_trips_and_lists_its_texts(
    value: Any, texts: list[str | list[int]]
) -> None:
    body = {"model": "text-embedding-3-small", "input": value}

    request = parse_embedding_request(json.dumps(body).encode())

    assert request.to_wire() == body
    assert request.texts() == texts


def test_every_field_round_trips_and_unknown_fields_are_kept() -> None:
    body = {
        "model": "text-embedding-3-small",
        "input": ["a"],
        "encoding_format": "base64",
        "dimensions": 256,
        "user": "alice",
        "x_vendor": {"truncate": "END"},
    }

    request = parse_embedding_request(json.dumps(body))

    assert request.to_wire() == body
    assert request.model_extra == {"x_vendor": {"truncate": "END"}}


def test_a_token_array_is_one_input_whatever_its_length() -> None:
    request = parse_embedding_request({"model": "m", "input": list(range(8191))})

    assert request.texts() == [list(range(8191))]


def test_as_many_inputs_as_allowed_are_accepted() -> None:
    request = parse_embedding_request({"model": "m", "input": ["x"] * MAX_EMBEDDING_INPUTS})

    assert len(request.texts()) == MAX_EMBEDDING_INPUTS


BAD_BODIES = [
    ({"input": "x"}, "model"),
    ({"model": "", "input": "x"}, "model"),
    ({"model": "m"}, "input"),
    ({"model": "m", "input": ""}, "input"),
    ({"model": "m", "input": []}, "input"),
    ({"model": "m", "input": None}, "input"),
    ({"model": "m", "input": 5}, "input"),
    ({"model": "m", "input": {"text": "x"}}, "input"),
    ({"model": "m", "input": ["a", ""]}, "input[1]"),
    ({"model": "m", "input": ["x"] * (MAX_EMBEDDING_INPUTS + 1)}, "input"),
    ({"model": "m", "input": [[1]] * (MAX_EMBEDDING_INPUTS + 1)}, "input"),
    ({"model": "m", "input": ["a", 1]}, "input[1]"),
    ({"model": "m", "input": [1, "a"]}, "input[1]"),
    ({"model": "m", "input": [1, "2"]}, "input[1]"),
    ({"model": "m", "input": [1.5]}, "input[0]"),
    ({"model": "m", "input": [True]}, "input[0]"),
    ({"model": "m", "input": [[1], []]}, "input[1]"),
    ({"model": "m", "input": [[1], ["x"]]}, "input[1][0]"),
    ({"model": "m", "input": [[1], "x"]}, "input[1]"),
    ({"model": "m", "input": "x", "dimensions": 0}, "dimensions"),
    ({"model": "m", "input": "x", "dimensions": "many"}, "dimensions"),
    ({"model": "m", "input": "x", "encoding_format": "int8"}, "encoding_format"),
    ({"model": "m", "input": "x", "user": 7}, "user"),
]


@pytest.mark.parametrize(("body", "param"), BAD_BODIES)
def test_validation_errors_name_the_field(body: dict[str, Any], param: str) -> None:
    for raw in (body, json.dumps(body), json.dumps(body).encode()):
        with pytest.raises(InvalidRequestError) as caught:
            parse_embedding_request(raw)

        error = caught.value
        assert error.http_status == 400
        assert error.to_body() == {
            "error": {
                "message": error.message,
                "type": "invalid_request_error",
                "param": param,
                "code": "invalid_value",
            }
        }
        assert f"'{param}'" in error.message


@pytest.mark.parametrize("raw", [b"{not json", b"\xff\xfe", b"", b'{"model": "m",', b"[" * 10_000])
def test_invalid_json_is_an_invalid_request(raw: bytes) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        parse_embedding_request(raw)

    assert caught.value.http_status == 400
    assert caught.value.to_body()["error"]["code"] == "invalid_json"


@pytest.mark.parametrize("raw", [b"[]", b"null", b'"text"', b"42"])
def test_a_body_that_is_not_an_object_is_an_invalid_request(raw: bytes) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        parse_embedding_request(raw)

    assert caught.value.http_status == 400


def test_fields_that_pick_the_upstream_are_refused() -> None:
    body = {"model": "m", "input": "x", "extra": {"Base-URL": "http://evil.example"}}

    with pytest.raises(InvalidRequestError) as caught:
        parse_embedding_request(json.dumps(body))

    assert caught.value.param == "extra.Base-URL"
    assert caught.value.code == "forbidden_parameter"


def test_deterministic_embedding_is_a_unit_vector_of_the_size_asked() -> None:
    for dimensions in (1, 3, 256, DIMENSIONS, 3072):
        vector = deterministic_embedding("hello", dimensions)

        assert len(vector) == dimensions
        assert math.isclose(math.fsum(v * v for v in vector), 1.0, rel_tol=1e-6)


def test_deterministic_embedding_is_pinned_across_runs_and_machines() -> None:
    vector = deterministic_embedding("hello", DIMENSIONS)

    assert vector == deterministic_embedding("hello", DIMENSIONS)
    # The seed is SHAKE-256 read as little-endian int32s: nothing depends on the platform.
    assert (
        encode_base64_embedding(deterministic_embedding("hello", 4)) == "raYDvmIzPT/wj2O+MG8fvw=="
    )
    assert encode_base64_embedding(deterministic_embedding([9906], 2)) == "Bs8Ovzl3VD8="


@pytest.mark.parametrize(
    ("first", "second"),
    [("hello", "hello "), ("hello", "Hello"), ("1", [1]), ([1, 2], [12]), ([1, 2], [2, 1])],
)
def test_different_inputs_give_different_vectors(
    first: str | list[int], second: str | list[int]
) -> None:
    a = deterministic_embedding(first, DIMENSIONS)
    b = deterministic_embedding(second, DIMENSIONS)

    assert abs(math.fsum(x * y for x, y in zip(a, b, strict=True))) < 0.2


def test_fewer_dimensions_are_the_longer_vector_cut_short_and_renormalized() -> None:
    long = deterministic_embedding("hello", DIMENSIONS)
    short = deterministic_embedding("hello", 256)
    norm = math.sqrt(math.fsum(v * v for v in long[:256]))

    assert close_to(short, [v / norm for v in long[:256]])


def test_deterministic_embedding_takes_any_text() -> None:
    assert len(deterministic_embedding("\ud800 lone surrogate, 日本語", 8)) == 8


def test_deterministic_embedding_refuses_no_dimensions() -> None:
    with pytest.raises(ValueError, match="dimensions"):
        deterministic_embedding("hello", 0)


def test_base64_is_little_endian_float32() -> None:
    assert (
        encode_base64_embedding([1.0, -2.0])
        == base64.b64encode(b"\x00\x00\x80\x3f\x00\x00\x00\xc0").decode()
    )
    assert decode_base64_embedding("AACAPwAAAMA=") == [1.0, -2.0]


def test_base64_round_trips_the_mock_vectors_exactly() -> None:
    vector = deterministic_embedding("hello", DIMENSIONS)

    assert decode_base64_embedding(encode_base64_embedding(vector)) == vector


def test_base64_keeps_float32_precision_for_any_floats() -> None:
    vector = [0.1, -1e-3, 123.456, 1e-30]

    assert close_to(decode_base64_embedding(encode_base64_embedding(vector)), vector)


def test_base64_decodes_as_the_openai_sdk_does() -> None:
    vector = deterministic_embedding("hello", DIMENSIONS)
    encoded = encode_base64_embedding(vector)

    assert array("f", base64.b64decode(encoded)).tolist() == vector


@pytest.mark.parametrize("value", ["not base64!", "AAAAAAA=", "AACAP"])
def test_what_is_not_a_base64_embedding_is_a_value_error(value: str) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - binascii.Error is a ValueError too
        decode_base64_embedding(value)


def sample_response() -> EmbeddingResponse:
    return EmbeddingResponse(
        data=[
            Embedding(index=0, embedding=deterministic_embedding("a", 8)),
            Embedding(index=1, embedding=deterministic_embedding("b", 8)),
        ],
        model="text-embedding-3-small",
        usage=EmbeddingUsage(prompt_tokens=2, total_tokens=2),
    )


def test_wire_json_is_what_the_openai_sdk_reads() -> None:
    response = sample_response()

    wire = response.to_wire_json()
    sdk = sdk_types.CreateEmbeddingResponse.model_validate_json(wire)

    assert b" " not in wire
    assert sdk.object == "list"
    assert [e.object for e in sdk.data] == ["embedding", "embedding"]
    assert [e.index for e in sdk.data] == [0, 1]
    assert [e.embedding for e in sdk.data] == [e.embedding for e in response.data]
    assert sdk.usage.prompt_tokens == 2
    assert sdk.usage.total_tokens == 2


def test_a_minimal_response_still_carries_every_field_the_sdk_requires() -> None:
    wire = EmbeddingResponse(model="m").to_wire_json()

    sdk = sdk_types.CreateEmbeddingResponse.model_validate_json(wire)

    assert json.loads(wire) == {
        "object": "list",
        "data": [],
        "model": "m",
        "usage": {"prompt_tokens": 0, "total_tokens": 0},
    }
    assert sdk.data == []


def test_an_openai_response_round_trips_with_unknown_fields() -> None:
    body = {
        "object": "list",
        "data": [{"object": "embedding", "index": 0, "embedding": "AACAPw==", "x_norm": 1}],
        "model": "text-embedding-3-small",
        "usage": {"prompt_tokens": 1, "total_tokens": 1},
        "x_vendor": True,
    }

    response = EmbeddingResponse.model_validate_json(json.dumps(body))

    assert json.loads(response.to_wire_json()) == body
    assert response.data[0].as_floats() == [1.0]


@pytest.mark.parametrize("encoding_format", [None, "float"])
def test_encoded_leaves_float_vectors_alone_unless_base64_is_asked(
    encoding_format: str | None,
) -> None:
    response = sample_response()

    assert response.encoded(encoding_format) is response


def test_encoded_as_base64_gives_strings_of_the_same_vectors() -> None:
    response = sample_response()
    response.data[0].__pydantic_extra__ = {"x_norm": 1}

    encoded = response.encoded("base64")
    wire = json.loads(encoded.to_wire_json())

    assert [e.as_floats() for e in encoded.data] == [e.embedding for e in response.data]
    assert all(isinstance(e["embedding"], str) for e in wire["data"])
    assert encoded.data[0].model_extra == {"x_norm": 1}
    assert encoded.model == response.model
    assert encoded.usage == response.usage
    assert all(isinstance(e.embedding, list) for e in response.data)
    assert encoded.encoded("base64") is encoded


def test_encoded_as_floats_decodes_an_upstream_base64_answer() -> None:
    upstream = sample_response().encoded("base64")

    assert upstream.encoded(None).to_wire() == sample_response().to_wire()
    assert upstream.encoded("float").to_wire() == sample_response().to_wire()


Handler = Callable[[httpx.Request], httpx.Response]


def gateway(seen: list[dict[str, Any]]) -> Handler:
    """An embeddings endpoint on the mock's vectors, noting every body it receives."""

    def handle(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/v1/embeddings"
        seen.append(json.loads(request.content))
        try:
            parsed = parse_embedding_request(request.content)
        except InvalidRequestError as exc:
            return httpx.Response(exc.http_status, json=exc.to_body())
        return httpx.Response(
            200,
            content=embed(parsed).to_wire_json(),
            headers={"content-type": "application/json"},
        )

    return handle


@asynccontextmanager
async def sdk_client(handler: Handler) -> AsyncIterator[openai.AsyncOpenAI]:
    transport = httpx.MockTransport(handler)
    async with (
        httpx.AsyncClient(transport=transport) as http,
        openai.AsyncOpenAI(
            api_key="k",
            base_url="http://test/v1",
            # Typed as the SDK's own httpx2 client, but an httpx one is accepted and adapted.
            http_client=http,  # type: ignore[arg-type]
            max_retries=0,
        ) as client,
    ):
        yield client


@pytest.mark.anyio
async def test_the_sdk_default_asks_base64_and_decodes_the_mock_vectors() -> None:
    seen: list[dict[str, Any]] = []
    texts = ["hello", "world", "hello"]
    async with sdk_client(gateway(seen)) as client:
        result = await client.embeddings.create(model="text-embedding-3-small", input=texts)

    assert seen[0]["encoding_format"] == "base64"
    assert result.model == "text-embedding-3-small"
    assert [e.index for e in result.data] == [0, 1, 2]
    for item, text in zip(result.data, texts, strict=True):
        assert close_to(item.embedding, deterministic_embedding(text, DIMENSIONS))
    assert result.data[0].embedding == result.data[2].embedding
    assert result.data[0].embedding != result.data[1].embedding
    assert result.usage.prompt_tokens == 3


@pytest.mark.anyio
async def test_the_sdk_gets_floats_when_it_asks_for_floats() -> None:
    seen: list[dict[str, Any]] = []
    async with sdk_client(gateway(seen)) as client:
        result = await client.embeddings.create(model="m", input="hello", encoding_format="float")

    assert seen[0]["encoding_format"] == "float"
    assert close_to(result.data[0].embedding, deterministic_embedding("hello", DIMENSIONS))


@pytest.mark.anyio
async def test_the_sdk_gets_base64_strings_when_it_asks_for_them_explicitly() -> None:
    async with sdk_client(gateway([])) as client:
        result = await client.embeddings.create(model="m", input="hello", encoding_format="base64")

    raw = result.data[0].embedding
    assert isinstance(raw, str)
    assert decode_base64_embedding(raw) == deterministic_embedding("hello", DIMENSIONS)


@pytest.mark.anyio
async def test_the_sdk_gets_the_dimensions_it_asks_for() -> None:
    async with sdk_client(gateway([])) as client:
        result = await client.embeddings.create(model="m", input=["hello", "world"], dimensions=256)

    assert [len(e.embedding) for e in result.data] == [256, 256]
    assert close_to(result.data[1].embedding, deterministic_embedding("world", 256))


@pytest.mark.anyio
async def test_the_sdk_can_send_tokens() -> None:
    async with sdk_client(gateway([])) as client:
        one = await client.embeddings.create(model="m", input=[15339, 1917])
        many = await client.embeddings.create(model="m", input=[[15339], [1917, 0]])

    assert len(one.data) == 1
    assert close_to(one.data[0].embedding, deterministic_embedding([15339, 1917], DIMENSIONS))
    assert len(many.data) == 2
    assert close_to(many.data[1].embedding, deterministic_embedding([1917, 0], DIMENSIONS))
    assert one.usage.prompt_tokens == 2


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"input": ""}, "input"),
        ({"input": []}, "input"),
        ({"input": ["ok", ""]}, "input[1]"),
        ({"input": "x", "dimensions": 0}, "dimensions"),
        ({"input": "x", "encoding_format": "int8"}, "encoding_format"),
    ],
)
async def test_the_sdk_sees_parse_errors_as_bad_requests_naming_the_param(
    fields: dict[str, Any], param: str
) -> None:
    async with sdk_client(gateway([])) as client:
        with pytest.raises(openai.BadRequestError) as caught:
            await client.embeddings.create(model="m", **fields)

    assert caught.value.status_code == 400
    assert caught.value.param == param
    assert caught.value.type == "invalid_request_error"
    assert caught.value.code == "invalid_value"
