"""The official openai SDK's Responses API against the gateway over real HTTP: translated
through chat (the mock, fake chat upstreams) and passed through to upstreams that speak it,
with conversation state, failover, stream cuts and Codex CLI's own request shape."""

from __future__ import annotations

import contextlib
import json
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import httpx
import openai
import pydantic
import pytest
from openai.types.responses import ResponseCreatedEvent
from pydantic import SecretStr

from leapasgi.config import ProviderConfig, ServerConfig
from tests.asgi.live_server import (
    LOOPS,
    LiveGateway,
    fast_routing,
    live_gateway,
    upstream_config,
)
from tests.fake_responses import (
    ResponseEvents,
    encode,
    failed_stream,
    response_body,
)
from tests.fake_responses import text_stream as native_stream
from tests.fake_upstream import Behavior, FakeUpstream, chunk, completion, error_body, sse
from tests.fake_upstream import text_stream as chat_stream

Serve = Callable[..., LiveGateway]

PNG_1PX = (
    "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk"
    "YPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="
)
WEATHER_TOOL: Any = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
        "additionalProperties": False,
    },
    "strict": True,
}
TERMINAL = ("response.completed", "response.incomplete")
# How long a test waits for the gateway to record a request it has already answered.
RECORD_WAIT = 5.0


class Weather(pydantic.BaseModel):
    city: str
    days: int


@pytest.fixture(scope="module", params=LOOPS)
def live(request: pytest.FixtureRequest) -> Iterator[LiveGateway]:
    """One gateway with the mock provider, shared by the tests that only need the mock; on
    asyncio's loop and on uvloop's, as ``leapasgi serve`` runs."""
    with live_gateway(loop=request.param) as gateway:
        yield gateway


@pytest.fixture(params=LOOPS)
def serve(request: pytest.FixtureRequest) -> Iterator[Serve]:
    """Start gateways with their own providers and upstreams, on each event loop; all stop
    after the test."""
    loop = request.param
    with contextlib.ExitStack() as stack:
        yield lambda *args, **options: stack.enter_context(
            live_gateway(*args, loop=loop, **options)
        )


def native_upstreams(upstreams: Sequence[FakeUpstream]) -> list[ProviderConfig]:
    """Upstreams that speak Responses natively, serving ``m1``, tried in order, each once."""
    return [
        upstream_config(f"up{i}", fake, protocols=["responses"], priority=i, max_retries=0)
        for i, fake in enumerate(upstreams)
    ]


def chat_upstreams(upstreams: Sequence[FakeUpstream]) -> list[ProviderConfig]:
    """Chat-only upstreams serving ``m1``, tried in order, each once."""
    return [
        upstream_config(f"up{i}", fake, priority=i, max_retries=0)
        for i, fake in enumerate(upstreams)
    ]


def mock_for_m1(priority: int) -> ProviderConfig:
    """The mock provider, serving ``m1``."""
    return ProviderConfig(name="mock", type="mock", models=["m1"], priority=priority)


def iter_sse(lines: Iterable[str]) -> Iterator[tuple[str | None, dict[str, Any]]]:
    """(event name, JSON data) of each event of an SSE body as it arrives; comments are
    skipped."""
    name: str | None = None
    for line in lines:
        if line.startswith("event: "):
            name = line.removeprefix("event: ")
        elif line.startswith("data: "):
            yield name, json.loads(line.removeprefix("data: "))
            name = None


def parse_sse(lines: Iterable[str]) -> list[tuple[str | None, dict[str, Any]]]:
    """Every event of a whole SSE body."""
    return list(iter_sse(lines))


def raw_stream(client: openai.OpenAI, **params: Any) -> tuple[list[dict[str, Any]], Any]:
    """The events of a streamed response as sent (their ``event:`` names checked against
    their types), and the response's headers."""
    with client.responses.with_streaming_response.create(stream=True, **params) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = parse_sse(response.iter_lines())
    for name, data in events:
        assert name == data["type"]
    return [data for _, data in events], response.headers


def types_of(events: Iterable[Mapping[str, Any]]) -> list[str]:
    return [event["type"] for event in events]


def assert_stream_rules(events: list[dict[str, Any]]) -> str:
    """One lifecycle with one response id and numbered events; returns the id."""
    types = types_of(events)
    assert types[:2] == ["response.created", "response.in_progress"]
    assert types.count("response.created") == 1
    assert types[-1] in TERMINAL
    assert sum(kind in TERMINAL for kind in types) == 1
    assert [event["sequence_number"] for event in events] == list(range(len(events)))
    ids = {event["response"]["id"] for event in events if "response" in event}
    assert len(ids) == 1
    return str(ids.pop())


def text_order(deltas: int) -> list[str]:
    """The documented events of a response that is one text message."""
    return [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        *["response.output_text.delta"] * deltas,
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]


def text_of(response: Mapping[str, Any]) -> str:
    """The output text of a Response object (JSON)."""
    return "".join(
        part["text"]
        for item in response["output"]
        if item["type"] == "message"
        for part in item["content"]
        if part["type"] == "output_text"
    )


def user(text: str) -> dict[str, Any]:
    """A user message item, as the gateway writes a string input."""
    return {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}


def take_turn(client: openai.OpenAI, *, stream: bool, **params: Any) -> tuple[dict[str, Any], Any]:
    """One response, streamed or not: the Response object (JSON) and the headers."""
    if stream:
        events, headers = raw_stream(client, **params)
        assert_stream_rules(events)
        return events[-1]["response"], headers
    raw = client.responses.with_raw_response.create(**params)
    raw.parse()
    return raw.http_response.json(), raw.headers


def collect_until_error(stream: Iterable[Any]) -> tuple[list[Any], openai.APIError]:
    """What a stream yielded before it raised, and the error."""
    received = []
    try:
        for item in stream:
            received.append(item)
    except openai.APIError as error:
        return received, error
    raise AssertionError("the stream ended without an error")


