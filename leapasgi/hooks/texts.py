"""The text of a request, found in each protocol's own body: read, and rewritten exactly.

    chat completions   messages[].content (a string, or its "text" parts), every role
    Responses          instructions; input (a string, or message items' content: a string or
                       its input_text/output_text parts; function_call_output's output)
    Messages           system (a string or its text blocks); messages[].content (a string, its
                       text blocks, and tool_result blocks' content)
    embeddings         input (a string, or a list of strings)

A rewrite copies only what it changes; the caller's body is never mutated.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from ..native import NativeCall, WireProtocol
from ..types import ChatCompletionRequest

__all__ = ["Rewrite", "chat_texts", "native_texts", "rewrite_chat", "rewrite_native"]

Rewrite = Callable[[str], str]
_RESPONSES_PARTS = frozenset({"input_text", "output_text", "text"})


def chat_texts(request: ChatCompletionRequest) -> list[str]:
    """Every text part of a chat request, in order."""
    found: list[str] = []
    _chat_body(request.to_wire(), _collect(found))
    return found


def rewrite_chat(request: ChatCompletionRequest, rewrite: Rewrite) -> ChatCompletionRequest:
    """``request`` with each text part replaced by ``rewrite(text)``."""
    data = request.to_wire()
    changed = _chat_body(data, rewrite)
    if changed is data:
        return request
    return ChatCompletionRequest.model_validate(changed)


def native_texts(call: NativeCall) -> list[str]:
    """Every text part of a native call's body, in order."""
    found: list[str] = []
    _WALKERS[call.protocol](call.body, _collect(found))
    return found


def rewrite_native(call: NativeCall, rewrite: Rewrite) -> NativeCall:
    """``call`` with each text part of its body replaced by ``rewrite(text)``."""
    body = _WALKERS[call.protocol](call.body, rewrite)
    if body is call.body:
        return call
    return NativeCall(call.protocol, body, call.headers, call.stream, call.endpoint)


def _collect(found: list[str]) -> Rewrite:
    def collect(text: str) -> str:
        found.append(text)
        return text

    return collect


def _replace(body: Mapping[str, Any], key: str, value: Any) -> Any:
    """``body`` with ``key`` set to ``value``; ``body`` itself when nothing changed."""
    if body.get(key) is value:
        return body
    return {**body, key: value}


def _each(items: Any, walk: Callable[[Any, Rewrite], Any], rewrite: Rewrite) -> Any:
    if not isinstance(items, list):
        return items
    out = [walk(item, rewrite) for item in items]
    return items if all(a is b for a, b in zip(out, items, strict=True)) else out


def _text_field(part: Any, rewrite: Rewrite, key: str = "text") -> Any:
    if isinstance(part, Mapping) and isinstance(text := part.get(key), str):
        new = rewrite(text)
        return part if new == text else _replace(part, key, new)
    return part


def _string_or_parts(value: Any, rewrite: Rewrite, part: Callable[[Any, Rewrite], Any]) -> Any:
    if isinstance(value, str):
        new = rewrite(value)
        return value if new == value else new
    return _each(value, part, rewrite)


def _typed_text(types: frozenset[str]) -> Callable[[Any, Rewrite], Any]:
    def walk(part: Any, rewrite: Rewrite) -> Any:
        if isinstance(part, Mapping) and part.get("type") in types:
            return _text_field(part, rewrite)
        return part

    return walk


_TEXT_PART = _typed_text(frozenset({"text"}))
_RESPONSES_PART = _typed_text(_RESPONSES_PARTS)


def _content(item: Any, rewrite: Rewrite, part: Callable[[Any, Rewrite], Any]) -> Any:
    if not isinstance(item, Mapping) or "content" not in item:
        return item
    return _replace(item, "content", _string_or_parts(item["content"], rewrite, part))


def _chat_message(message: Any, rewrite: Rewrite) -> Any:
    return _content(message, rewrite, _TEXT_PART)


def _chat_body(body: Mapping[str, Any], rewrite: Rewrite) -> Any:
    return _replace(body, "messages", _each(body.get("messages"), _chat_message, rewrite))


def _responses_item(item: Any, rewrite: Rewrite) -> Any:
    if not isinstance(item, Mapping):
        return item
    kind = item.get("type")
    if kind == "function_call_output":
        return _text_field(item, rewrite, "output")
    if kind in (None, "message"):
        return _content(item, rewrite, _RESPONSES_PART)
    return item


def _responses_body(body: Mapping[str, Any], rewrite: Rewrite) -> Any:
    out = _text_field(body, rewrite, "instructions")
    if "input" in out:
        out = _replace(out, "input", _string_or_parts(out["input"], rewrite, _responses_item))
    return out


def _messages_block(block: Any, rewrite: Rewrite) -> Any:
    if isinstance(block, Mapping) and block.get("type") == "tool_result" and "content" in block:
        return _content(block, rewrite, _TEXT_PART)
    return _TEXT_PART(block, rewrite)


def _messages_message(message: Any, rewrite: Rewrite) -> Any:
    return _content(message, rewrite, _messages_block)


def _messages_body(body: Mapping[str, Any], rewrite: Rewrite) -> Any:
    out = body
    if "system" in out:
        out = _replace(out, "system", _string_or_parts(out["system"], rewrite, _TEXT_PART))
    return _replace(out, "messages", _each(out.get("messages"), _messages_message, rewrite))


def _embeddings_body(body: Mapping[str, Any], rewrite: Rewrite) -> Any:
    if "input" not in body:
        return body

    def one(value: Any, rewrite: Rewrite) -> Any:
        return _string_or_parts(value, rewrite, lambda part, _: part)

    return _replace(body, "input", _string_or_parts(body["input"], rewrite, one))


_WALKERS: dict[WireProtocol, Callable[[Mapping[str, Any], Rewrite], Any]] = {
    WireProtocol.CHAT_COMPLETIONS: _chat_body,
    WireProtocol.RESPONSES: _responses_body,
    WireProtocol.MESSAGES: _messages_body,
    WireProtocol.EMBEDDINGS: _embeddings_body,
}
