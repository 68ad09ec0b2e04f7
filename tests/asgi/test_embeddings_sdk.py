"""``POST /v1/embeddings`` through the official openai SDK over real HTTP: the mock's vectors,
errors in OpenAI's shape, and failover between upstreams that serve embeddings natively."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Sequence
from typing import Any

import openai
import pytest
from pydantic import SecretStr

from leapasgi.config import ProviderConfig, ServerConfig
from tests.asgi.live_server import (
    LOOPS,
    LiveGateway,
    Serve,
    fast_routing,
    live_gateway,
    upstream_config,
)
from tests.asgi.sdk_wire import assert_openai_error_body
from tests.fake_upstream import Behavior, FakeUpstream, embedding_answer, error_body

pytestmark = pytest.mark.anyio

MOCK_DIMENSIONS = 1536
VECTORS = [[0.6, 0.8], [1.0, 0.0]]


def mock_with_embeddings(upstreams: Sequence[FakeUpstream] = ()) -> list[ProviderConfig]:
    return [ProviderConfig(name="mock", type="mock", models=["mock-chat", "mock-embed"])]


@pytest.fixture(scope="module", params=LOOPS)
def live(request: pytest.FixtureRequest) -> Iterator[LiveGateway]:
    """One gateway with the mock serving ``mock-embed``, shared by the tests that only read
    (in place of the conftest's mock-chat one)."""
    with live_gateway(mock_with_embeddings, loop=request.param) as gateway:
        yield gateway


def embedder(name: str, fake: FakeUpstream, **options: Any) -> ProviderConfig:
    """An upstream serving ``e1`` embeddings natively, tried once."""
    options.setdefault("max_retries", 0)
    options.setdefault("models", ["e1"])
    return upstream_config(name, fake, protocols=["embeddings"], **options)


async def test_base64_and_float_give_the_same_vectors(live: LiveGateway) -> None:
    # No strict validation here: the SDK's own type says a list, and it decodes base64 after.
    async with live.async_client() as client:
        raw = await client.embeddings.with_raw_response.create(model="mock-embed", input="hello")
        default = raw.parse()
        floats = await client.embeddings.create(
            model="mock-embed", input="hello", encoding_format="float"
        )
    # The SDK asks for base64 unless told otherwise, and decodes it.
    assert json.loads(raw.http_request.read())["encoding_format"] == "base64"
    wire = raw.http_response.json()
    assert isinstance(wire["data"][0]["embedding"], str)
    assert raw.headers["x-leap-provider"] == "mock"
    assert raw.headers["x-leap-attempts"] == "1"
    assert default.object == "list"
    assert default.model == "mock-embed"
    [vector] = default.data
    [same] = floats.data
    assert vector.index == same.index == 0
    assert vector.object == "embedding"
    assert len(vector.embedding) == MOCK_DIMENSIONS
    assert vector.embedding == same.embedding
    assert math.isclose(math.hypot(*vector.embedding), 1.0, rel_tol=1e-5)
    assert default.usage.prompt_tokens >= 1
    assert default.usage.total_tokens == default.usage.prompt_tokens


async def test_dimensions(live: LiveGateway) -> None:
    async with live.async_client() as client:
        short = await client.embeddings.create(model="mock-embed", input="hello", dimensions=256)
        short_floats = await client.embeddings.create(
            model="mock-embed", input="hello", dimensions=256, encoding_format="float"
        )
    [vector] = short.data
    assert len(vector.embedding) == 256
    assert vector.embedding == short_floats.data[0].embedding
    assert math.isclose(math.hypot(*vector.embedding), 1.0, rel_tol=1e-5)


async def test_list_input_gives_one_vector_each_in_order(live: LiveGateway) -> None:
    texts = ["alpha", "beta", "gamma"]
    async with live.async_client() as client:
        batch = await client.embeddings.create(model="mock-embed", input=texts)
        alone = [
            (await client.embeddings.create(model="mock-embed", input=text)).data[0].embedding
            for text in texts
        ]
        tokens = await client.embeddings.create(model="mock-embed", input=[[1, 2, 3], [4, 5]])
    assert [item.index for item in batch.data] == [0, 1, 2]
    assert [item.embedding for item in batch.data] == alone
    assert len({tuple(v) for v in alone}) == 3
    assert batch.usage.prompt_tokens >= 3
    assert [item.index for item in tokens.data] == [0, 1]
    assert tokens.usage.prompt_tokens == 5  # one token an item of a token array


async def test_unknown_model(live: LiveGateway) -> None:
    served = len(live.mock().embedding_requests)
    async with live.async_client() as client:
        with pytest.raises(openai.NotFoundError) as caught:
            await client.embeddings.create(model="no-such-model", input="hello")
    error = caught.value
    assert error.status_code == 404
    assert error.code == "model_not_found"
    assert assert_openai_error_body(error.response)["type"] == "invalid_request_error"
    assert len(live.mock().embedding_requests) == served


BAD_INPUTS = [
    pytest.param({"input": ""}, "input", id="empty-string"),
    pytest.param({"input": []}, "input", id="empty-list"),
    pytest.param({"input": ["ok", 3]}, "input[1]", id="mixed-list"),
    pytest.param({"input": "hi", "dimensions": 0}, "dimensions", id="zero-dimensions"),
    pytest.param({"input": "hi", "encoding_format": "hex"}, "encoding_format", id="format"),
]


@pytest.mark.parametrize(("params", "param"), BAD_INPUTS)
async def test_bad_input(live: LiveGateway, params: dict[str, Any], param: str) -> None:
    served = len(live.mock().embedding_requests)
    async with live.async_client() as client:
        with pytest.raises(openai.BadRequestError) as caught:
            await client.embeddings.create(model="mock-embed", **params)
    error = caught.value
    assert error.status_code == 400
    assert error.param == param
    assert error.type == "invalid_request_error"
    assert_openai_error_body(error.response)
    assert len(live.mock().embedding_requests) == served


async def test_too_many_dimensions_for_the_mock(live: LiveGateway) -> None:
    async with live.async_client() as client:
        with pytest.raises(openai.BadRequestError) as caught:
            await client.embeddings.create(model="mock-embed", input="hi", dimensions=10_000)
    assert caught.value.param == "dimensions"
    assert_openai_error_body(caught.value.response)


async def test_wrong_key(serve: Serve) -> None:
    live = serve(mock_with_embeddings, server=ServerConfig(api_keys=[SecretStr("right")]))
    async with live.async_client(api_key="wrong") as client:
        with pytest.raises(openai.AuthenticationError) as caught:
            await client.embeddings.create(model="mock-embed", input="hello")
    async with live.async_client(api_key="right") as client:
        answer = await client.embeddings.create(model="mock-embed", input="hello")
    assert caught.value.status_code == 401
    assert_openai_error_body(caught.value.response)
    assert len(answer.data) == 1
    assert len(live.mock().embedding_requests) == 1


async def test_failover_skips_providers_without_embeddings(serve: Serve) -> None:
    chat_only = FakeUpstream()
    busy = FakeUpstream(
        default=Behavior(status=503, json_body=error_body("busy", type="server_error"))
    )
    good = FakeUpstream(
        default=Behavior(json_body=embedding_answer(VECTORS), headers={"x-request-id": "req_up"})
    )
    live = serve(
        lambda ups: [
            # First by priority, serving the same model, but it does not speak embeddings.
            upstream_config("chat", ups[0], models=["e1"], priority=0, max_retries=0),
            embedder("busy", ups[1], priority=1),
            embedder("good", ups[2], priority=2),
        ],
        upstreams=[chat_only, busy, good],
        routing=fast_routing(),
    )
    async with live.async_client(_strict_response_validation=True) as client:
        raw = await client.embeddings.with_raw_response.create(
            model="e1",
            input=["first", "second"],
            encoding_format="float",
            dimensions=2,
            extra_body={"input_type": "query"},  # a field the gateway does not model
        )
        answer = raw.parse()
    assert raw.headers["x-leap-attempts"] == "2"
    assert raw.headers["x-leap-provider"] == "good"
    assert raw.headers["x-request-id"] == "req_up"
    assert [item.embedding for item in answer.data] == VECTORS
    assert answer.usage.prompt_tokens == 3
    assert chat_only.seen == []
    body = {
        "input": ["first", "second"],
        "model": "e1",
        "encoding_format": "float",
        "dimensions": 2,
        "input_type": "query",
    }
    for fake in (busy, good):
        [seen] = fake.seen
        assert seen.path == "/v1/embeddings"
        assert seen.json == body
        assert seen.headers["Authorization"] == "Bearer up-key"


async def test_a_model_only_chat_providers_serve(serve: Serve) -> None:
    chat_only = FakeUpstream()
    live = serve(lambda ups: [upstream_config("chat", ups[0])], upstreams=[chat_only])
    async with live.async_client() as client:
        with pytest.raises(openai.BadRequestError) as caught:
            await client.embeddings.create(model="m1", input="hello")
    assert caught.value.param == "model"
    assert_openai_error_body(caught.value.response)
    assert chat_only.seen == []


async def test_every_embedder_failing(serve: Serve) -> None:
    fakes = [
        FakeUpstream(
            default=Behavior(status=500, json_body=error_body("boom", type="server_error"))
        ),
        FakeUpstream(
            default=Behavior(status=503, json_body=error_body("busy", type="server_error"))
        ),
    ]
    live = serve(
        lambda ups: [embedder("a", ups[0], priority=0), embedder("b", ups[1], priority=1)],
        upstreams=fakes,
        routing=fast_routing(),
    )
    async with live.async_client(max_retries=2) as client:
        with pytest.raises(openai.InternalServerError) as caught:
            await client.embeddings.create(model="e1", input="hello")
    error = caught.value
    assert error.status_code == 503
    assert error.response.headers["x-should-retry"] == "false"
    assert error.response.headers["x-leap-attempts"] == "2"
    assert_openai_error_body(error.response)
    assert [len(f.embeddings_requests) for f in fakes] == [1, 1]


async def test_upstream_bad_request_is_not_failed_over(serve: Serve) -> None:
    too_long = Behavior(
        status=400,
        json_body={
            "error": {
                "message": "This model's maximum context length is 8192 tokens.",
                "type": "invalid_request_error",
                "param": "input",
                "code": None,
            }
        },
    )
    fakes = [
        FakeUpstream(default=too_long),
        FakeUpstream(default=Behavior(json_body=embedding_answer(VECTORS[:1]))),
    ]
    live = serve(
        lambda ups: [embedder("a", ups[0], priority=0), embedder("b", ups[1], priority=1)],
        upstreams=fakes,
        routing=fast_routing(),
    )
    async with live.async_client() as client:
        with pytest.raises(openai.BadRequestError) as caught:
            await client.embeddings.create(model="e1", input="x" * 100)
    assert caught.value.param == "input"
    assert "maximum context length" in caught.value.message
    assert [len(f.seen) for f in fakes] == [1, 0]