def assert_openai_error_body(response: Any) -> dict[str, Any]:
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert response.headers["content-type"] == "application/json"
    return body["error"]  # type: ignore[no-any-return]


def chat_messages(seen: Any) -> list[dict[str, Any]]:
    """The messages of a chat request an upstream received."""
    return seen.json["messages"]  # type: ignore[no-any-return]


# Translated through chat: the mock


def test_create_with_a_string_input(live: LiveGateway) -> None:
    with live.client(_strict_response_validation=True) as client:
        raw = client.responses.with_raw_response.create(
            model="mock-chat",
            input="hi there",
            instructions="Answer briefly.",
            metadata={"ticket": "T-1"},
            temperature=0.4,
        )
        response = raw.parse()
    assert raw.headers["content-type"] == "application/json"
    assert raw.headers["x-leap-provider"] == "mock"
    assert raw.headers["x-leap-attempts"] == "1"
    assert re.fullmatch(r"resp_[0-9a-f]{24}", response.id)
    assert response.object == "response"
    assert response.status == "completed"
    assert response.model == "mock-chat"
    assert response.output_text == "You said: hi there"
    assert response.instructions == "Answer briefly."
    assert response.metadata == {"ticket": "T-1"}
    assert response.temperature == 0.4
    assert response.error is None
    assert response.incomplete_details is None
    [message] = response.output
    assert message.type == "message"
    assert message.role == "assistant"
    assert message.status == "completed"
    usage = response.usage
    assert usage is not None
    assert usage.output_tokens == 4
    assert usage.input_tokens > 0
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens
    request = live.mock().requests[-1]
    assert [m.role for m in request.messages] == ["system", "user"]
    assert request.temperature == 0.4


def test_metadata_stays_with_the_gateway_over_chat(serve: Serve) -> None:
    """A response's ``metadata`` is the gateway's to echo and keep. Chat's ``metadata`` tags
    stored completions, and OpenAI refuses it without ``store: true`` ("The 'metadata'
    parameter is only allowed when 'store' is enabled."), so the chat form must not carry it
    alone."""
    fake = FakeUpstream()
    live = serve(chat_upstreams, upstreams=[fake])
    with live.client(_strict_response_validation=True) as client:
        response = client.responses.create(model="m1", input="hi", metadata={"ticket": "T-1"})
    assert response.metadata == {"ticket": "T-1"}
    [seen] = fake.chat_requests
    assert "metadata" not in seen.json or seen.json.get("store") is True


def test_create_with_items_and_an_image(live: LiveGateway) -> None:
    items: Any = [
        {"role": "developer", "content": "Describe images in one word."},
        {"role": "user", "content": "first question"},
        {"role": "assistant", "content": "first answer"},
        {
            "type": "message",
            "role": "user",
            "content": [
                {"type": "input_text", "text": "what is this"},
                {"type": "input_image", "image_url": PNG_1PX, "detail": "low"},
            ],
        },
    ]
    with live.client(_strict_response_validation=True) as client:
        response = client.responses.create(model="mock-chat", input=items)
    assert response.output_text == "You said: what is this"
    sent = live.mock().requests[-1].model_dump(exclude_none=True)["messages"]
    assert [m["role"] for m in sent] == ["developer", "user", "assistant", "user"]
    assert sent[2]["content"] == "first answer"
    text, image = sent[3]["content"]
    assert text == {"type": "text", "text": "what is this"}
    assert image["type"] == "image_url"
    assert image["image_url"] == {"url": PNG_1PX, "detail": "low"}


def test_max_output_tokens_cuts_the_answer(live: LiveGateway) -> None:
    with live.client(_strict_response_validation=True) as client:
        response = client.responses.create(
            model="mock-chat", input="one two three four", max_output_tokens=2
        )
        events, _ = raw_stream(
            client, model="mock-chat", input="one two three four", max_output_tokens=2
        )
    assert response.status == "incomplete"
    assert response.incomplete_details is not None
    assert response.incomplete_details.reason == "max_output_tokens"
    assert response.max_output_tokens == 2
    assert response.output_text == "You said:"
    [message] = response.output
    assert message.type == "message"
    assert message.status == "incomplete"
    assert_stream_rules(events)
    last = events[-1]
    assert last["type"] == "response.incomplete"
    assert last["response"]["incomplete_details"] == {"reason": "max_output_tokens"}
    assert text_of(last["response"]) == "You said:"


def test_stream_events_in_the_documented_order(live: LiveGateway) -> None:
    with live.client(_strict_response_validation=True) as client:
        events, headers = raw_stream(client, model="mock-chat", input="hi there")
        with client.responses.stream(model="mock-chat", input="hi there") as stream:
            seen = list(stream)
            final = stream.get_final_response()
    assert headers["x-leap-provider"] == "mock"
    response_id = assert_stream_rules(events)
    assert types_of(events) == text_order(4)
    deltas = [e["delta"] for e in events if e["type"] == "response.output_text.delta"]
    assert "".join(deltas) == "You said: hi there"
    done = events[-1]["response"]
    assert done["status"] == "completed"
    assert done["usage"]["output_tokens"] == 4
    assert text_of(done) == "You said: hi there"
    item_ids = {e["item_id"] for e in events if "item_id" in e}
    assert item_ids == {done["output"][0]["id"]}
    # The SDK's helper checks the lifecycle itself (one response id, items before content).
    assert [e.type for e in seen] == text_order(4)
    assert final.output_text == "You said: hi there"
    assert isinstance(seen[0], ResponseCreatedEvent)
    assert final.id == seen[0].response.id
    assert final.id != response_id
    assert final.usage is not None


