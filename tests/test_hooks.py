"""Request hooks: the normalized view of a request in every protocol, its text rewritten
exactly in the native body and the chat form, order, sync and async hooks, isolation, config
by import path, and no cost without hooks."""

from __future__ import annotations

from typing import Any

import pytest

from leapasgi import ChatCompletion, ChatCompletionRequest, MockProvider
from leapasgi.config import GatewayConfig, HookConfig, parse_config
from leapasgi.exceptions import ConfigurationError, HookError, LeapError, PermissionDeniedError
from leapasgi.gateway import GatewayCore
from leapasgi.hooks import Hook, HookContext, ModelPolicy, PiiRedactor
from leapasgi.hooks.texts import chat_texts, native_texts, rewrite_chat, rewrite_native
from leapasgi.native import NativeCall, ProtocolRequest, WireProtocol
from leapasgi.outcome import Outcome
from leapasgi.protocols.messages import parse_messages_request
from leapasgi.protocols.messages_chat import messages_to_chat
from leapasgi.streaming import ChunkBatch

pytestmark = pytest.mark.anyio

SECRET = "mail bob@example.com"
REDACTED = "mail [EMAIL]"


def chat(content: Any = SECRET, model: str = "m") -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate(
        {"model": model, "messages": [{"role": "user", "content": content}]}
    )


def upper(text: str) -> str:
    return text.upper()


# -- the text of each protocol ---------------------------------------------------------------


def test_chat_texts_read_and_rewrite_strings_and_text_parts() -> None:
    request = ChatCompletionRequest.model_validate(
        {
            "model": "m",
            "messages": [
                {"role": "system", "content": "sys"},
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "a"},
                        {"type": "image_url", "image_url": {"url": "https://x.test/a.png"}},
                    ],
                },
                {"role": "tool", "tool_call_id": "c1", "content": "out"},
            ],
            "temperature": 0.5,
        }
    )
    assert chat_texts(request) == ["sys", "a", "out"]
    rewritten = rewrite_chat(request, upper)
    assert chat_texts(rewritten) == ["SYS", "A", "OUT"]
    wire = rewritten.to_wire()
    assert wire["temperature"] == 0.5
    assert wire["messages"][1]["content"][1] == {
        "type": "image_url",
        "image_url": {"url": "https://x.test/a.png"},
    }
    assert rewrite_chat(request, lambda text: text) is request


RESPONSES_BODY: Any = {
    "model": "m",
    "instructions": "be brief",
    "input": [
        {"role": "user", "content": "one"},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "two"}]},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "3"}]},
        {"type": "function_call", "call_id": "c", "name": "f", "arguments": '{"x": "keep"}'},
        {"type": "function_call_output", "call_id": "c", "output": "four"},
        {"role": "user", "content": [{"type": "input_image", "image_url": "https://x.test/i"}]},
    ],
    "store": False,
}
MESSAGES_BODY: Any = {
    "model": "m",
    "max_tokens": 10,
    "system": [{"type": "text", "text": "sys", "cache_control": {"type": "ephemeral"}}],
    "messages": [
        {"role": "user", "content": "one"},
        {
            "role": "assistant",
            "content": [{"type": "tool_use", "id": "t", "name": "f", "input": {}}],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "t", "content": "two"},
                {"type": "text", "text": "three"},
            ],
        },
    ],
}


@pytest.mark.parametrize(
    ("protocol", "body", "texts"),
    [
        (WireProtocol.RESPONSES, RESPONSES_BODY, ["be brief", "one", "two", "3", "four"]),
        (WireProtocol.RESPONSES, {"model": "m", "input": "plain"}, ["plain"]),
        (WireProtocol.MESSAGES, MESSAGES_BODY, ["sys", "one", "two", "three"]),
        (WireProtocol.MESSAGES, {**MESSAGES_BODY, "system": "s"}, ["s", "one", "two", "three"]),
        (WireProtocol.EMBEDDINGS, {"model": "m", "input": ["a", "b"]}, ["a", "b"]),
    ],
)
def test_native_texts_read_and_rewrite_exactly(
    protocol: WireProtocol, body: Any, texts: list[str]
) -> None:
    call = NativeCall(protocol, body)
    assert native_texts(call) == texts
    rewritten = rewrite_native(call, upper)
    assert native_texts(rewritten) == [text.upper() for text in texts]
    assert native_texts(call) == texts  # the caller's body is left as it was

    def restore(text: str) -> str:
        return texts[[t.upper() for t in texts].index(text)]

    # Nothing but the text changed: rewriting it back gives the body it came from.
    assert rewrite_native(rewritten, restore).body == body


