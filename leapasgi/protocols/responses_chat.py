"""A Responses request and its history of items, as one chat completions request.

What chat cannot carry is dropped with a short note (``notes``), never silently: reasoning items,
hosted tools (web search, file search, MCP...), ``reasoning``, ``include`` and the like.
"""

from __future__ import annotations

from collections.abc import Container
from typing import Any

from pydantic import ValidationError

from ..exceptions import InvalidRequestError
from ..types import ChatCompletionRequest, invalid_request_from
from .responses_request import ResponsesRequest, item_type

__all__ = ["responses_to_chat"]

# Fields of a Responses request that chat takes as they are.
_CARRIED = ("temperature", "top_p", "user")
# Fields this translation uses, or that the caller handles (history, storage).
_HANDLED = frozenset(
    {
        "model",
        "input",
        "instructions",
        "tools",
        "tool_choice",
        "text",
        "max_output_tokens",
        "stream",
        "parallel_tool_calls",
        "store",
        "previous_response_id",
        # Kept by the gateway (echoed and stored); chat's metadata means "tag a stored
        # completion" and OpenAI refuses it without store.
        "metadata",
        *_CARRIED,
    }
)
# The chat content part types each role accepts.
_PART_TYPES = {
    "user": frozenset({"text", "image_url", "input_audio", "file"}),
    "assistant": frozenset({"text", "refusal"}),
    "system": frozenset({"text"}),
    "developer": frozenset({"text"}),
}
_IMAGE_DETAILS = frozenset({"auto", "low", "high", "original"})
# Item fields that are bookkeeping, not meaning: leaving them out changes nothing for the model.
_BOOKKEEPING = frozenset({"type", "id", "status"})


def responses_to_chat(
    request: ResponsesRequest, items: list[dict[str, Any]], notes: list[str]
) -> ChatCompletionRequest:
    """The chat request for ``request`` over the full history ``items``; appends a note for
    everything dropped. Raises InvalidRequestError when the result is not a valid request."""
    found = _Notes(notes)
    tools = _tools(request.tools, found)
    body: dict[str, Any] = {"model": request.model, "messages": _messages(request, items, found)}
    if tools:
        body["tools"] = tools
        if request.parallel_tool_calls is not None:
            body["parallel_tool_calls"] = request.parallel_tool_calls
    elif request.parallel_tool_calls is not None:
        found.add("dropped parallel_tool_calls (no function tools)")
    choice = _tool_choice(request.tool_choice, found)
    if choice is not None and not tools and choice != "none":
        found.add("dropped tool_choice (no function tools)")
    elif choice is not None:
        body["tool_choice"] = choice
    body.update(_text_format(request.text, found))
    if request.max_output_tokens is not None:
        body["max_completion_tokens"] = request.max_output_tokens
    for field in _CARRIED:
        value = getattr(request, field)
        if value is not None:
            body[field] = value
    if request.stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    elif request.stream is not None:
        body["stream"] = False
    for field in (*ResponsesRequest.model_fields, *(request.model_extra or ())):
        if field not in _HANDLED and getattr(request, field, None) is not None:
            found.add(f"dropped {field}")
    if not body["messages"]:
        raise InvalidRequestError(
            "Invalid 'input': there is nothing to answer (no input items or instructions)",
            param="input",
            code="invalid_value",
        )
    # Built here from a checked request: validated, with no second walk for forbidden fields.
    try:
        return ChatCompletionRequest.model_validate(body)
    except ValidationError as exc:
        raise invalid_request_from(exc) from None


class _Notes:
    """The caller's notes, each added once."""

    def __init__(self, notes: list[str]) -> None:
        self._notes = notes
        self._seen = set(notes)

    def add(self, note: str) -> None:
        if note not in self._seen:
            self._seen.add(note)
            self._notes.append(note)

    def extra(self, item: dict[str, Any], known: Container[str], where: str) -> None:
        """Note the fields of ``item`` that are neither ``known`` nor bookkeeping."""
        for key in item:
            if key not in _BOOKKEEPING and key not in known:
                self.add(f"dropped {key} of {where}")