def test_parse_into_a_pydantic_model(live: LiveGateway) -> None:
    with live.client(_strict_response_validation=True) as client:
        parsed = client.responses.parse(
            model="mock-chat", input="the weather in Paris", text_format=Weather
        )
        with client.responses.stream(
            model="mock-chat", input="the weather in Paris", text_format=Weather
        ) as stream:
            streamed = stream.get_final_response()
    assert isinstance(parsed.output_parsed, Weather)
    assert isinstance(streamed.output_parsed, Weather)
    assert Weather.model_validate_json(parsed.output_text) == parsed.output_parsed
    request = live.mock().requests[-1].model_dump(exclude_none=True, by_alias=True)
    assert request["response_format"]["type"] == "json_schema"
    assert request["response_format"]["json_schema"]["name"] == "Weather"


@pytest.mark.parametrize("stream", [False, True])
def test_a_function_call_round_trip(live: LiveGateway, stream: bool) -> None:
    with live.client(_strict_response_validation=True) as client:
        first, _ = take_turn(
            client,
            stream=stream,
            model="mock-chat",
            input="call get_weather for Paris",
            tools=[WEATHER_TOOL],
        )
        [call] = first["output"]
        assert call["type"] == "function_call"
        assert call["name"] == "get_weather"
        assert json.loads(call["arguments"]) == {"city": "example"}
        assert call["status"] == "completed"
        assert call["id"].startswith("fc_")
        output: Any = [
            {"type": "function_call_output", "call_id": call["call_id"], "output": "sunny, 21C"}
        ]
        second, _ = take_turn(
            client,
            stream=stream,
            model="mock-chat",
            previous_response_id=first["id"],
            input=output,
            tools=[WEATHER_TOOL],
        )
    assert second["status"] == "completed"
    assert second["previous_response_id"] == first["id"]
    assert text_of(second) == "The tool returned: sunny, 21C"
    messages = live.mock().requests[-1].model_dump(exclude_none=True)["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "tool"]
    assert messages[1]["tool_calls"][0]["id"] == call["call_id"]
    assert messages[1]["tool_calls"][0]["function"]["name"] == "get_weather"
    assert messages[2]["tool_call_id"] == call["call_id"]


def test_retrieve_and_delete(live: LiveGateway) -> None:
    with live.client(_strict_response_validation=True) as client:
        created = client.responses.create(model="mock-chat", input="keep this")
        with client.responses.stream(model="mock-chat", input="and this") as stream:
            streamed = stream.get_final_response()
        kept = client.responses.retrieve(created.id)
        kept_stream = client.responses.retrieve(streamed.id)
        client.responses.delete(created.id)
        with pytest.raises(openai.NotFoundError) as gone:
            client.responses.retrieve(created.id)
        with pytest.raises(openai.NotFoundError):
            client.responses.delete(created.id)
        with pytest.raises(openai.NotFoundError) as follow_up:
            client.responses.create(
                model="mock-chat", input="more", previous_response_id=created.id
            )
    assert kept.model_dump() == created.model_dump()
    assert kept_stream.output_text == "You said: and this"
    assert kept_stream.status == "completed"
    assert gone.value.status_code == 404
    assert created.id in gone.value.message
    assert_openai_error_body(gone.value.response)
    assert follow_up.value.code == "previous_response_not_found"
    assert follow_up.value.param == "previous_response_id"


@pytest.mark.parametrize("stream", [False, True])
def test_store_false_keeps_nothing(live: LiveGateway, stream: bool) -> None:
    with live.client(_strict_response_validation=True) as client:
        response, _ = take_turn(
            client, stream=stream, model="mock-chat", input="forget me", store=False
        )
        with pytest.raises(openai.NotFoundError) as retrieved:
            client.responses.retrieve(response["id"])
        with pytest.raises(openai.NotFoundError) as follow_up:
            client.responses.create(
                model="mock-chat", input="what did I say?", previous_response_id=response["id"]
            )
    assert response["store"] is False
    assert text_of(response) == "You said: forget me"
    assert retrieved.value.status_code == 404
    error = follow_up.value
    assert error.status_code == 404
    assert error.code == "previous_response_not_found"
    assert error.param == "previous_response_id"
    assert response["id"] in error.message
    assert_openai_error_body(error.response)


def test_a_json_follow_up_at_once(live: LiveGateway) -> None:
    with live.client(_strict_response_validation=True) as client:
        previous = None
        for turn in range(5):
            response = client.responses.create(
                model="mock-chat", input=f"turn {turn}", previous_response_id=previous
            )
            assert response.output_text == f"You said: turn {turn}"
            previous = response.id
    messages = live.mock().requests[-1].model_dump(exclude_none=True)["messages"]
    assert [m["content"] for m in messages] == [
        text for turn in range(5) for text in (f"turn {turn}", f"You said: turn {turn}")
    ][:-1]


@pytest.mark.parametrize("upstream", ["mock", "native", "native, kept open"])
def test_a_follow_up_the_instant_a_stream_completes(serve: Serve, upstream: str) -> None:
    """The follow-up goes out the moment ``response.completed`` arrives, while the stream is
    still open; the gateway stored the response before sending that event."""
    fake = FakeUpstream()
    if upstream == "mock":
        live = serve()
        model = "mock-chat"
    else:
        live = serve(native_upstreams, upstreams=[fake])
        model = "m1"
    then = "hang" if upstream == "native, kept open" else "end"
    with httpx.Client(base_url=live.base_url, timeout=10.0) as http:
        previous = None
        for turn in range(3):
            fake.push(
                Behavior(events=native_stream(["ok"], response_id=f"resp_s{turn}"), then=then),
                Behavior(json_body=response_body("ok", response_id=f"resp_j{turn}")),
            )
            body: dict[str, Any] = {"model": model, "input": f"turn {turn}", "stream": True}
            if previous is not None:
                body["previous_response_id"] = previous
            follow_up = None
            with http.stream("POST", "/responses", json=body) as streamed:
                assert streamed.status_code == 200, streamed.read()
                for name, data in iter_sse(streamed.iter_lines()):
                    if name == "response.completed":
                        follow_up = http.post(
                            "/responses",
                            json={
                                "model": model,
                                "input": f"after {turn}",
                                "previous_response_id": data["response"]["id"],
                            },
                        )
                        break
            assert follow_up is not None, "the stream ended without response.completed"
            assert follow_up.status_code == 200, follow_up.json()
            previous = follow_up.json()["id"]


def test_responses_belong_to_their_api_key(serve: Serve) -> None:
    live = serve(server=ServerConfig(api_keys=[SecretStr("key-a"), SecretStr("key-b")]))
    with (
        live.client(api_key="key-a") as alice,
        live.client(api_key="key-b") as bob,
    ):
        mine = alice.responses.create(model="mock-chat", input="a secret")
        with alice.responses.stream(model="mock-chat", input="another") as stream:
            streamed = stream.get_final_response()
        for response_id in (mine.id, streamed.id):
            with pytest.raises(openai.NotFoundError):
                bob.responses.retrieve(response_id)
            with pytest.raises(openai.NotFoundError):
                bob.responses.delete(response_id)
            with pytest.raises(openai.NotFoundError) as follow_up:
                bob.responses.create(
                    model="mock-chat", input="tell me", previous_response_id=response_id
                )
            assert follow_up.value.code == "previous_response_not_found"
        # Bob's delete changed nothing.
        assert alice.responses.retrieve(mine.id).output_text == "You said: a secret"
        assert alice.responses.retrieve(streamed.id).output_text == "You said: another"
        chained = alice.responses.create(
            model="mock-chat", input="and now", previous_response_id=mine.id
        )
    assert chained.output_text == "You said: and now"
    assert len(live.mock().requests[-1].messages) == 3


@pytest.mark.anyio
async def test_async_client(serve: Serve) -> None:
    live = serve()
    async with live.async_client(_strict_response_validation=True) as client:
        first = await client.responses.create(model="mock-chat", input="hello async")
        async with client.responses.stream(
            model="mock-chat", input="and a stream", previous_response_id=first.id
        ) as stream:
            kinds = [event.type async for event in stream]
            final = await stream.get_final_response()
        kept = await client.responses.retrieve(final.id)
    assert first.output_text == "You said: hello async"
    assert kinds == text_order(5)
    assert final.output_text == "You said: and a stream"
    assert final.previous_response_id == first.id
    assert kept.output_text == final.output_text
    assert len(live.mock().requests[-1].messages) == 3


# A chain of turns that fails over between providers


CAPITAL = "What is the capital of France?"
RIVER = "Which river runs through it?"
PEOPLE = "How many people live there?"
ANSWERS = ("Paris is the capital.", "The Seine.", "About two million.")


def chat_answer(text: str, *, stream: bool) -> Behavior:
    """A chat upstream's answer, as a stream or a whole completion."""
    if stream:
        return Behavior(events=chat_stream(re.findall(r"\s*\S+", text)))
    return Behavior(json_body=completion(text))


def native_answer(text: str, *, stream: bool, response_id: str) -> Behavior:
    """A Responses upstream's answer (after a reasoning item), as a stream or a whole one."""
    if stream:
        return Behavior(events=native_stream([text], response_id=response_id, reasoning=True))
    return Behavior(json_body=response_body(text, response_id=response_id, reasoning=True))


FAILURES = {
    "503": Behavior(status=503, json_body=error_body("overloaded", type="server_error")),
    "connection reset": Behavior(reset_now=True),
}


@pytest.mark.parametrize("failure", FAILURES)
@pytest.mark.parametrize("stream", [False, True])
def test_a_chain_fails_over_mid_way(serve: Serve, stream: bool, failure: str) -> None:
    first, second = FakeUpstream(), FakeUpstream()
    first.push(
        chat_answer(ANSWERS[0], stream=stream),
        FAILURES[failure],
        chat_answer(ANSWERS[2], stream=stream),
    )
    second.push(chat_answer(ANSWERS[1], stream=stream))
    live = serve(chat_upstreams, upstreams=[first, second], routing=fast_routing())
    turns = []
    with live.client(_strict_response_validation=True) as client:
        previous = None
        for question in (CAPITAL, RIVER, PEOPLE):
            response, headers = take_turn(
                client,
                stream=stream,
                model="m1",
                instructions="Answer in one sentence.",
                input=question,
                **({"previous_response_id": previous} if previous else {}),
            )
            turns.append((response, headers))
            previous = response["id"]
    assert [text_of(r) for r, _ in turns] == list(ANSWERS)
    assert [h["x-leap-provider"] for _, h in turns] == ["up0", "up1", "up0"]
    assert [h["x-leap-attempts"] for _, h in turns] == ["1", "2", "1"]
    assert turns[2][0]["previous_response_id"] == turns[1][0]["id"]
    system = {"role": "system", "content": "Answer in one sentence."}
    history = [
        system,
        {"role": "user", "content": CAPITAL},
        {"role": "assistant", "content": ANSWERS[0]},
        {"role": "user", "content": RIVER},
        {"role": "assistant", "content": ANSWERS[1]},
        {"role": "user", "content": PEOPLE},
    ]
    one, failed, three = first.chat_requests
    [two] = second.chat_requests
    assert chat_messages(one) == history[:2]
    assert chat_messages(failed) == history[:4]
    assert chat_messages(two) == history[:4]
    assert chat_messages(three) == history
    assert all(seen.json.get("stream", False) is stream for seen in (one, two, three))


@pytest.mark.parametrize("stream", [False, True])
def test_a_chain_across_protocols(serve: Serve, stream: bool) -> None:
    """Turns 1 and 3 are passed through to a Responses upstream, turn 2 fails over to a chat
    one: each gets the whole history in its own protocol."""
    native, chat = FakeUpstream(), FakeUpstream()
    native.push(
        native_answer(ANSWERS[0], stream=stream, response_id="resp_up_t1"),
        FAILURES["503"],
        native_answer(ANSWERS[2], stream=stream, response_id="resp_up_t3"),
    )
    chat.push(chat_answer(ANSWERS[1], stream=stream))
    live = serve(
        lambda ups: [
            upstream_config("native", ups[0], protocols=["responses"], max_retries=0),
            upstream_config("chat", ups[1], priority=1, max_retries=0),
        ],
        upstreams=[native, chat],
        routing=fast_routing(),
    )
    turns = []
    with live.client(_strict_response_validation=True) as client:
        previous = None
        for question in (CAPITAL, RIVER, PEOPLE):
            response, _ = take_turn(
                client,
                stream=stream,
                model="m1",
                input=question,
                **({"previous_response_id": previous} if previous else {}),
            )
            turns.append(response)
            previous = response["id"]
        kept = client.responses.retrieve(turns[1]["id"])
    assert [text_of(r) for r in turns] == list(ANSWERS)
    assert [r["id"] for r in turns][::2] == ["resp_up_t1", "resp_up_t3"]
    assert kept.output_text == ANSWERS[1]
    [two] = chat.chat_requests
    assert chat_messages(two) == [
        {"role": "user", "content": CAPITAL},
        {"role": "assistant", "content": ANSWERS[0]},
        {"role": "user", "content": RIVER},
    ]
    one, failed, three = native.seen
    assert one.json["input"] == [user(CAPITAL)]
    for seen in (one, failed, three):
        assert seen.path == "/v1/responses"
        assert "previous_response_id" not in seen.json
    assert failed.json["input"] == [user(CAPITAL), *turns[0]["output"], user(RIVER)]
    assert three.json["input"] == [
        user(CAPITAL),
        *turns[0]["output"],  # the reasoning item and the message, as the upstream sent them
        user(RIVER),
        *turns[1]["output"],  # the chat upstream's answer as a Responses message
        user(PEOPLE),
    ]
    assert [item["type"] for item in turns[0]["output"]] == ["reasoning", "message"]


# Passed through to an upstream that speaks Responses


CLIENT_FIELDS: Any = {
    "instructions": "Be brief.",
    "reasoning": {"effort": "low", "summary": "auto"},
    "include": ["reasoning.encrypted_content"],
    "prompt_cache_key": "session-42",
    "metadata": {"ticket": "T-7"},
    "max_output_tokens": 200,
    "service_tier": "auto",
}
# A field the SDK and the gateway do not know yet: it must still reach the upstream.
UNKNOWN: Any = {"future_option": {"mode": "x"}}


def test_native_json_passes_through(serve: Serve) -> None:
    body = encode(response_body("Hi!", reasoning=True))
    fake = FakeUpstream(
        default=Behavior(
            raw_body=body,
            headers={"content-type": "application/json", "x-request-id": "req_up_1"},
        )
    )
    live = serve(native_upstreams, upstreams=[fake])
    with live.client(api_key="client-key", _strict_response_validation=True) as client:
        raw = client.responses.with_raw_response.create(
            model="m1", input="hi", extra_body=UNKNOWN, **CLIENT_FIELDS
        )
        response = raw.parse()
        fake.push(
            Behavior(json_body=response_body("Again!", response_id="resp_up_2", reasoning=True))
        )
        follow_up = client.responses.create(
            model="m1", input="again", previous_response_id=response.id, extra_body=UNKNOWN
        )
    assert raw.http_response.content == body
    assert raw.headers["x-leap-provider"] == "up0"
    assert raw.headers["x-request-id"] == "req_up_1"
    assert response.id == "resp_up_1"
    assert response.output_text == "Hi!"
    assert follow_up.output_text == "Again!"
    first, second = fake.seen
    assert first.path == second.path == "/v1/responses"
    assert first.json == {
        "model": "m1",
        "input": [user("hi")],
        "stream": False,
        **CLIENT_FIELDS,
        **UNKNOWN,
    }
    assert "previous_response_id" not in second.json
    assert second.json["input"] == [
        user("hi"),
        *json.loads(body)["output"],
        user("again"),
    ]
    assert second.json["future_option"] == UNKNOWN["future_option"]
    for seen in (first, second):
        assert seen.headers["Authorization"] == "Bearer up-key"
        assert not any("client-key" in value for value in seen.headers.values())


def test_native_stream_passes_through(serve: Serve) -> None:
    frames = native_stream(["Hel", "lo", " there"], reasoning=True)
    fake = FakeUpstream(default=Behavior(events=frames))
    live = serve(native_upstreams, upstreams=[fake])
    with live.client(api_key="client-key", _strict_response_validation=True) as client:
        with client.responses.with_streaming_response.create(
            model="m1", input="hi", stream=True, extra_body=UNKNOWN, **CLIENT_FIELDS
        ) as raw:
            assert raw.headers["content-type"].startswith("text/event-stream")
            assert raw.headers["x-leap-provider"] == "up0"
            received = raw.read()
        with client.responses.stream(model="m1", input="hi", **CLIENT_FIELDS) as stream:
            kinds = [event.type for event in stream]
            final = stream.get_final_response()
        follow_up, _ = take_turn(
            client, stream=True, model="m1", input="more", previous_response_id=final.id
        )
    assert received == b"".join(frames)
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-1] == "response.completed"
    assert final.id == "resp_up_1"
    assert final.output_text == "Hello there"
    assert text_of(follow_up) == "Hello there"
    first, _, third = fake.seen
    assert first.json == {
        "model": "m1",
        "input": [user("hi")],
        "stream": True,
        **CLIENT_FIELDS,
        **UNKNOWN,
    }
    assert first.headers["Accept"] == "text/event-stream"
    assert "previous_response_id" not in third.json
    assert [item["type"] for item in third.json["input"]] == [
        "message",
        "reasoning",
        "message",
        "message",
    ]
    assert third.json["input"][-1] == user("more")
    for seen in fake.seen:
        assert seen.headers["Authorization"] == "Bearer up-key"
        assert not any("client-key" in value for value in seen.headers.values())