def test_a_rewrite_reaches_the_chat_form_of_a_protocol_request() -> None:
    parsed = parse_messages_request(MESSAGES_BODY)
    request = ProtocolRequest(
        NativeCall(WireProtocol.MESSAGES, MESSAGES_BODY),
        lambda notes: messages_to_chat(parsed, notes),
    )
    request.chat()  # made before the hook: made again from the rewritten request
    context = HookContext(request, stream=False, tenant=None)
    context.rewrite_texts(upper)
    changed = context.request
    assert isinstance(changed, ProtocolRequest)
    assert native_texts(changed.native) == ["SYS", "ONE", "TWO", "THREE"]
    assert sorted(chat_texts(changed.chat())) == ["ONE", "SYS", "THREE", "TWO"]


# -- the shipped hooks -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "redacted"),
    [
        ("write to bob.smith+x@mail.example.co.uk now", "write to [EMAIL] now"),
        ("card 4111 1111 1111 1111.", "card [CREDIT_CARD]."),
        ("card 4111-1111-1111-1112 fails Luhn", "card 4111-1111-1111-1112 fails Luhn"),
        ("IBAN DE89 3704 0044 0532 0130 00 ok", "IBAN [IBAN] ok"),
        ("IBAN DE00 3704 0044 0532 0130 00 bad", "IBAN DE00 3704 0044 0532 0130 00 bad"),
        ("ssn 123-45-6789", "ssn [SSN]"),
        ("from 10.0.0.1:80", "from [IPV4]:80"),
        ("version 1.2.3.4.5 stays", "version 1.2.3.4.5 stays"),
        ("call +1 415-555-0132 or (415) 555-0132", "call [PHONE] or [PHONE]"),
        ("on 2024-01-15 at 12:30", "on 2024-01-15 at 12:30"),
    ],
)
def test_pii_redactor(text: str, redacted: str) -> None:
    assert PiiRedactor().redact(text) == redacted


def test_pii_redactor_options() -> None:
    redactor = PiiRedactor(
        kinds=["email"], patterns={"ticket": r"TKT-\d+"}, replacement="<{kind} removed>"
    )
    assert redactor.redact("a@b.io 10.0.0.1 TKT-42") == "<EMAIL removed> 10.0.0.1 <TICKET removed>"
    with pytest.raises(ValueError, match="unknown PII kinds"):
        PiiRedactor(kinds=["dna"])
    with pytest.raises(ValueError, match="not a valid regex"):
        PiiRedactor(patterns={"bad": "("})


def test_model_policy() -> None:
    policy = ModelPolicy(allow=["gpt-4o*", "m"], deny=["gpt-4o-mini"])
    assert policy.allows("gpt-4o")
    assert policy.allows("gpt-4o-2024")
    assert policy.allows("m")
    assert not policy.allows("gpt-4o-mini")
    assert not policy.allows("m2")
    assert ModelPolicy(deny=["*preview*"]).allows("m")
    assert not ModelPolicy(allow=[]).allows("m")


# -- through the dispatcher --------------------------------------------------------------------


def core(*hooks: object, reply: str = "ok") -> tuple[GatewayCore, MockProvider]:
    mock = MockProvider(models=["m", "other"], reply=reply, chunks=2)
    return GatewayCore(providers=[mock], hooks=hooks), mock


async def test_no_hooks_cost_nothing() -> None:
    gateway, _ = core()
    assert gateway.manager.dispatcher.hooks is None
    async with gateway:
        outcome = Outcome()
        await gateway.manager.chat(chat(), outcome=outcome)
        assert outcome.error is None


async def test_redactor_changes_what_the_provider_receives_whole_and_streamed() -> None:
    gateway, mock = core(PiiRedactor())
    async with gateway:
        await gateway.manager.chat(chat())
        async with gateway.manager.stream(chat([{"type": "text", "text": SECRET}])) as stream:
            [chunk async for chunk in stream]
    assert chat_texts(mock.requests[0]) == [REDACTED]
    assert chat_texts(mock.requests[1]) == [REDACTED]


class Recorder(Hook):
    def __init__(self, name: str, log: list[str], *, asynchronous: bool = False) -> None:
        self.name = name
        self.log = log
        self.asynchronous = asynchronous

    def before(self, ctx: HookContext) -> None:
        self.log.append(f"{self.name}:before:{ctx.model}:{ctx.protocol}")
        ctx.rewrite_texts(lambda text: text + f"+{self.name}")


