"""How the mock provider answers: text, tool calls with schema-valid arguments, JSON modes,
and the completion or chunks that carry an answer."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

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
    ResponseFormatJSONObject,
    ResponseFormatJSONSchema,
    TextPart,
    ToolCall,
    ToolMessage,
    Usage,
    UserMessage,
)
from ._schema_example import example_for_schema

__all__ = ["DEFAULT_REPLY", "Answer", "answer_for", "chunks_of", "completion_of"]

DEFAULT_REPLY = "Hello from the mock provider."
FINGERPRINT = "fp_mock"
_WORD = re.compile(r"\s*\S+")


@dataclass(frozen=True, slots=True)
class Answer:
    """What every choice of one response says, and its identity."""

    serial: int
    created: int
    model: str
    n: int
    content: str | None
    calls: tuple[FunctionCall, ...]
    finish_reason: FinishReason
    usage: Usage


def answer_for(
    request: ChatCompletionRequest, *, serial: int, created: int, reply: str | None
) -> Answer:
    """What a model would say to ``request``; ``reply`` None echoes the conversation."""
    finish: FinishReason = "tool_calls"
    content: str | None = None
    calls = tuple(
        FunctionCall(name=tool.name, arguments=json.dumps(example_for_schema(tool.parameters)))
        for tool in _tools_to_call(request)
    )
    if not calls:
        content, finish = _truncate(_text(request, reply), request)
    n = request.n or 1
    completion = n * sum(_words(part) for part in (content or "", *(c.arguments for c in calls)))
    prompt = sum(_words(_text_of(message.content)) for message in request.messages)
    usage = Usage(
        prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion
    )
    return Answer(serial, created, request.model, n, content, calls, finish, usage)


def _text(request: ChatCompletionRequest, reply: str | None) -> str:
    fmt = request.response_format
    if isinstance(fmt, ResponseFormatJSONSchema):
        return json.dumps(example_for_schema(fmt.json_schema.schema_))
    text = reply if reply is not None else _echo(request.messages)
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


def _call_id(answer: Answer, choice: int, index: int) -> str:
    return f"call_mock_{answer.serial}_{choice}_{index}"


def completion_of(answer: Answer) -> ChatCompletion:
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


def _message(answer: Answer, choice: int) -> ChatCompletionMessage:
    if not answer.calls:
        return ChatCompletionMessage(role="assistant", content=answer.content)
    calls = [
        ToolCall(id=_call_id(answer, choice, k), type="function", function=call)
        for k, call in enumerate(answer.calls)
    ]
    return ChatCompletionMessage(role="assistant", content=None, tool_calls=calls)


def chunks_of(
    answer: Answer, include_usage: bool, pieces: int | None
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
    answer: Answer, choices: list[ChunkChoice], include_usage: bool
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


def _deltas(answer: Answer, choice: int, pieces: int | None) -> Iterator[ChoiceDelta]:
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
