"""Conversation state of the Responses API through the official openai SDK, live: retrieve
and delete, ``store: false``, ``previous_response_id`` chains (at once, the instant a stream
completes, per API key), and chains whose turns fail over between providers and protocols."""

from __future__ import annotations

import re
from typing import Any

import httpx
import openai
import pytest
from pydantic import SecretStr

from leapasgi.config import ServerConfig
from tests.asgi.live_server import LiveGateway, Serve, fast_routing, upstream_config
from tests.asgi.responses_support import (
    chat_messages,
    chat_upstreams,
    native_upstreams,
    take_turn,
    text_of,
    user,
)
from tests.asgi.sdk_wire import assert_openai_error_body, iter_sse
from tests.fake_responses import response_body
from tests.fake_responses import text_stream as native_stream
from tests.fake_upstream import Behavior, FakeUpstream, completion, error_body
from tests.fake_upstream import text_stream as chat_stream


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


def chain(
    client: openai.OpenAI, *, stream: bool, **params: Any
) -> list[tuple[dict[str, Any], Any]]:
    """The three questions, each turn chained to the response before it: the Response
    objects (JSON) and their headers."""
    turns: list[tuple[dict[str, Any], Any]] = []
    for question in (CAPITAL, RIVER, PEOPLE):
        previous = {"previous_response_id": turns[-1][0]["id"]} if turns else {}
        turns.append(take_turn(client, stream=stream, input=question, **params, **previous))
    return turns


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
    with live.client(_strict_response_validation=True) as client:
        turns = chain(client, stream=stream, model="m1", instructions="Answer in one sentence.")
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
    with live.client(_strict_response_validation=True) as client:
        turns = [response for response, _ in chain(client, stream=stream, model="m1")]
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


def test_background_responses_are_refused_not_left_at_one_upstream(live: LiveGateway) -> None:
    with live.client() as client, pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(model="mock-chat", input="hi", background=True)
    assert caught.value.param == "background"
    assert_openai_error_body(caught.value.response)