class AsyncRecorder(Recorder):
    async def before(self, ctx: HookContext) -> None:  # type: ignore[override]
        super().before(ctx)

    async def after(self, ctx: HookContext, answer: Any) -> None:
        self.log.append(f"{self.name}:after:{type(answer).__name__}")

    async def on_chunk(self, ctx: HookContext, chunk: Any) -> None:
        self.log.append(f"{self.name}:chunk")


async def test_sync_and_async_hooks_run_in_order() -> None:
    log: list[str] = []
    gateway, mock = core(Recorder("one", log), AsyncRecorder("two", log))
    async with gateway:
        await gateway.manager.chat(chat("hi"))
        assert log == [
            "one:before:m:chat_completions",
            "two:before:m:chat_completions",
            "two:after:ChatCompletion",
        ]
        log.clear()
        async with gateway.manager.stream(chat("hi")) as stream:
            chunks = [chunk async for chunk in stream]
    assert chat_texts(mock.requests[0]) == ["hi+one+two"]
    assert log[:2] == ["one:before:m:chat_completions", "two:before:m:chat_completions"]
    assert log.count("two:chunk") == len(chunks)
    assert log[-1] == "two:after:NoneType"


async def test_model_policy_refuses_with_403() -> None:
    gateway, mock = core(ModelPolicy(allow=["m"]))
    async with gateway:
        outcome = Outcome()
        with pytest.raises(PermissionDeniedError) as caught:
            await gateway.manager.chat(chat(model="other"), outcome=outcome)
        await gateway.manager.chat(chat(model="m"))
    assert caught.value.http_status == 403
    assert caught.value.code == "model_not_allowed"
    assert outcome.status == 403
    assert len(mock.requests) == 1


class Boom(Hook):
    name = "boom"

    def __init__(self) -> None:
        self.calls = 0
        self.errors: list[LeapError] = []

    def before(self, ctx: HookContext) -> None:
        self.calls += 1
        if self.calls == 1:
            raise RuntimeError(f"the prompt was {ctx.texts()}")

    def on_error(self, ctx: HookContext, error: LeapError) -> None:
        self.errors.append(error)


async def test_a_raising_hook_fails_that_request_only(caplog: pytest.LogCaptureFixture) -> None:
    boom = Boom()
    gateway, mock = core(boom)
    async with gateway:
        outcome = Outcome()
        with pytest.raises(HookError) as caught:
            await gateway.manager.chat(chat(), outcome=outcome)
        await gateway.manager.chat(chat())  # the next request works
    error = caught.value
    assert error.http_status == 500
    assert error.code == "hook_failed"
    assert error.hook == "boom"
    assert error.message == "hook 'boom' failed: RuntimeError"
    assert "hook 'boom' failed: RuntimeError" in outcome.trail.summary()
    assert outcome.status == 500
    assert boom.errors == [error]
    assert "hook 'boom' failed" in caplog.text
    assert "bob@" not in caplog.text
    assert len(mock.requests) == 1


async def test_a_raising_chunk_hook_ends_the_stream() -> None:
    class Cut(Hook):
        name = "cut"

        def on_chunk(self, ctx: HookContext, chunk: Any) -> None:
            raise ValueError("no")

    gateway, _ = core(Cut())
    async with gateway:
        outcome = Outcome()
        with pytest.raises(HookError, match="hook 'cut' failed: ValueError"):
            async with gateway.manager.stream(chat(), outcome=outcome) as stream:
                [chunk async for chunk in stream]
    assert outcome.status == 500


class Canned(Hook):
    """A guardrail's polite refusal as an answer: what mentions "forbidden" never leaves."""

    name = "canned"

    def __init__(self) -> None:
        self.answers: list[Any] = []

    async def before(self, ctx: HookContext) -> ChatCompletion | None:
        if any("forbidden" in text for text in ctx.texts()):
            return ctx.reply(REFUSAL)
        return None

    def after(self, ctx: HookContext, answer: Any) -> None:
        self.answers.append((ctx.answered_by, type(answer).__name__))


REFUSAL = "I cannot help with that."