# Failover before the first content event


@pytest.mark.parametrize("failure", ["error", "error-nested", "response.failed"])
def test_a_native_failure_before_content_fails_over(serve: Serve, failure: str) -> None:
    answer = native_stream(["Hel", "lo"], response_id="resp_b")
    first = FakeUpstream(default=Behavior(events=failed_stream(failure)))
    second = FakeUpstream(default=Behavior(events=answer))
    live = serve(native_upstreams, upstreams=[first, second], routing=fast_routing())
    with live.client(_strict_response_validation=True) as client:
        with client.responses.with_streaming_response.create(
            model="m1", input="hi", stream=True
        ) as raw:
            headers = raw.headers
            received = raw.read()
        with client.responses.stream(model="m1", input="hi") as stream:
            final = stream.get_final_response()
    assert headers["x-leap-attempts"] == "2"
    assert headers["x-leap-provider"] == "up1"
    assert received == b"".join(answer)
    events = [data for _, data in parse_sse(received.decode().splitlines())]
    assert types_of(events).count("response.created") == 1
    assert assert_stream_rules(events) == "resp_b"
    assert final.id == "resp_b"
    assert final.output_text == "Hello"
    assert len(first.seen) >= 1
    assert len(second.seen) == 2


QUOTA_429 = Behavior(
    status=429,
    json_body=error_body(
        "You exceeded your current quota", type="insufficient_quota", code="insufficient_quota"
    ),
)
# A chat stream that says only its role, then runs out of quota: still nothing to show.
ROLE_THEN_QUOTA = Behavior(
    events=sse(
        chunk({"role": "assistant", "content": ""}),
        error_body("You exceeded your current quota", code="insufficient_quota"),
        done=False,
    )
)
NATIVE: Any = {"protocols": ["responses"]}


