"""The built-in mock provider: deterministic, scriptable answers with no keys and no network.

It answers every request shape the way a real model would (tools, JSON modes, ``n``, stop
sequences, token limits, usage) and fails on cue with the same errors the OpenAI-compatible
client raises, so the gateway and its fault tests can run entirely in process.
"""

from __future__ import annotations

import json
import re
from collections import deque
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from ..clock import Clock, SystemClock
from ..exceptions import (
    ConnectRefusedError,
    FirstByteTimeoutError,
    IdleTimeoutError,
    InvalidRequestError,
    LeapError,
    LeapTimeoutError,
    MalformedStreamError,
    ModelNotFoundError,
    StreamInterruptedError,
    error_for_status,
)
from ..features import ALL_FEATURES, Feature, required_features
from ..types import (
    AllowedToolsChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionMessage,
    ChatCompletionRequest,
    Choice,
    ChoiceDelta,
    ChoiceDeltaFunctionCall,
    ChoiceDeltaToolCall,
    ChunkChoice,
    FinishReason,
    FunctionCall,
    FunctionDefinition,
    FunctionTool,
    Message,
    Model,
    ResponseFormatJSONObject,
    ResponseFormatJSONSchema,
    TextPart,
    ToolCall,
    ToolMessage,
    Usage,
    UserMessage,
)
from ._schema_example import example_for_schema
from .base import Timeouts

__all__ = ["DEFAULT_MODELS", "DEFAULT_REPLY", "Fault", "FaultKind", "MockProvider"]

DEFAULT_MODELS = ("mock-chat",)
DEFAULT_REPLY = "Hello from the mock provider."
FINGERPRINT = "fp_mock"

FaultKind = Literal["status", "connect_error", "delay", "stall", "cut", "malformed"]
_MID_STREAM: frozenset[str] = frozenset({"stall", "cut", "malformed"})
_WORD = re.compile(r"\s*\S+")


@dataclass(frozen=True, slots=True)
class Fault:
    """One scripted failure for a request; build it with the class methods."""

    kind: FaultKind
    code: int = 0
    seconds: float = 0.0
    after_chunks: int = 0
    retry_after: float | None = None
    message: str | None = None

    @classmethod
    def status(
        cls, code: int, *, retry_after: float | None = None, message: str | None = None
    ) -> Fault:
        """The upstream answers HTTP ``code`` (429 with ``retry_after`` as its hint)."""
        return cls("status", code=code, retry_after=retry_after, message=message)

    @classmethod
    def connect_error(cls) -> Fault:
        """The upstream refuses the connection."""
        return cls("connect_error")

    @classmethod
    def delay(cls, seconds: float) -> Fault:
        """The first byte comes ``seconds`` late; past the first-byte timeout, that fires."""
        return cls("delay", seconds=seconds)

    @classmethod
    def stall(cls, after_chunks: int, seconds: float) -> Fault:
        """The body goes silent for ``seconds`` after ``after_chunks`` chunks."""
        return cls("stall", seconds=seconds, after_chunks=after_chunks)

    @classmethod
    def cut(cls, after_chunks: int) -> Fault:
        """The connection drops after ``after_chunks`` chunks."""
        return cls("cut", after_chunks=after_chunks)

    @classmethod
    def malformed(cls, after_chunks: int) -> Fault:
        """An unreadable event follows ``after_chunks`` chunks."""
        return cls("malformed", after_chunks=after_chunks)


@dataclass(frozen=True, slots=True)
class _Answer:
    """What every choice of one response says, and its identity."""

    serial: int
    created: int
    model: str
    n: int
    content: str | None
    calls: tuple[FunctionCall, ...]
    finish_reason: FinishReason
    usage: Usage


