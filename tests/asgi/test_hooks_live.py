"""Hooks over HTTP, through the official SDKs: the redactor changes what the upstream
receives (chat whole and streamed; Messages and Responses native and translated), the model
policy's refusal comes in each protocol's error shape, and a hook's own answer comes as a 200
in each protocol, whole and streamed, with no upstream called."""

from __future__ import annotations

from typing import Any

import anthropic
import openai
import pytest

from leapasgi import ChatCompletion
from leapasgi.config import HookConfig
from leapasgi.hooks import Hook, HookContext
from tests.asgi.live_server import Serve, upstream_config
from tests.asgi.messages_support import native
from tests.fake_responses import response_body
from tests.fake_responses import text_stream as responses_stream
from tests.fake_upstream import Behavior, FakeUpstream, anthropic_message, completion, text_stream

pytestmark = pytest.mark.anyio

HOOKS = [
    HookConfig(path="leapasgi.hooks:PiiRedactor"),
    HookConfig(path="leapasgi.hooks:ModelPolicy", options={"deny": ["secret-*"]}),
]
SECRET = "write to bob@example.com"
REDACTED = "write to [EMAIL]"


async def test_chat_prompts_are_redacted_whole_and_streamed(serve: Serve) -> None:
    fake = FakeUpstream(default=Behavior(json_body=completion("hi")))
    fake.push(Behavior(json_body=completion("hi")), Behavior(events=text_stream(["h", "i"])))
    live = serve(lambda ups: [upstream_config("up", ups[0])], upstreams=[fake], hooks=HOOKS)
    async with live.async_client() as client:
        await client.chat.completions.create(
            model="m1", messages=[{"role": "user", "content": SECRET}]
        )
        stream = await client.chat.completions.create(
            model="m1", messages=[{"role": "user", "content": SECRET}], stream=True
        )
        [chunk async for chunk in stream]
        with pytest.raises(openai.PermissionDeniedError) as caught:
            await client.chat.completions.create(
                model="secret-model", messages=[{"role": "user", "content": "hi"}]
            )
    bodies = [seen.json for seen in fake.chat_requests]
    assert [body["messages"][0]["content"] for body in bodies] == [REDACTED, REDACTED]
    assert caught.value.code == "model_not_allowed"


async def test_messages_prompts_are_redacted_native_and_translated(serve: Serve) -> None:
    speaker = FakeUpstream(default=Behavior(json_body=anthropic_message("hi")))
    chat_only = FakeUpstream(default=Behavior(json_body=completion("hi")))
    live = serve(
        lambda ups: [
            native("native", ups[0], models=["m1"]),
            upstream_config("chat", ups[1], models=["m2"], max_retries=0),
        ],
        upstreams=[speaker, chat_only],
        hooks=HOOKS,
    )
    async with live.anthropic_client() as client:
        for model in ("m1", "m2"):
            await client.messages.create(
                model=model,
                max_tokens=10,
                system=f"system: {SECRET}",
                messages=[{"role": "user", "content": [{"type": "text", "text": SECRET}]}],
            )
        with pytest.raises(anthropic.PermissionDeniedError) as caught:
            await client.messages.create(
                model="secret-x", max_tokens=10, messages=[{"role": "user", "content": "hi"}]
            )
    [sent] = speaker.messages_requests
    assert sent.json["system"] == f"system: {REDACTED}"
    assert sent.json["messages"][0]["content"][0]["text"] == REDACTED
    [translated] = chat_only.chat_requests
    texts = [message["content"] for message in translated.json["messages"]]
    assert SECRET not in str(texts)
    assert REDACTED in str(texts)
    assert caught.value.body["error"]["type"] == "permission_error"  # type: ignore[index]