@pytest.mark.parametrize(
    ("options", "failing", "stream"),
    [
        pytest.param({}, QUOTA_429, False, id="chat 429"),
        pytest.param({}, QUOTA_429, True, id="chat 429, stream"),
        pytest.param({}, ROLE_THEN_QUOTA, True, id="chat role then quota error, stream"),
        pytest.param(NATIVE, QUOTA_429, False, id="native 429"),
        pytest.param(
            NATIVE, Behavior(events=failed_stream("error")), True, id="native error event, stream"
        ),
    ],
)
def test_a_failure_before_content_fails_over_to_a_translated_provider(
    serve: Serve, options: Any, failing: Behavior, stream: bool
) -> None:
    """The first provider runs out of quota before any content; the mock answers, translated
    from chat, and the client sees only the mock's response."""
    fake = FakeUpstream(default=failing)
    live = serve(
        lambda ups: [
            upstream_config("first", ups[0], max_retries=0, **options),
            mock_for_m1(priority=1),
        ],
        upstreams=[fake],
        routing=fast_routing(),
    )
    with live.client(_strict_response_validation=True) as client:
        response, headers = take_turn(client, stream=stream, model="m1", input="hi there")
    assert headers["x-leap-attempts"] == "2"
    assert headers["x-leap-provider"] == "mock"
    assert re.fullmatch(r"resp_[0-9a-f]{24}", response["id"])
    assert text_of(response) == "You said: hi there"
    assert len(fake.seen) == 1


