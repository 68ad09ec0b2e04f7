"""The official openai SDK's Responses API against the gateway over real HTTP, translated
through chat: create, stream, parse, tool round trips, the async client and errors before a
stream. Conversation state is in test_responses_state.py, native pass-through, failover and
cuts in test_responses_native.py, Codex CLI's request shape in test_responses_codex.py."""

from __future__ import annotations

import json
import re
from typing import Any

import openai
import pydantic
import pytest
from openai.types.responses import ResponseCreatedEvent

from tests.asgi.live_server import LiveGateway, Serve
from tests.asgi.responses_support import (
    assert_stream_rules,
    chat_upstreams,
    raw_stream,
    take_turn,
    text_of,
    text_order,
    types_of,
)
from tests.asgi.sdk_wire import assert_openai_error_body
from tests.fake_upstream import FakeUpstream

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


class Weather(pydantic.BaseModel):
    city: str
    days: int


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