async def test_responses_prompts_are_redacted_native_and_translated(serve: Serve) -> None:
    speaker = FakeUpstream(default=Behavior(json_body=response_body("hi")))
    speaker.push(
        Behavior(json_body=response_body("hi")), Behavior(events=responses_stream(["h", "i"]))
    )
    chat_only = FakeUpstream(default=Behavior(json_body=completion("hi")))
    chat_only.push(Behavior(json_body=completion("hi")), Behavior(events=text_stream(["h", "i"])))
    live = serve(
        lambda ups: [
            upstream_config("native", ups[0], protocols=["responses"], max_retries=0),
            upstream_config("chat", ups[1], models=["m2"], max_retries=0),
        ],
        upstreams=[speaker, chat_only],
        hooks=HOOKS,
    )
    async with live.async_client() as client:
        for model in ("m1", "m2"):
            response = await client.responses.create(
                model=model, instructions=f"system: {SECRET}", input=SECRET
            )
            assert response.output_text == "hi"
            stream = await client.responses.create(
                model=model,
                instructions=f"system: {SECRET}",
                input=[{"role": "user", "content": [{"type": "input_text", "text": SECRET}]}],
                stream=True,
            )
            events = [event async for event in stream]
            assert events[-1].type == "response.completed"
    sent = [seen.json for seen in speaker.seen if seen.path.endswith("/responses")]
    assert len(sent) == 2
    for body in sent:
        assert body["instructions"] == f"system: {REDACTED}"
        assert SECRET not in str(body["input"])
        assert REDACTED in str(body["input"])
    translated = [str(seen.json["messages"]) for seen in chat_only.chat_requests]
    assert len(translated) == 2
    for messages in translated:
        assert SECRET not in messages
        assert messages.count(REDACTED) == 2


class CannedRefusal(Hook):
    """A guardrail that answers, politely and with a 200, what it will not let through."""

    name = "guardrail"

    def before(self, ctx: HookContext) -> ChatCompletion | None:
        if any("forbidden" in text for text in ctx.texts()):
            return ctx.reply(REFUSAL)
        return None


REFUSAL = "I cannot help with that."
CANNED = [HookConfig(path="tests.asgi.test_hooks_live:CannedRefusal")]


async def test_a_hook_answers_chat_json_and_sse(serve: Serve) -> None:
    fake = FakeUpstream(default=Behavior(json_body=completion("upstream")))
    live = serve(lambda ups: [upstream_config("up", ups[0])], upstreams=[fake], hooks=CANNED)
    asked: Any = [{"role": "user", "content": "a forbidden topic"}]
    async with live.async_client() as client:
        raw = await client.chat.completions.with_raw_response.create(model="m1", messages=asked)
        whole = raw.parse()
        stream = await client.chat.completions.create(
            model="m1", messages=asked, stream=True, stream_options={"include_usage": True}
        )
        chunks = [chunk async for chunk in stream]
    assert raw.http_response.status_code == 200
    assert whole.choices[0].message.content == REFUSAL
    assert whole.choices[0].finish_reason == "stop"
    assert whole.model == "m1"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == REFUSAL
    assert chunks[-1].usage is not None
    assert fake.seen == []
    assert raw.headers["x-leap-attempts"] == "0"  # no provider tried, none served
    assert "x-leap-provider" not in raw.headers
    recorded = live.requests_recorded(2)
    assert [(r["provider"], r["status"], r["stream"]) for r in recorded] == [
        ("none", "200", "false"),
        ("none", "200", "true"),
    ]


async def test_a_hook_answers_responses_whole_and_streamed(serve: Serve) -> None:
    speaker = FakeUpstream(default=Behavior(json_body=response_body("upstream")))
    live = serve(
        lambda ups: [upstream_config("native", ups[0], protocols=["responses"])],
        upstreams=[speaker],
        hooks=CANNED,
    )
    async with live.async_client() as client:
        response = await client.responses.create(model="m1", input="forbidden")
        stream = await client.responses.create(model="m1", input="forbidden", stream=True)
        events = [event async for event in stream]
        follow_up = await client.responses.create(
            model="m1", input="and this forbidden one?", previous_response_id=response.id
        )
    assert response.output_text == REFUSAL
    assert response.status == "completed"
    assert follow_up.output_text == REFUSAL  # the answer was stored like any other
    assert events[0].type == "response.created"
    assert events[-1].type == "response.completed"
    assert events[-1].response.output_text == REFUSAL
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert deltas == REFUSAL
    assert speaker.seen == []


async def test_a_hook_answers_messages_whole_and_streamed(serve: Serve) -> None:
    speaker = FakeUpstream(default=Behavior(json_body=anthropic_message("upstream")))
    live = serve(lambda ups: [native("native", ups[0])], upstreams=[speaker], hooks=CANNED)
    asked: Any = [{"role": "user", "content": "forbidden"}]
    async with live.anthropic_client() as client:
        message = await client.messages.create(model="m1", max_tokens=10, messages=asked)
        async with client.messages.stream(model="m1", max_tokens=10, messages=asked) as helper:
            streamed = await helper.get_final_message()
    for answer in (message, streamed):
        assert answer.role == "assistant"
        assert answer.stop_reason == "end_turn"
        assert [block.text for block in answer.content if block.type == "text"] == [REFUSAL]
    assert speaker.seen == []