# Cuts after content, and errors before any


def test_a_native_stream_cut_after_content(serve: Serve) -> None:
    partial = ResponseEvents(response_id="resp_cut").preamble().text_open(["Hel", "lo"])
    first = FakeUpstream(default=Behavior(events=partial.frames, then="reset"))
    second = FakeUpstream(default=Behavior(events=native_stream(["no"])))
    live = serve(native_upstreams, upstreams=[first, second], routing=fast_routing())
    with live.client(_strict_response_validation=True) as client:
        stream = client.responses.create(model="m1", input="hi", stream=True)
        received, error = collect_until_error(stream)
        with pytest.raises(openai.NotFoundError):
            client.responses.retrieve("resp_cut")
    assert not isinstance(error, openai.APIStatusError)
    assert [e.type for e in received] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
    ]
    assert {e.response.id for e in received[:2]} == {"resp_cut"}
    assert isinstance(error.body, dict)
    assert error.body["code"] == "stream_interrupted"
    # Past the first content event there is no failover: it would repeat text.
    assert (len(first.seen), len(second.seen)) == (1, 0)


def test_a_translated_stream_cut_after_content(serve: Serve) -> None:
    events = chat_stream(["Hel", "lo"], done=False, finish=False)
    first = FakeUpstream(default=Behavior(events=events, then="reset"))
    second = FakeUpstream()
    live = serve(chat_upstreams, upstreams=[first, second], routing=fast_routing())
    with live.client(_strict_response_validation=True) as client:
        stream = client.responses.create(model="m1", input="hi", stream=True)
        received, error = collect_until_error(stream)
        with client.responses.stream(model="m1", input="hi") as helper:
            helper_events, helper_error = collect_until_error(helper)
        with pytest.raises(openai.NotFoundError):
            client.responses.retrieve(received[0].response.id)
    assert not isinstance(error, openai.APIStatusError)
    assert isinstance(error.body, dict)
    assert error.body["code"] == "stream_interrupted"
    assert error.message == helper_error.message
    assert [e.type for e in helper_events][-1] == "response.failed"
    kinds = [e.type for e in received]
    assert kinds == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.failed",
    ]
    failed = received[-1].response
    assert failed.status == "failed"
    assert failed.error is not None
    assert failed.id == received[0].response.id
    assert [e.sequence_number for e in received] == list(range(len(received)))
    assert len(second.chat_requests) == 0


