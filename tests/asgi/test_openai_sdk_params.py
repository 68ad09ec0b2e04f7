"""Provider-specific parameters through the official openai SDK, live, against fake upstreams
that refuse what the real services refuse: a request that would fail there is adapted on the
way out, or refused up front with OpenAI's 400 naming the parameter, before any upstream
call."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import openai
import pytest

from tests.asgi.live_server import Serve, upstream_config
from tests.asgi.sdk_wire import assert_openai_error_body
from tests.asgi.strict_upstreams import (
    StrictUpstream,
    anthropic_chat,
    groq,
    lm_studio,
    mistral,
    openai_reasoning,
)
from tests.fake_upstream import FakeUpstream

HI: Any = [{"role": "user", "content": "hi"}]
SCHEMA: Any = {
    "type": "json_schema",
    "json_schema": {"name": "answer", "schema": {"type": "object"}},
}


def reasoning() -> StrictUpstream:
    return StrictUpstream(openai_reasoning, models=("o3-mini",))


def openai_preset(upstreams: Sequence[FakeUpstream]) -> list[Any]:
    return [upstream_config("u1", upstreams[0], preset="openai", models=["o3-mini"])]


def test_the_strict_fake_refuses_what_openai_refuses(serve: Serve) -> None:
    # Without the preset's rules the request goes as sent, and fails as it would at OpenAI.
    fake = reasoning()
    live = serve(
        lambda ups: [upstream_config("plain", ups[0], models=["o3-mini"], max_retries=0)],
        upstreams=[fake],
    )
    with live.client() as client, pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="o3-mini", messages=HI, max_tokens=50)
    assert caught.value.code == "unsupported_parameter"
    assert caught.value.param == "max_tokens"
    assert len(fake.chat_requests) == 1


def test_a_reasoning_model_gets_max_completion_tokens_and_no_temperature(serve: Serve) -> None:
    fake = reasoning()
    live = serve(openai_preset, upstreams=[fake])
    with live.client() as client:
        answer = client.chat.completions.create(
            model="o3-mini", messages=HI, max_tokens=50, temperature=0.2, top_p=0.9, seed=4
        )
        chunks = list(
            client.chat.completions.create(
                model="o3-mini",
                messages=HI,
                max_tokens=50,
                temperature=0.2,
                stream=True,
                stream_options={"include_usage": True},
            )
        )
    assert answer.choices[0].message.content == "fine"
    whole, streamed = (seen.json for seen in fake.chat_requests)
    assert whole == {"model": "o3-mini", "messages": HI, "max_completion_tokens": 50, "seed": 4}
    assert streamed["max_completion_tokens"] == 50
    assert "max_tokens" not in streamed
    assert "temperature" not in streamed
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "fine"
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.total_tokens == 7


def test_logprobs_on_a_reasoning_model_is_a_400_before_any_call(serve: Serve) -> None:
    fake = reasoning()
    live = serve(openai_preset, upstreams=[fake])
    with live.client() as client, pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="o3-mini", messages=HI, logprobs=True)
    error = assert_openai_error_body(caught.value.response)
    assert error == {
        "message": "No provider serving `o3-mini` can take this request's `logprobs` as "
        "sent: u1 does not take logprobs",
        "type": "invalid_request_error",
        "param": "logprobs",
        "code": "unsupported_parameter",
    }
    assert fake.chat_requests == []


def groq_first(upstreams: Sequence[FakeUpstream]) -> list[Any]:
    return [
        upstream_config("groq", upstreams[0], preset="groq", priority=0, max_retries=0),
        upstream_config("other", upstreams[1], priority=1, max_retries=0),
    ]


def test_groq_is_skipped_for_what_it_refuses_and_used_for_the_rest(serve: Serve) -> None:
    fast, other = StrictUpstream(groq, models=("m1",)), StrictUpstream(lambda b: None, models=())
    live = serve(groq_first, upstreams=[fast, other])
    with live.client() as client:
        several = client.chat.completions.with_raw_response.create(model="m1", messages=HI, n=2)
        scored = client.chat.completions.with_raw_response.create(
            model="m1", messages=HI, logprobs=True, top_logprobs=2
        )
        plain = client.chat.completions.with_raw_response.create(
            model="m1", messages=HI, n=1, logprobs=False
        )
    assert several.headers["x-leap-provider"] == "other"
    assert scored.headers["x-leap-provider"] == "other"
    assert plain.headers["x-leap-provider"] == "groq"
    # Both refusals were decided before any call: groq saw only the request it can serve,
    # without the logprobs=false it would have refused.
    [seen] = fast.chat_requests
    assert seen.json == {"model": "m1", "messages": HI, "n": 1}
    assert [s.json.get("n") for s in other.chat_requests] == [2, None]
    assert other.chat_requests[1].json["logprobs"] is True
    # A skip is no attempt: one upstream call served each request.
    assert several.headers["x-leap-attempts"] == "1"


def test_n_above_what_every_provider_makes_is_a_400_naming_them(serve: Serve) -> None:
    fast = StrictUpstream(groq, models=("m1",))
    claude = StrictUpstream(anthropic_chat, models=("m1",))
    live = serve(
        lambda ups: [
            upstream_config("groq", ups[0], preset="groq"),
            upstream_config("claude", ups[1], preset="anthropic"),
        ],
        upstreams=[fast, claude],
    )
    with live.client() as client:
        for stream in (False, True):
            with pytest.raises(openai.BadRequestError) as caught:
                client.chat.completions.create(model="m1", messages=HI, n=3, stream=stream)
            error = assert_openai_error_body(caught.value.response)
            assert caught.value.status_code == 400
            assert error["param"] == "n"
            assert error["code"] == "unsupported_value"
            assert error["message"] == (
                "No provider serving `m1` can take this request's `n` as sent: "
                "groq takes n up to 1; claude takes n up to 1"
            )
    assert fast.chat_requests == claude.chat_requests == []


def test_a_json_schema_the_provider_would_ignore_is_refused(serve: Serve) -> None:
    claude = StrictUpstream(anthropic_chat, models=("m1",))
    live = serve(
        lambda ups: [upstream_config("claude", ups[0], preset="anthropic")], upstreams=[claude]
    )
    with live.client() as client:
        with pytest.raises(openai.BadRequestError) as caught:
            client.chat.completions.create(model="m1", messages=HI, response_format=SCHEMA)
        answer = client.chat.completions.create(
            model="m1", messages=HI, temperature=1.5, seed=1, response_format={"type": "text"}
        )
    assert caught.value.param == "response_format"
    assert caught.value.code == "unsupported_value"
    assert "claude does not take a response_format of type json_schema" in caught.value.message
    assert answer.choices[0].message.content == "fine"
    [seen] = claude.chat_requests
    # Anthropic caps temperature at 1 and ignores seed: the gateway says so instead.
    assert seen.json == {
        "model": "m1",
        "messages": HI,
        "temperature": 1,
        "response_format": {"type": "text"},
    }


def test_mistral_gets_random_seed_and_no_stream_options(serve: Serve) -> None:
    strict = StrictUpstream(mistral, models=("m1",), always_usage=True)
    live = serve(
        lambda ups: [upstream_config("mistral", ups[0], preset="mistral")], upstreams=[strict]
    )
    with live.client() as client:
        answer = client.chat.completions.create(
            model="m1", messages=HI, seed=7, max_completion_tokens=30, user="u-1"
        )
        chunks = list(
            client.chat.completions.create(
                model="m1",
                messages=HI,
                stream=True,
                stream_options={"include_usage": True},
            )
        )
        quiet = list(client.chat.completions.create(model="m1", messages=HI, stream=True))
    assert answer.choices[0].message.content == "fine"
    whole, streamed, unasked = (seen.json for seen in strict.chat_requests)
    assert whole == {"model": "m1", "messages": HI, "random_seed": 7, "max_tokens": 30}
    assert streamed == {"model": "m1", "messages": HI, "stream": True}
    assert unasked == streamed
    # The client asked for usage: Mistral sends it anyway, and the client gets it.
    assert chunks[-1].usage is not None
    assert chunks[-1].choices == []
    assert all(c.usage is None for c in quiet)


def test_ollama_reads_max_tokens_only(serve: Serve) -> None:
    local = StrictUpstream(lambda body: None, models=("llama3.2",))
    live = serve(
        lambda ups: [upstream_config("local", ups[0], preset="ollama", models=["llama3.2"])],
        upstreams=[local],
    )
    with live.client() as client:
        client.chat.completions.create(model="llama3.2", messages=HI, max_completion_tokens=64)
        with pytest.raises(openai.BadRequestError) as caught:
            client.chat.completions.create(
                model="llama3.2",
                messages=HI,
                tools=[{"type": "function", "function": {"name": "f", "parameters": {}}}],
                tool_choice="required",
            )
    [seen] = local.chat_requests
    assert seen.json == {"model": "llama3.2", "messages": HI, "max_tokens": 64}
    assert caught.value.param == "tool_choice"
    assert "local does not take a tool_choice of type required" in caught.value.message


def test_config_overrides_the_preset(serve: Serve) -> None:
    fake = reasoning()
    live = serve(
        lambda ups: [
            upstream_config(
                "u1",
                ups[0],
                preset="openai",
                models=["o3-mini"],
                params={"defaults": {"reasoning_effort": "low"}, "drop": ["seed"]},
            )
        ],
        upstreams=[fake],
    )
    with live.client() as client:
        client.chat.completions.create(model="o3-mini", messages=HI, seed=1, max_tokens=9)
    [seen] = fake.chat_requests
    assert seen.json == {
        "model": "o3-mini",
        "messages": HI,
        "max_completion_tokens": 9,
        "reasoning_effort": "low",
    }


def test_a_responses_request_passed_through_loses_the_sampling_a_reasoning_model_refuses(
    serve: Serve,
) -> None:
    fake = reasoning()
    live = serve(
        lambda ups: [
            upstream_config("u1", ups[0], preset="openai", models=["o3-mini"], max_retries=0)
        ],
        upstreams=[fake],
    )
    with live.client() as client:
        answer = client.responses.create(
            model="o3-mini", input="hi", temperature=0.2, top_p=0.9, max_output_tokens=50
        )
    assert answer.output_text == "fine"
    (sent,) = [s.json for s in fake.seen if s.path.endswith("/responses")]
    assert "temperature" not in sent
    assert "top_p" not in sent
    assert sent["max_output_tokens"] == 50
    assert fake.chat_requests == []  # passed through natively, not translated


def test_lm_studio_gets_a_forced_sole_tool_as_required_and_refuses_one_of_several(
    serve: Serve,
) -> None:
    fake = StrictUpstream(lm_studio, models=("qwen3-4b",))
    live = serve(
        lambda ups: [upstream_config("u1", ups[0], preset="lmstudio", models=["qwen3-4b"])],
        upstreams=[fake],
    )
    weather: Any = {"type": "function", "function": {"name": "weather", "parameters": {}}}
    clock: Any = {"type": "function", "function": {"name": "clock", "parameters": {}}}
    force: Any = {"type": "function", "function": {"name": "weather"}}
    with live.client() as client:
        answer = client.chat.completions.create(
            model="qwen3-4b", messages=HI, tools=[weather], tool_choice=force
        )
        with pytest.raises(openai.BadRequestError) as caught:
            client.chat.completions.create(
                model="qwen3-4b", messages=HI, tools=[weather, clock], tool_choice=force
            )
    assert answer.choices[0].message.content == "fine"
    (sent,) = [s.json for s in fake.chat_requests]  # the refused one never left
    assert sent["tool_choice"] == "required"
    assert caught.value.param == "tool_choice"
    assert caught.value.code == "unsupported_value"
    assert "takes tool_choice only as a string" in caught.value.message