class MockProvider:
    """An in-process provider that answers like a model, fails on cue and records requests.

    ``reply=None`` echoes the last user message (or quotes a tool result); faults queued with ``inject`` apply one per
    request (chat or stream), then ``fail_always`` applies while the queue is empty. A
    mid-stream fault whose ``after_chunks`` exceeds the stream fires at its end.
    """

    def __init__(
        self,
        *,
        name: str = "mock",
        models: Iterable[str] | None = None,
        reply: str | None = None,
        chunks: int | None = None,
        chunk_delay: float = 0.0,
        features: Iterable[Feature | str] | None = None,
        faults: Iterable[Fault | None] | None = None,
        timeouts: Timeouts | None = None,
        clock: Clock | None = None,
    ) -> None:
        if chunks is not None and chunks < 1:
            raise ValueError("chunks must be at least 1")
        self.name = name
        self.models: tuple[str, ...] = DEFAULT_MODELS if models is None else tuple(models)
        self.reply = reply
        self.chunks = chunks
        self.chunk_delay = chunk_delay
        self.features: frozenset[str] = ALL_FEATURES if features is None else frozenset(features)
        self.timeouts = timeouts or Timeouts()
        self.clock: Clock = clock or SystemClock()
        self.requests: list[ChatCompletionRequest] = []
        self.closed = False
        self._faults: deque[Fault | None] = deque(faults or ())
        self._persistent: Fault | None = None
        self._served = 0

    def inject(self, *faults: Fault | None) -> None:
        """Queue faults for the next requests, one each; None answers normally."""
        self._faults.extend(faults)

    def fail_always(self, fault: Fault | None) -> None:
        """Apply ``fault`` to every request while the queue is empty; None stops it."""
        self._persistent = fault

    async def chat(self, request: ChatCompletionRequest) -> ChatCompletion:
        """One non-streaming completion."""
        fault = await self._begin(request)
        answer = self._answer(request)
        if fault is not None and fault.kind in _MID_STREAM:
            await self._interrupt(fault)
        return _completion(answer)

    async def stream(self, request: ChatCompletionRequest) -> AsyncIterator[ChatCompletionChunk]:
        """A streamed completion whose chunks add up to what ``chat`` returns."""
        fault = await self._begin(request)
        pending = fault if fault is not None and fault.kind in _MID_STREAM else None
        answer = self._answer(request)
        for sent, chunk in enumerate(_chunks(answer, request.include_usage, self.chunks)):
            if pending is not None and sent >= pending.after_chunks:
                await self._interrupt(pending)
                pending = None
            elif sent and self.chunk_delay > 0:
                await self.clock.sleep(self.chunk_delay)
            yield chunk
        if pending is not None:
            await self._interrupt(pending)

    async def list_models(self) -> list[Model]:
        """The configured models."""
        created = int(self.clock.time())
        return [Model(id=m, object="model", created=created, owned_by="mock") for m in self.models]

    async def check_health(self) -> None:
        """Raise the persistent status or connection fault, if one is set."""
        error = self._refusal(self._persistent) if self._persistent is not None else None
        if error is not None:
            raise error

    def supports(self, feature: Feature | str) -> bool:
        """True when ``feature`` is in the configured feature set."""
        return feature in self.features

    async def aclose(self) -> None:
        """Mark the provider closed; there is nothing to release."""
        self.closed = True

    async def _begin(self, request: ChatCompletionRequest) -> Fault | None:
        """Record the request, apply any fault that strikes before the first byte, validate."""
        self.requests.append(request)
        fault = self._faults.popleft() if self._faults else self._persistent
        if fault is not None:
            error = self._refusal(fault)
            if error is not None:
                raise error
            if fault.kind == "delay":
                await self._wait(fault.seconds, self.timeouts.first_byte, FirstByteTimeoutError)
        if request.model not in self.models:
            raise ModelNotFoundError(
                f"The model '{request.model}' does not exist on provider '{self.name}'",
                provider=self.name,
            )
        missing = required_features(request) - self.features
        if missing:
            raise InvalidRequestError(
                f"Provider '{self.name}' does not support: {', '.join(sorted(missing))}",
                provider=self.name,
            )
        return fault

    def _refusal(self, fault: Fault) -> LeapError | None:
        if fault.kind == "connect_error":
            return ConnectRefusedError(
                f"Provider '{self.name}' refused the connection (mock fault)", provider=self.name
            )
        if fault.kind == "status":
            message = fault.message or f"Mock fault: HTTP {fault.code}"
            return error_for_status(
                fault.code, message, provider=self.name, retry_after=fault.retry_after
            )
        return None

    async def _interrupt(self, fault: Fault) -> None:
        if fault.kind == "stall":
            await self._wait(fault.seconds, self.timeouts.idle, IdleTimeoutError)
        elif fault.kind == "cut":
            raise StreamInterruptedError(
                f"Provider '{self.name}' closed the stream early (mock fault)", provider=self.name
            )
        else:
            raise MalformedStreamError(
                f"Provider '{self.name}' sent an unreadable event (mock fault)", provider=self.name
            )

    async def _wait(self, seconds: float, limit: float, error: type[LeapTimeoutError]) -> None:
        if seconds > limit:
            await self.clock.sleep(limit)
            raise error(f"Provider '{self.name}' sent nothing for {limit:g}s", provider=self.name)
        await self.clock.sleep(seconds)

    def _answer(self, request: ChatCompletionRequest) -> _Answer:
        self._served += 1
        finish: FinishReason = "tool_calls"
        content: str | None = None
        calls = tuple(
            FunctionCall(name=tool.name, arguments=json.dumps(example_for_schema(tool.parameters)))
            for tool in _tools_to_call(request)
        )
        if not calls:
            content, finish = _truncate(self._text(request), request)
        n = request.n or 1
        completion = n * sum(
            _words(part) for part in (content or "", *(c.arguments for c in calls))
        )
        prompt = sum(_words(_text_of(message.content)) for message in request.messages)
        usage = Usage(
            prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion
        )
        created = int(self.clock.time())
        return _Answer(self._served, created, request.model, n, content, calls, finish, usage)

    def _text(self, request: ChatCompletionRequest) -> str:
        fmt = request.response_format
        if isinstance(fmt, ResponseFormatJSONSchema):
            return json.dumps(example_for_schema(fmt.json_schema.schema_))
        text = self.reply if self.reply is not None else _echo(request.messages)
        if isinstance(fmt, ResponseFormatJSONObject):
            return json.dumps({"reply": text})
        return text