@pytest.mark.parametrize("stream", [False, True])
def test_errors_before_the_stream(live: LiveGateway, stream: bool) -> None:
    with live.client() as client:
        with pytest.raises(openai.NotFoundError) as unknown:
            client.responses.create(model="no-such-model", input="hi", stream=stream)
        with pytest.raises(openai.BadRequestError) as bad_item:
            client.responses.create(
                model="mock-chat",
                input=[{"type": "function_call_output", "output": "lost"}],
                stream=stream,
            )
        with pytest.raises(openai.BadRequestError) as bad_value:
            client.responses.create(model="mock-chat", input="hi", temperature=3, stream=stream)
    assert unknown.value.status_code == 404
    assert unknown.value.code == "model_not_found"
    assert unknown.value.param == "model"
    assert bad_item.value.status_code == 400
    assert bad_item.value.param == "input[0].call_id"
    assert bad_value.value.param == "temperature"
    for caught in (unknown, bad_item, bad_value):
        assert assert_openai_error_body(caught.value.response)["type"] == "invalid_request_error"


# Codex CLI's HTTP shape


CODEX_INSTRUCTIONS = "You are Codex, a coding agent running in a terminal.\n" + (
    "Follow the repository's conventions; keep changes small and explain them.\n" * 400
)
SHELL_TOOL: Any = {
    "type": "function",
    "name": "shell",
    "description": "Runs a shell command and returns its output.",
    "strict": False,
    "parameters": {
        "type": "object",
        "properties": {
            "command": {"type": "array", "items": {"type": "string"}},
            "workdir": {"type": "string"},
            "timeout_ms": {"type": "number"},
        },
        "required": ["command"],
        "additionalProperties": False,
    },
}
PLAN_TOOL: Any = {
    "type": "function",
    "name": "update_plan",
    "description": "Updates the task plan.",
    "strict": False,
    "parameters": {
        "type": "object",
        "properties": {"plan": {"type": "array", "items": {"type": "string"}}},
        "required": ["plan"],
        "additionalProperties": False,
    },
}
SEARCH_TOOL: Any = {
    "type": "function",
    "name": "search_docs",
    "description": "Searches the project documentation.",
    "strict": False,
    "parameters": {
        "type": "object",
        "properties": {"query": {"type": "string"}},
        "required": ["query"],
        "additionalProperties": False,
    },
}
CODEX_TOOLS: Any = [
    SHELL_TOOL,
    PLAN_TOOL,
    {
        "type": "namespace",
        "name": "mcp__docs",
        "description": "Tools of the docs MCP server.",
        "tools": [SEARCH_TOOL],
    },
    {"type": "web_search", "external_web_access": False},
]
SESSION = "0199c1d2-7a4e-7d31-9b2f-5c0e4a6f8b13"
CODEX_HEADERS = {
    "Accept": "text/event-stream",
    "Authorization": "Bearer codex-key",
    "originator": "codex_exec",
    "session-id": SESSION,
    "thread-id": SESSION,
    "x-client-request-id": SESSION,
    "x-codex-turn-metadata": '{"turn_id":"1"}',
    "User-Agent": "codex_exec/0.171.0 (Linux; x86_64)",
}


def codex_body(model: str, prompt: str) -> dict[str, Any]:
    """A Codex CLI turn: the whole history, every tool kind it sends, nothing stored."""
    return {
        "model": model,
        "input": [
            {
                "type": "message",
                "role": "developer",
                "content": [{"type": "input_text", "text": CODEX_INSTRUCTIONS}],
            },
            user("<environment_context><cwd>/work/app</cwd></environment_context>"),
            user("List the files."),
            {
                "type": "reasoning",
                "summary": [],
                "encrypted_content": "gAAAAABpZ3-earlier-reasoning==",
            },
            {
                "type": "function_call",
                "name": "shell",
                "arguments": '{"command":["ls"]}',
                "call_id": "call_ls_1",
            },
            {"type": "function_call_output", "call_id": "call_ls_1", "output": "README.md\nsrc"},
            {
                "type": "message",
                "role": "assistant",
                "content": [{"type": "output_text", "text": "Two entries: README.md, src."}],
            },
            user(prompt),
        ],
        "tools": CODEX_TOOLS,
        "tool_choice": "auto",
        "parallel_tool_calls": True,
        "reasoning": {"summary": "auto"},
        "store": False,
        "stream": True,
        "include": ["reasoning.encrypted_content"],
        "prompt_cache_key": SESSION,
        "client_metadata": {"session_id": SESSION},
    }


def codex_turn(
    live: LiveGateway, body: dict[str, Any]
) -> tuple[list[tuple[str | None, dict[str, Any]]], httpx.Headers]:
    """One Codex turn over HTTP: read up to ``response.completed``, then hang up at once, as
    Codex does."""
    events: list[tuple[str | None, dict[str, Any]]] = []
    with (
        httpx.Client(base_url=live.base_url, timeout=10.0) as http,
        http.stream("POST", "/responses", json=body, headers=CODEX_HEADERS) as response,
    ):
        assert response.status_code == 200, response.read()
        headers = response.headers
        for name, data in iter_sse(response.iter_lines()):
            events.append((name, data))
            if name in TERMINAL:
                break
    return events, headers