def _tools(tools: list[dict[str, Any]] | None, notes: _Notes) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    names: set[str] = set()
    for tool in tools or ():
        kind = tool["type"]
        if kind == "function":
            inner = [tool]
        elif kind == "namespace":
            inner = []
            for member in tool["tools"]:
                if member.get("type") == "function":
                    inner.append(member)
                else:
                    notes.add(f"dropped tool {member.get('type')} in namespace {tool['name']}")
        else:
            notes.add(f"dropped tool {kind}")
            continue
        for function in inner:
            if function["name"] in names:
                notes.add(f"dropped duplicate tool {function['name']}")
                continue
            names.add(function["name"])
            out.append(_function_tool(function, notes))
    return out


def _function_tool(tool: dict[str, Any], notes: _Notes) -> dict[str, Any]:
    fields = ("name", "description", "parameters", "strict")
    notes.extra(tool, fields, "function tools")
    function = {key: tool[key] for key in fields if tool.get(key) is not None}
    return {"type": "function", "function": function}


def _tool_choice(choice: str | dict[str, Any] | None, notes: _Notes) -> Any:
    if choice is None or isinstance(choice, str):
        return choice
    kind = choice.get("type")
    if kind == "function" and isinstance(choice.get("name"), str):
        return {"type": "function", "function": {"name": choice["name"]}}
    if kind == "allowed_tools" and isinstance(choice.get("tools"), list):
        allowed = []
        for tool in choice["tools"]:
            if isinstance(tool, dict) and tool.get("type") == "function" and "name" in tool:
                allowed.append({"type": "function", "function": {"name": tool["name"]}})
            else:
                notes.add("dropped non-function tools of tool_choice allowed_tools")
        mode = choice.get("mode", "auto")
        return {"type": "allowed_tools", "allowed_tools": {"mode": mode, "tools": allowed}}
    notes.add(f"dropped tool_choice {kind}")
    return None


def _text_format(text: dict[str, Any] | None, notes: _Notes) -> dict[str, Any]:
    if not text:
        return {}
    notes.extra(text, ("format",), "text")
    fmt = text.get("format")
    if not fmt or fmt["type"] == "text":
        return {}
    if fmt["type"] == "json_object":
        return {"response_format": {"type": "json_object"}}
    fields = ("name", "description", "schema", "strict")
    notes.extra(fmt, fields, "text.format")
    schema = {key: fmt[key] for key in fields if fmt.get(key) is not None}
    return {"response_format": {"type": "json_schema", "json_schema": schema}}


def _messages(
    request: ResponsesRequest, items: list[dict[str, Any]], notes: _Notes
) -> list[dict[str, Any]]:
    history = _History(notes)
    if request.instructions:
        history.add({"role": "system", "content": request.instructions})
    for item in items:
        kind = item_type(item)
        if kind == "message":
            history.add_message(item)
        elif kind == "function_call":
            history.add_call(item)
        elif kind == "function_call_output":
            history.add_output(item)
        else:
            notes.add(f"dropped {kind or 'untyped'} items")
    return history.finish()


