"""Folding a stream of chat completion chunks into the complete chat completion."""

from __future__ import annotations

from collections.abc import AsyncIterable
from typing import Any

from .streaming import ChunkBatch
from .types import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionMessage,
    Choice,
    ChoiceDeltaFunctionCall,
    ChoiceDeltaToolCall,
    ChunkChoice,
    FunctionCall,
    ToolCall,
    Usage,
)

__all__ = ["ChatCompletionAccumulator", "collect"]

_MESSAGE_FIELDS = frozenset(ChatCompletionMessage.model_fields)


class _FunctionParts:
    """A function name, kept from its first fragment, and argument pieces."""

    __slots__ = ("arguments", "name")

    def __init__(self) -> None:
        self.name: str | None = None
        self.arguments: list[str] = []

    def add(self, fragment: ChoiceDeltaFunctionCall) -> None:
        # Providers that repeat the name on every fragment must not get it glued together.
        if self.name is None and fragment.name:
            self.name = fragment.name
        if fragment.arguments:
            self.arguments.append(fragment.arguments)

    def build(self) -> FunctionCall:
        return FunctionCall(name=self.name or "", arguments="".join(self.arguments))


class _ToolCallParts:
    """One tool call being assembled from its fragments."""

    __slots__ = ("function", "id", "index")

    def __init__(self, index: int) -> None:
        self.index = index
        self.id: str | None = None
        self.function = _FunctionParts()

    def add(self, fragment: ChoiceDeltaToolCall) -> None:
        if self.id is None and fragment.id:
            self.id = fragment.id
        if fragment.function is not None:
            self.function.add(fragment.function)

    def build(self) -> ToolCall:
        return ToolCall(id=self.id or "", type="function", function=self.function.build())


class _ChoiceParts:
    """Everything one choice index has received so far."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.content: list[str] | None = None
        self.refusal: list[str] | None = None
        self.calls: list[_ToolCallParts] = []
        self.calls_by_index: dict[int, _ToolCallParts] = {}
        self.function_call: _FunctionParts | None = None
        self.extra_text: dict[str, list[str]] = {}
        self.finish_reason: str | None = None
        self.logprobs: dict[str, list[Any]] | None = None

    def add(self, choice: ChunkChoice) -> None:
        delta = choice.delta
        if delta.content is not None:
            self.content = _append(self.content, delta.content)
        if delta.refusal is not None:
            self.refusal = _append(self.refusal, delta.refusal)
        for fragment in delta.tool_calls or ():
            self._call_for(fragment).add(fragment)
        if delta.function_call is not None:
            if self.function_call is None:
                self.function_call = _FunctionParts()
            self.function_call.add(delta.function_call)
        for key, value in (delta.model_extra or {}).items():
            # Text a provider adds beside the content (Ollama's ``reasoning``) streams like it.
            if isinstance(value, str) and key not in _MESSAGE_FIELDS:
                self.extra_text.setdefault(key, []).append(value)
        if choice.finish_reason is not None:
            self.finish_reason = choice.finish_reason
        if choice.logprobs is not None:
            self._add_logprobs(choice.logprobs)

    def _call_for(self, fragment: ChoiceDeltaToolCall) -> _ToolCallParts:
        index = fragment.index
        known = self.calls[-1] if index is None and self.calls else None
        if index is not None:
            known = self.calls_by_index.get(index)
        # A new id where a call already is starts another call: some providers send no index,
        # and Ollama numbers the calls of every chunk from 0 again.
        if known is not None and (fragment.id is None or fragment.id == known.id or not known.id):
            return known
        if index is None or known is not None:
            index = max(self.calls_by_index, default=-1) + 1
        call = _ToolCallParts(index)
        self.calls.append(call)
        self.calls_by_index[index] = call
        return call

    def _add_logprobs(self, logprobs: dict[str, Any]) -> None:
        if self.logprobs is None:
            self.logprobs = {}
        for key in ("content", "refusal"):
            items = logprobs.get(key)
            if isinstance(items, list):
                self.logprobs.setdefault(key, []).extend(items)

    def tool_calls(self) -> list[ToolCall]:
        ordered = sorted(self.calls, key=lambda call: call.index)
        return [call.build() for call in ordered]

    def build(self) -> Choice:
        message: dict[str, Any] = {
            **{key: "".join(pieces) for key, pieces in self.extra_text.items()},
            "role": "assistant",
            "content": _join(self.content),
            "refusal": _join(self.refusal),
        }
        if self.calls:
            message["tool_calls"] = self.tool_calls()
        if self.function_call is not None:
            message["function_call"] = self.function_call.build()
        logprobs = None
        if self.logprobs is not None:
            logprobs = {key: self.logprobs.get(key) for key in ("content", "refusal")}
        return Choice(
            index=self.index,
            message=ChatCompletionMessage.model_validate(message),
            finish_reason=self.finish_reason,
            logprobs=logprobs,
        )


def _append(pieces: list[str] | None, piece: str) -> list[str]:
    if pieces is None:
        return [piece]
    pieces.append(piece)
    return pieces


def _join(pieces: list[str] | None) -> str | None:
    return None if pieces is None else "".join(pieces)


class ChatCompletionAccumulator:
    """Collects streamed chunks and builds the ChatCompletion they add up to."""

    def __init__(self) -> None:
        self._id = ""
        self._created = 0
        self._model = ""
        self._system_fingerprint: str | None = None
        self._service_tier: str | None = None
        self._choices: dict[int, _ChoiceParts] = {}
        self._usage: Usage | None = None
        self._usage_is_final = False

    def add(self, chunk: ChatCompletionChunk) -> None:
        """Fold one chunk into the completion."""
        # First non-empty wins: filter events (Azure) come with an empty id and model.
        self._id = self._id or chunk.id
        self._created = self._created or chunk.created
        self._model = self._model or chunk.model
        self._system_fingerprint = self._system_fingerprint or chunk.system_fingerprint
        self._service_tier = self._service_tier or chunk.service_tier
        for choice in chunk.choices:
            parts = self._choices.get(choice.index)
            if parts is None:
                parts = self._choices[choice.index] = _ChoiceParts(choice.index)
            parts.add(choice)
        if chunk.usage is not None:
            # The choices-less usage chunk is authoritative; usage on other chunks is a fallback.
            if not chunk.choices:
                self._usage, self._usage_is_final = chunk.usage, True
            elif not self._usage_is_final:
                self._usage = chunk.usage

    def tool_calls(self, index: int = 0) -> list[ToolCall]:
        """The tool calls of choice ``index`` so far, ordered by their tool-call index."""
        parts = self._choices.get(index)
        return parts.tool_calls() if parts is not None else []

    def result(self) -> ChatCompletion:
        """The completion the chunks so far add up to."""
        return ChatCompletion(
            id=self._id,
            object="chat.completion",
            created=self._created,
            model=self._model,
            choices=[self._choices[index].build() for index in sorted(self._choices)],
            usage=self._usage,
            system_fingerprint=self._system_fingerprint,
            service_tier=self._service_tier,
        )


async def collect(
    stream: AsyncIterable[ChatCompletionChunk] | AsyncIterable[ChunkBatch],
) -> ChatCompletion:
    """Consume ``stream`` (chunks, or a provider's batches of them) and return the
    completion it adds up to."""
    accumulator = ChatCompletionAccumulator()
    async for item in stream:
        if isinstance(item, ChunkBatch):
            for chunk in item.chunks:
                accumulator.add(chunk)
        else:
            accumulator.add(item)
    return accumulator.result()