def requests_recorded(live: LiveGateway, count: int) -> list[dict[str, str]]:
    """The ``leap_requests_total`` series of /metrics, one entry per request, once ``count``
    requests are recorded (a request is recorded when it has ended, at the gateway's pace)."""
    deadline = time.monotonic() + RECORD_WAIT
    with httpx.Client(base_url=f"http://127.0.0.1:{live.port}") as http:
        while True:
            text = http.get("/metrics").text
            recorded = []
            for line in text.splitlines():
                if line.startswith("leap_requests_total{"):
                    labels, value = line.rsplit(" ", 1)
                    found = dict(re.findall(r'(\w+)="([^"]*)"', labels))
                    recorded.extend([found] * int(float(value)))
            errors = [line for line in text.splitlines() if line.startswith("leap_errors_total{")]
            if len(recorded) >= count or time.monotonic() > deadline:
                assert errors == []
                return recorded


def test_codex_over_the_mock(serve: Serve) -> None:
    live = serve()
    events, headers = codex_turn(live, codex_body("mock-chat", "Use search_docs for install"))
    assert headers["x-leap-provider"] == "mock"
    data = [event for _, event in events]
    assert_stream_rules(data)
    final = data[-1]["response"]
    assert final["status"] == "completed"
    assert final["store"] is False
    [call] = final["output"]
    assert call["type"] == "function_call"
    assert call["name"] == "search_docs"
    assert call["namespace"] == "mcp__docs"
    assert set(json.loads(call["arguments"])) == {"query"}
    request = live.mock().requests[-1].model_dump(exclude_none=True)
    assert [t["function"]["name"] for t in request["tools"]] == [
        "shell",
        "update_plan",
        "search_docs",
    ]
    assert [m["role"] for m in request["messages"]] == [
        "developer",
        "user",
        "user",
        "assistant",
        "tool",
        "assistant",
        "user",
    ]
    assert request["messages"][0]["content"] == CODEX_INSTRUCTIONS
    [recorded] = requests_recorded(live, 1)
    assert recorded["status"] == "200"
    assert recorded["stream"] == "true"
    # Nothing is stored: Codex sends the whole history every turn.
    with live.client() as client, pytest.raises(openai.NotFoundError):
        client.responses.retrieve(final["id"])


def test_codex_over_a_chat_upstream(serve: Serve) -> None:
    call = chunk(
        {
            "role": "assistant",
            "tool_calls": [
                {
                    "index": 0,
                    "id": "call_up_1",
                    "type": "function",
                    "function": {"name": "search_docs", "arguments": ""},
                }
            ],
        }
    )
    arguments = chunk(
        {"tool_calls": [{"index": 0, "function": {"arguments": '{"query":"install"}'}}]}
    )
    fake = FakeUpstream(
        default=Behavior(events=sse(call, arguments, chunk({}, finish="tool_calls")))
    )
    live = serve(chat_upstreams, upstreams=[fake])
    events, _ = codex_turn(live, codex_body("m1", "How do I install it?"))
    data = [event for _, event in events]
    assert_stream_rules(data)
    final = data[-1]["response"]
    [item] = final["output"]
    assert item["type"] == "function_call"
    assert (item["name"], item["namespace"], item["call_id"]) == (
        "search_docs",
        "mcp__docs",
        "call_up_1",
    )
    assert item["arguments"] == '{"query":"install"}'
    [seen] = fake.chat_requests
    sent = seen.json
    assert [tool["type"] for tool in sent["tools"]] == ["function"] * 3
    assert [tool["function"] for tool in sent["tools"]] == [
        {key: tool[key] for key in ("name", "description", "parameters", "strict")}
        for tool in (SHELL_TOOL, PLAN_TOOL, SEARCH_TOOL)
    ]
    assert "web_search" not in json.dumps(sent["tools"])
    assert sent["tool_choice"] == "auto"
    assert sent["parallel_tool_calls"] is True
    assert sent["stream"] is True
    messages = sent["messages"]
    assert [m["role"] for m in messages] == [
        "developer",
        "user",
        "user",
        "assistant",
        "tool",
        "assistant",
        "user",
    ]
    assert messages[3]["tool_calls"] == [
        {
            "id": "call_ls_1",
            "type": "function",
            "function": {"name": "shell", "arguments": '{"command":["ls"]}'},
        }
    ]
    assert messages[4] == {"role": "tool", "tool_call_id": "call_ls_1", "content": "README.md\nsrc"}
    assert seen.headers["Authorization"] == "Bearer up-key"
    [recorded] = requests_recorded(live, 1)
    assert (recorded["status"], recorded["provider"]) == ("200", "up0")


def test_codex_leaving_after_completed_is_not_an_error(serve: Serve) -> None:
    """The upstream keeps its connection open after ``response.completed``; Codex hangs up
    right after that event. The request counts as answered (200), not as a client gone (499),
    and a stored turn is still kept."""
    fake = FakeUpstream()
    fake.push(
        Behavior(events=native_stream(["Done."], response_id="resp_codex_1"), then="hang"),
        Behavior(events=native_stream(["Kept."], response_id="resp_codex_2"), then="hang"),
    )
    live = serve(native_upstreams, upstreams=[fake])
    body = codex_body("m1", "Summarize the README.")
    events, _ = codex_turn(live, body)
    stored_events, _ = codex_turn(live, {**body, "store": True})
    assert events[-1][0] == "response.completed"
    assert stored_events[-1][1]["response"]["id"] == "resp_codex_2"
    recorded = requests_recorded(live, 2)
    assert [(r["status"], r["stream"], r["provider"]) for r in recorded] == [
        ("200", "true", "up0")
    ] * 2
    sent = fake.seen[0].json
    assert sent == {**body, "model": "m1"}
    assert sent["tools"] == CODEX_TOOLS
    with live.client(api_key="codex-key") as client:
        assert client.responses.retrieve("resp_codex_2").output_text == "Kept."
        with pytest.raises(openai.NotFoundError):
            client.responses.retrieve("resp_codex_1")
