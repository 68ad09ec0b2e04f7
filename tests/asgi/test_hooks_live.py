"""Hooks over HTTP, through the official SDKs: the redactor changes what the upstream
receives (chat whole and streamed; Messages native and translated), and the model policy's
refusal comes in each protocol's error shape."""

from __future__ import annotations

import anthropic
import openai
import pytest

from leapasgi.config import HookConfig
from tests.asgi.live_server import Serve, upstream_config
from tests.asgi.messages_support import native
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