def _echo(messages: Sequence[Message]) -> str:
    if isinstance(messages[-1], ToolMessage):
        return f"The tool returned: {_text_of(messages[-1].content)}"
    text = _last_user_text(messages)
    return f"You said: {text}" if text else DEFAULT_REPLY


def _text_of(content: object) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(part.text for part in content if isinstance(part, TextPart))
    return ""


def _last_user_text(messages: Sequence[Message]) -> str:
    for message in reversed(messages):
        if isinstance(message, UserMessage):
            return _text_of(message.content)
    return ""


def _words(text: str) -> int:
    return len(text.split())


def _tools_to_call(request: ChatCompletionRequest) -> list[FunctionDefinition]:
    """The functions a model would call: forced, required, or mentioned by the user."""
    tools = {
        t.function.name: t.function for t in request.tools or () if isinstance(t, FunctionTool)
    }
    forced = request.forced_function()
    if forced is not None:
        return [tools[forced]]
    choice = request.tool_choice
    mode: Any = choice if isinstance(choice, str) else "auto"
    if isinstance(choice, AllowedToolsChoice):
        mode = choice.allowed_tools.get("mode", "auto")
        allowed = {_function_name(entry) for entry in choice.allowed_tools.get("tools", ())}
        tools = {name: tool for name, tool in tools.items() if name in allowed}
    if mode == "none" or not tools:
        return []
    picked = []
    if mode == "required" or not isinstance(request.messages[-1], ToolMessage):
        text = _last_user_text(request.messages)
        picked = [tool for name, tool in tools.items() if _mentions(text, name)]
    if mode == "required" and not picked:
        picked = [next(iter(tools.values()))]
    return picked[:1] if request.parallel_tool_calls is False else picked


def _function_name(entry: Any) -> Any:
    function = entry.get("function") if isinstance(entry, dict) else None
    return function.get("name") if isinstance(function, dict) else None


def _mentions(text: str, name: str) -> bool:
    return re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", text, re.IGNORECASE) is not None