class _History:
    """Chat messages built from items in order: calls merge into the assistant message before
    them; images a tool returned follow the run of tool messages as one user message."""

    def __init__(self, notes: _Notes) -> None:
        self.notes = notes
        self.messages: list[dict[str, Any]] = []
        self._tool_images: list[dict[str, Any]] = []

    def add(self, message: dict[str, Any]) -> None:
        if message["role"] != "tool":
            self._flush_images()
        self.messages.append(message)

    def add_message(self, item: dict[str, Any]) -> None:
        role = item["role"]
        self.notes.extra(item, ("role", "content"), "message items")
        content = item["content"]
        if isinstance(content, list):
            content = _collapse(_parts(content, role, self.notes))
        self.add({"role": role, "content": content})

    def add_call(self, item: dict[str, Any]) -> None:
        # The namespace needs no note: its functions are offered under their own names.
        self.notes.extra(item, ("call_id", "name", "arguments", "namespace"), "function_call items")
        call = {
            "id": item["call_id"],
            "type": "function",
            "function": {"name": item["name"], "arguments": item["arguments"]},
        }
        last = self.messages[-1] if self.messages else None
        if last is not None and last["role"] == "assistant":
            last.setdefault("tool_calls", []).append(call)
        else:
            self.add({"role": "assistant", "content": None, "tool_calls": [call]})

    def add_output(self, item: dict[str, Any]) -> None:
        self.notes.extra(item, ("call_id", "output"), "function_call_output items")
        output = item["output"]
        if isinstance(output, list):
            parts = _parts(output, "user", self.notes)
            texts = [part for part in parts if part["type"] == "text"]
            self._tool_images.extend(part for part in parts if part["type"] != "text")
            output = _collapse(texts)
        self.add({"role": "tool", "tool_call_id": item["call_id"], "content": output})

    def finish(self) -> list[dict[str, Any]]:
        self._flush_images()
        return self.messages

    def _flush_images(self) -> None:
        if self._tool_images:
            self.notes.add("moved images and files of function_call_output into a user message")
            self.messages.append({"role": "user", "content": self._tool_images})
            self._tool_images = []


def _collapse(parts: list[dict[str, Any]]) -> str | list[dict[str, Any]]:
    if not parts:
        return ""
    if len(parts) == 1 and parts[0]["type"] == "text":
        return str(parts[0]["text"])
    return parts


def _parts(parts: list[dict[str, Any]], role: str, notes: _Notes) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for part in parts:
        converted = _part(part, notes)
        if converted is None:
            continue
        if converted["type"] in _PART_TYPES[role]:
            out.append(converted)
        else:
            notes.add(f"dropped {part['type']} content of {role} messages")
    return out


def _part(part: dict[str, Any], notes: _Notes) -> dict[str, Any] | None:
    kind = part["type"]
    if kind in ("input_text", "output_text", "text"):
        if kind == "output_text" and part.get("annotations"):
            notes.add("dropped annotations of output_text content")
        return {"type": "text", "text": part.get("text", "")}
    if kind == "refusal":
        return {"type": "refusal", "refusal": part.get("refusal", "")}
    if kind == "input_image":
        return _image(part, notes)
    if kind == "input_file":
        return _file(part, notes)
    if kind == "input_audio" and isinstance(part.get("input_audio"), dict):
        return {"type": "input_audio", "input_audio": part["input_audio"]}
    notes.add(f"dropped {kind} content")
    return None


def _image(part: dict[str, Any], notes: _Notes) -> dict[str, Any] | None:
    detail = part.get("detail")
    if isinstance(part.get("image_url"), str):
        image: dict[str, Any] = {"url": part["image_url"]}
        if detail in _IMAGE_DETAILS:
            image["detail"] = detail
        elif detail is not None:
            notes.add(f"dropped input_image detail {detail}")
        return {"type": "image_url", "image_url": image}
    if isinstance(part.get("file_id"), str):
        notes.add("sent input_image by file_id as a file part")
        return {"type": "file", "file": {"file_id": part["file_id"]}}
    notes.add("dropped input_image without image_url or file_id")
    return None


def _file(part: dict[str, Any], notes: _Notes) -> dict[str, Any] | None:
    fields = ("file_data", "file_id", "filename")
    if part.get("file_url") is not None:
        notes.add("dropped file_url of input_file content")
    if part.get("file_data") is None and part.get("file_id") is None:
        notes.add("dropped input_file without file_data or file_id")
        return None
    return {"type": "file", "file": {key: part[key] for key in fields if part.get(key) is not None}}
