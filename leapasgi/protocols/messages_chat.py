"""Translation between Anthropic Messages and chat completions, for whole requests and answers.

Pure data, no I/O. ``messages_to_chat`` builds the chat request a provider that does not speak
Messages is sent, writing down in ``notes`` what chat cannot carry (``"dropped cache_control"``),
each once; ``message_from_chat`` turns the chat answer back into a Message. Notes hold fixed
words, and client-chosen names only when they pass ``_SAFE_NAME``: notes end up in log lines.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

from pydantic import ValidationError

from ..exceptions import InvalidRequestError
from ..types import ChatCompletion, ChatCompletionRequest, Usage, invalid_request_from
from ..types._base import WireModel
from .messages import (
    DocumentBlock,
    ImageBlock,
    InputMessage,
    MessagesRequest,
    TextBlock,
    ToolResultBlock,
    ToolUseBlock,
    estimate_input_tokens,
    new_tool_use_id,
)

__all__ = [
    "message_from_chat",
    "messages_to_chat",
    "stop_reason",
    "tool_names",
    "usage_fields",
]

# Chat function names are at most 64 of these characters; Anthropic allows 128.
_CHAT_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
_UNSAFE_NAME_CHARS = re.compile(r"[^a-zA-Z0-9_-]")
# Client-chosen names that may appear in a note.
_SAFE_NAME = re.compile(r"^[a-zA-Z0-9_.]{1,64}$")
# The chat side's limit on ``user`` (OpenAI's safety_identifier is 64 characters).
_MAX_USER = 64
_MAX_STOPS = 4
_THINKING_OFF = "disabled"

_Json = dict[str, Any]


def _note(notes: list[str], note: str) -> None:
    if note not in notes:
        notes.append(note)


def _dropped(notes: list[str], name: str, *, prefix: str = "", suffix: str = "") -> None:
    shown = name if _SAFE_NAME.match(name) else "(unsafe name)"
    _note(notes, f"dropped {prefix}{shown}{suffix}")


def _chat_name(name: str) -> str:
    """The chat function name for an Anthropic tool name; the same name whenever it fits."""
    if _CHAT_NAME.match(name):
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return _UNSAFE_NAME_CHARS.sub("_", name)[:55] + "_" + digest


def tool_names(request: MessagesRequest) -> dict[str, str]:
    """Chat function names that differ from their tool's name -> the tool's name."""
    names: dict[str, str] = {}
    for tool in request.tools or ():
        chat = _chat_name(tool.name)
        if chat != tool.name:
            names[chat] = tool.name
    return names


def messages_to_chat(request: MessagesRequest, notes: list[str]) -> ChatCompletionRequest:
    """The chat request for ``request``; what chat cannot carry is dropped and noted once."""
    # Built as wire data and validated once, so that every field sent is a field set.
    messages: list[_Json] = []
    if request.system:
        messages.append({"role": "system", "content": _text_of(request.system, notes)})
    for message in request.messages:
        messages.extend(_chat_messages(message, notes))
    if not messages:
        raise InvalidRequestError("messages: nothing chat can carry", param="messages")
    fields: _Json = {
        "model": request.model,
        "messages": messages,
        "max_completion_tokens": request.max_tokens,
    }
    _tools(request, fields, notes)
    _sampling(request, fields, notes)
    _extras(request, fields, notes)
    try:
        return ChatCompletionRequest.model_validate(fields)
    except ValidationError as exc:
        raise invalid_request_from(exc) from None


def _text_of(content: str | list[Any], notes: list[str]) -> str:
    """The text of a system prompt or message; other blocks are dropped."""
    if isinstance(content, str):
        return content
    texts = []
    for block in content:
        _cache_control(block, notes)
        if isinstance(block, TextBlock):
            texts.append(block.text)
        else:
            _dropped(notes, block.type, suffix=" blocks")
    return "\n\n".join(texts)


def _cache_control(block: WireModel, notes: list[str]) -> None:
    if block.model_extra and "cache_control" in block.model_extra:
        _note(notes, "dropped cache_control")


def _chat_messages(message: InputMessage, notes: list[str]) -> list[_Json]:
    if message.role == "system":
        # Kept where it stands: rewritten into a user turn, the model would answer it.
        return [{"role": "system", "content": _text_of(message.content, notes)}]
    if message.role == "assistant":
        return _assistant(message.content, notes)
    return _user(message.content, notes)


def _assistant(content: str | list[Any], notes: list[str]) -> list[_Json]:
    if isinstance(content, str):
        return [{"role": "assistant", "content": content}]
    texts: list[str] = []
    calls: list[_Json] = []
    for block in content:
        _cache_control(block, notes)
        if isinstance(block, TextBlock):
            texts.append(block.text)
        elif isinstance(block, ToolUseBlock):
            arguments = json.dumps(block.input, ensure_ascii=False)
            function = {"name": _chat_name(block.name), "arguments": arguments}
            calls.append({"id": block.id, "type": "function", "function": function})
        else:
            _dropped(notes, block.type, suffix=" blocks")
    if not texts and not calls:
        return []
    message: _Json = {"role": "assistant", "content": "\n\n".join(texts) or None}
    if calls:
        message["tool_calls"] = calls
    return [message]


def _user(content: str | list[Any], notes: list[str]) -> list[_Json]:
    if isinstance(content, str):
        return [{"role": "user", "content": content}]
    messages: list[_Json] = []
    # Images a tool returned: a tool message holds text only, so they follow in the user turn.
    result_parts: list[_Json] = []
    parts: list[_Json] = []
    for block in content:
        _cache_control(block, notes)
        if isinstance(block, ToolResultBlock):
            messages.append(_tool_result(block, result_parts, notes))
        else:
            part = _user_part(block, notes)
            if part is not None:
                parts.append(part)
    parts = result_parts + parts
    if len(parts) == 1 and parts[0]["type"] == "text":
        messages.append({"role": "user", "content": parts[0]["text"]})
    elif parts:
        messages.append({"role": "user", "content": parts})
    return messages


def _user_part(block: Any, notes: list[str]) -> _Json | None:
    if isinstance(block, TextBlock):
        return {"type": "text", "text": block.text}
    if isinstance(block, ImageBlock):
        return _image(block, notes)
    if isinstance(block, DocumentBlock):
        return _document(block, notes)
    _dropped(notes, block.type, suffix=" blocks")
    return None


def _image(block: ImageBlock, notes: list[str]) -> _Json | None:
    source = block.source
    if source.type == "base64" and source.data is not None:
        url = f"data:{source.media_type};base64,{source.data}"
    elif source.type == "url" and source.url is not None:
        url = source.url
    else:
        _note(notes, "dropped images by file id")
        return None
    return {"type": "image_url", "image_url": {"url": url}}


def _document(block: DocumentBlock, notes: list[str]) -> _Json | None:
    source = block.source
    if source.type == "text" and source.data is not None:
        return {"type": "text", "text": source.data}
    if source.type == "base64" and source.data is not None:
        data = f"data:{source.media_type};base64,{source.data}"
        return {"type": "file", "file": {"file_data": data, "filename": block.title or "document"}}
    _note(notes, "dropped documents by url or file id")
    return None


def _tool_result(block: ToolResultBlock, images: list[_Json], notes: list[str]) -> _Json:
    content = block.content
    if content is None:
        text = ""
    elif isinstance(content, str):
        text = content
    else:
        texts = []
        for part in content:
            _cache_control(part, notes)
            if isinstance(part, TextBlock):
                texts.append(part.text)
            elif isinstance(part, ImageBlock) and (image := _image(part, notes)) is not None:
                _note(notes, "moved tool result images into the user turn")
                label = f"[image from tool result {block.tool_use_id}]"
                images.extend(({"type": "text", "text": label}, image))
            elif not isinstance(part, ImageBlock):
                _dropped(notes, part.type, suffix=" blocks")
        text = "\n".join(texts)
    if block.is_error:
        # Chat has no error flag on a tool message; the model still has to know.
        text = f"Error: {text}" if text else "Error"
    return {"role": "tool", "tool_call_id": block.tool_use_id, "content": text}


def _tools(request: MessagesRequest, fields: dict[str, Any], notes: list[str]) -> None:
    functions = []
    offered: set[str] = set()
    for tool in request.tools or ():
        _cache_control(tool, notes)
        if not tool.is_custom:
            _dropped(notes, tool.type or "", prefix="server tool ")
            continue
        if tool.model_extra and tool.model_extra.get("defer_loading") is not None:
            _note(notes, "dropped defer_loading")
        function: dict[str, Any] = {"name": _chat_name(tool.name)}
        if tool.description is not None:
            function["description"] = tool.description
        function["parameters"] = tool.input_schema
        if tool.model_extra and isinstance(tool.model_extra.get("strict"), bool):
            function["strict"] = tool.model_extra["strict"]
        functions.append({"type": "function", "function": function})
        offered.add(tool.name)
    if functions:
        fields["tools"] = functions
    if request.tool_choice is not None:
        _tool_choice(request, offered, fields, notes)


def _tool_choice(
    request: MessagesRequest, offered: set[str], fields: dict[str, Any], notes: list[str]
) -> None:
    choice = request.tool_choice
    assert choice is not None
    if choice.type == "none":
        fields["tool_choice"] = "none"
        return
    if choice.type == "tool" and choice.name not in {t.name for t in request.tools or ()}:
        raise InvalidRequestError(
            "tool_choice names a tool that is not in tools", param="tool_choice.name"
        )
    if not offered or (choice.type == "tool" and choice.name not in offered):
        # Only server tools, which chat does not have: let the model answer without them.
        _note(notes, "dropped tool_choice")
        return
    if choice.type == "tool" and choice.name is not None:
        fields["tool_choice"] = {"type": "function", "function": {"name": _chat_name(choice.name)}}
    else:
        fields["tool_choice"] = "required" if choice.type == "any" else "auto"
    if choice.disable_parallel_tool_use:
        fields["parallel_tool_calls"] = False


def _sampling(request: MessagesRequest, fields: dict[str, Any], notes: list[str]) -> None:
    if request.stop_sequences:
        if len(request.stop_sequences) > _MAX_STOPS:
            _note(notes, "kept the first 4 stop_sequences")
        fields["stop"] = request.stop_sequences[:_MAX_STOPS]
    if request.temperature is not None:
        fields["temperature"] = request.temperature
    if request.top_p is not None:
        fields["top_p"] = request.top_p
    if request.top_k is not None:
        _note(notes, "dropped top_k")
    if request.stream:
        fields["stream"] = True
        fields["stream_options"] = {"include_usage": True}


def _extras(request: MessagesRequest, fields: dict[str, Any], notes: list[str]) -> None:
    _metadata(request.metadata, fields, notes)
    thinking = request.thinking
    if thinking is not None and thinking.get("type") != _THINKING_OFF:
        _note(notes, "dropped thinking")
    if request.context_management is not None:
        _note(notes, "dropped context_management")
    _output_config(request.output_config, fields, notes)
    for name in request.model_extra or ():
        if name == "cache_control":
            _note(notes, "dropped cache_control")
        else:
            _dropped(notes, name)


def _metadata(metadata: dict[str, Any] | None, fields: dict[str, Any], notes: list[str]) -> None:
    if not metadata:
        return
    user = metadata.get("user_id")
    if isinstance(user, str) and user:
        if len(user) > _MAX_USER:
            # Claude Code sends a JSON object here; a digest keeps one id per user.
            user = "user_" + hashlib.sha256(user.encode()).hexdigest()[:32]
            _note(notes, "hashed metadata.user_id")
        fields["user"] = user
    for key in metadata:
        if key != "user_id":
            _dropped(notes, key, prefix="metadata.")


def _output_config(config: dict[str, Any] | None, fields: dict[str, Any], notes: list[str]) -> None:
    for key, value in (config or {}).items():
        is_schema = isinstance(value, dict) and value.get("type") == "json_schema"
        schema = value.get("schema") if is_schema else None
        if key == "format" and isinstance(schema, dict):
            fields["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "output", "schema": schema},
            }
        else:
            _dropped(notes, key, prefix="output_config.")


_STOP_REASONS = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}


def stop_reason(
    finish_reason: str | None,
    *,
    tool_use: bool = False,
    matched: str | None = None,
    request: MessagesRequest | None = None,
) -> tuple[str, str | None]:
    """Anthropic's ``(stop_reason, stop_sequence)`` for a chat ``finish_reason``. ``matched`` is
    the stop string an upstream reported (vLLM's ``stop_reason``) when it is one the request set."""
    reason = _STOP_REASONS.get(finish_reason or "stop", "end_turn")
    if reason == "end_turn" and tool_use:
        return "tool_use", None
    stops = request.stop_sequences if request is not None else None
    if reason == "end_turn" and matched is not None and stops and matched in stops:
        return "stop_sequence", matched
    return reason, None


def usage_fields(usage: Usage | None, request: MessagesRequest) -> dict[str, int]:
    """Anthropic usage for chat usage: ``input_tokens`` excludes cache reads, as Anthropic's
    does; without usage, the estimate stands in for the input."""
    if usage is None:
        return {
            "input_tokens": estimate_input_tokens(request),
            "output_tokens": 0,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
        }
    details = usage.prompt_tokens_details
    cached = (details.cached_tokens or 0) if details is not None else 0
    return {
        "input_tokens": max(usage.prompt_tokens - cached, 0),
        "output_tokens": usage.completion_tokens,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": cached,
    }


def message_from_chat(
    completion: ChatCompletion, request: MessagesRequest, *, message_id: str
) -> dict[str, Any]:
    """The Message for a chat completion (its first choice). Tool arguments that are not a
    JSON object become ``{}``: the client's own input check then tells the model to retry."""
    content: list[dict[str, Any]] = []
    finish: str | None = None
    matched: str | None = None
    refused = False
    if completion.choices:
        choice = completion.choices[0]
        message = choice.message
        finish = choice.finish_reason
        extra = choice.model_extra or {}
        matched = extra.get("stop_reason") if isinstance(extra.get("stop_reason"), str) else None
        if message.content:
            content.append({"type": "text", "text": message.content})
        if message.refusal:
            refused = True
            content.append({"type": "text", "text": message.refusal})
        names = tool_names(request)
        for call in message.tool_calls or ():
            content.append(
                {
                    "type": "tool_use",
                    "id": call.id or new_tool_use_id(),
                    "name": names.get(call.function.name, call.function.name),
                    "input": _arguments(call.function.arguments),
                }
            )
    tool_use = any(block["type"] == "tool_use" for block in content)
    reason, sequence = stop_reason(finish, tool_use=tool_use, matched=matched, request=request)
    if refused and not tool_use:
        reason = "refusal"
    return {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": request.model,
        "content": content,
        "stop_reason": reason,
        "stop_sequence": sequence,
        "usage": usage_fields(completion.usage, request),
    }


def _arguments(arguments: str) -> dict[str, Any]:
    try:
        value = json.loads(arguments) if arguments.strip() else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}