def _truncate(text: str, request: ChatCompletionRequest) -> tuple[str, FinishReason]:
    """Cut at the first stop sequence, then at the token limit (one token per word)."""
    stops = [request.stop] if isinstance(request.stop, str) else request.stop or []
    cuts = [at for at in (text.find(stop) for stop in stops if stop) if at >= 0]
    if cuts:
        text = text[: min(cuts)]
    limit = request.completion_token_limit
    if limit is not None:
        words = _WORD.findall(text)
        if len(words) > limit:
            return "".join(words[:limit]), "length"
    return text, "stop"


def _call_id(answer: _Answer, choice: int, index: int) -> str:
    return f"call_mock_{answer.serial}_{choice}_{index}"


def _completion(answer: _Answer) -> ChatCompletion:
    choices = [
        Choice(
            index=index,
            message=_message(answer, index),
            finish_reason=answer.finish_reason,
            logprobs=None,
        )
        for index in range(answer.n)
    ]
    return ChatCompletion(
        id=f"chatcmpl-mock-{answer.serial}",
        object="chat.completion",
        created=answer.created,
        model=answer.model,
        choices=choices,
        usage=answer.usage,
        system_fingerprint=FINGERPRINT,
    )


def _message(answer: _Answer, choice: int) -> ChatCompletionMessage:
    if not answer.calls:
        return ChatCompletionMessage(role="assistant", content=answer.content)
    calls = [
        ToolCall(id=_call_id(answer, choice, k), type="function", function=call)
        for k, call in enumerate(answer.calls)
    ]
    return ChatCompletionMessage(role="assistant", content=None, tool_calls=calls)


def _chunks(
    answer: _Answer, include_usage: bool, pieces: int | None
) -> Iterator[ChatCompletionChunk]:
    """Every chunk of the stream: each choice in turn, then the usage chunk if asked for."""
    for index in range(answer.n):
        for delta in _deltas(answer, index, pieces):
            choice = ChunkChoice(index=index, delta=delta, finish_reason=None)
            yield _envelope(answer, [choice], include_usage)
        done = ChunkChoice(index=index, delta=ChoiceDelta(), finish_reason=answer.finish_reason)
        yield _envelope(answer, [done], include_usage)
    if include_usage:
        last = _envelope(answer, [], include_usage=False)
        last.usage = answer.usage
        yield last


def _envelope(
    answer: _Answer, choices: list[ChunkChoice], include_usage: bool
) -> ChatCompletionChunk:
    chunk = ChatCompletionChunk(
        id=f"chatcmpl-mock-{answer.serial}",
        object="chat.completion.chunk",
        created=answer.created,
        model=answer.model,
        system_fingerprint=FINGERPRINT,
        choices=choices,
    )
    if include_usage:
        chunk.usage = None  # present and null, as the wire rules require
    return chunk


def _deltas(answer: _Answer, choice: int, pieces: int | None) -> Iterator[ChoiceDelta]:
    if not answer.calls:
        yield ChoiceDelta(role="assistant", content="")
        for piece in _split(answer.content or "", pieces):
            yield ChoiceDelta(content=piece)
        return
    yield ChoiceDelta(role="assistant", content=None)
    for k, call in enumerate(answer.calls):
        head = ChoiceDeltaFunctionCall(name=call.name, arguments="")
        call_id = _call_id(answer, choice, k)
        yield ChoiceDelta(
            tool_calls=[ChoiceDeltaToolCall(index=k, id=call_id, type="function", function=head)]
        )
        for piece in _split(call.arguments, pieces):
            fragment = ChoiceDeltaFunctionCall(arguments=piece)
            yield ChoiceDelta(tool_calls=[ChoiceDeltaToolCall(index=k, function=fragment)])


def _split(text: str, pieces: int | None) -> list[str]:
    """``pieces`` near-equal parts of ``text``, or one per word with its leading whitespace."""
    if not text:
        return []
    if pieces is not None:
        size = -(-len(text) // pieces)
        return [text[at : at + size] for at in range(0, len(text), size)]
    words: list[str] = _WORD.findall(text)
    tail = len(text) - sum(map(len, words))
    if tail:
        words.append(text[-tail:])
    return words