async def test_a_hook_answers_a_chat_request_whole_and_streamed() -> None:
    canned = Canned()
    gateway, mock = core(canned, Recorder("later", []))
    async with gateway:
        outcome = Outcome()
        completion = await gateway.manager.chat(chat("a forbidden topic"), outcome=outcome)
        streamed = Outcome()
        request = ChatCompletionRequest.model_validate(
            {
                "model": "m",
                "messages": [{"role": "user", "content": "forbidden"}],
                "stream": True,
                "stream_options": {"include_usage": True},
            }
        )
        async with gateway.manager.stream(request, outcome=streamed) as stream:
            chunks = [chunk async for chunk in stream]
        await gateway.manager.chat(chat("fine"))
    assert completion.choices[0].message.content == REFUSAL
    assert completion.model == "m"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == REFUSAL
    assert chunks[-1].usage is not None
    for ended in (outcome, streamed):
        assert ended.trail.attempts == []
        assert ended.trail.summary() == "notes: hook 'canned' answered"
        assert ended.error is None
    assert outcome.cost_usd is None
    assert canned.answers == [
        ("canned", "ChatCompletion"),
        ("canned", "NoneType"),
        (None, "ChatCompletion"),
    ]
    assert [chat_texts(sent) for sent in mock.requests] == [["fine+later"]]  # later hooks skipped


async def test_a_hook_answers_a_protocol_request_with_a_chat_completion() -> None:
    gateway, mock = core(Canned())
    parsed = parse_messages_request(MESSAGES_BODY)
    body = {**MESSAGES_BODY, "system": "forbidden"}
    request = ProtocolRequest(
        NativeCall(WireProtocol.MESSAGES, body), lambda notes: messages_to_chat(parsed, notes)
    )
    async with gateway:
        answer = await gateway.manager.exchange(request)
        async with gateway.manager.open_exchange(request) as stream:
            batch = await stream.next_batch()
            with pytest.raises(StopAsyncIteration):
                await stream.next_batch()
    assert isinstance(answer, ChatCompletion)
    assert answer.choices[0].message.content == REFUSAL
    assert isinstance(batch, ChunkBatch)
    assert batch.chunks[0].choices[0].delta.content == REFUSAL
    assert mock.requests == []


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        (
            ProtocolRequest(NativeCall(WireProtocol.EMBEDDINGS, {"model": "m", "input": "x"})),
            "hook 'canned' answered a request (embeddings) that has no chat form",
        ),
        (chat("wrong"), "hook 'canned' answered with dict, not a ChatCompletion"),
    ],
)
async def test_an_answer_that_cannot_be_given_is_a_hook_error(request_: Any, message: str) -> None:
    class Wrong(Hook):
        name = "canned"

        def before(self, ctx: HookContext) -> Any:
            return {"choices": []} if ctx.texts() == ["wrong"] else ctx.reply("hi")

    gateway, _ = core(Wrong())
    async with gateway:
        outcome = Outcome()
        ask = (
            gateway.manager.exchange(request_, outcome=outcome)
            if isinstance(request_, ProtocolRequest)
            else gateway.manager.chat(request_, outcome=outcome)
        )
        with pytest.raises(HookError) as caught:
            await ask
    assert caught.value.message == message
    assert outcome.status == 500


# -- config ------------------------------------------------------------------------------------


def test_hooks_by_import_path_in_the_config() -> None:
    config = parse_config(
        """
        hooks = ["leapasgi.hooks:PiiRedactor"]
        """
    )
    assert isinstance(config.hooks[0].hook, PiiRedactor)
    config = parse_config(
        """
        [[hooks]]
        path = "leapasgi.hooks:ModelPolicy"
        options = { deny = ["secret-*"] }
        """
    )
    hook = config.hooks[0].hook
    assert isinstance(hook, ModelPolicy)
    assert not hook.allows("secret-model")
    gateway = GatewayCore(config=config)
    chain = gateway.manager.dispatcher.hooks
    assert chain is not None
    assert chain.hooks == [hook]


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ('"leapasgi.hooks"', "not of the form"),
        ('"leapasgi.nowhere:Hook"', "cannot import"),
        ('"leapasgi.hooks:Nothing"', "cannot import"),
        ('{ path = "leapasgi.hooks:PiiRedactor", options = { kinds = ["dna"] } }', "refused"),
    ],
)
def test_a_bad_hook_path_fails_the_load(entry: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        parse_config(f"hooks = [{entry}]")


def test_hooks_from_code_follow_the_config_ones() -> None:
    code = PiiRedactor()
    config = GatewayConfig(hooks=[HookConfig(path="leapasgi.hooks:ModelPolicy")])
    chain = GatewayCore(config=config, hooks=[code]).manager.dispatcher.hooks
    assert chain is not None
    assert [type(hook) for hook in chain.hooks] == [ModelPolicy, PiiRedactor]
