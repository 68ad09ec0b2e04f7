"""Responses API objects built from chat results: ids, usage, output items and the Response."""

from __future__ import annotations

import copy
import secrets
from typing import Any

from ..types import ChatCompletion, ChatCompletionMessage, Usage
from .responses_request import ResponsesRequest

__all__ = [
    "RESPONSE_ERROR_CODES",
    "function_call_item",
    "incomplete_reason",
    "message_item",
    "namespaced_functions",
    "new_call_id",
    "new_function_call_id",
    "new_message_id",
    "new_response_id",
    "output_items",
    "output_text_part",
    "response_from_chat",
    "response_object",
    "response_usage",
]

# The codes a Response's ``error`` may carry; the SDK refuses any other. A failure with another
# code is reported as ``server_error`` there (the stream's ``error`` event keeps the original).
RESPONSE_ERROR_CODES = frozenset(
    {
        "server_error",
        "rate_limit_exceeded",
        "invalid_prompt",
        "data_residency_mismatch",
        "bio_policy",
        "misalignment_policy_violation",
        "vector_store_timeout",
        "invalid_image",
        "invalid_image_format",
        "invalid_base64_image",
        "invalid_image_url",
        "image_too_large",
        "image_too_small",
        "image_parse_error",
        "image_content_policy_violation",
        "invalid_image_mode",
        "image_file_too_large",
        "unsupported_image_media_type",
        "empty_image_file",
        "failed_to_download_image",
        "image_file_not_found",
    }
)
_INCOMPLETE = {"length": "max_output_tokens", "content_filter": "content_filter"}


def new_response_id() -> str:
    """A fresh response id: ``resp_`` and 24 hex digits."""
    return "resp_" + secrets.token_hex(12)


def new_message_id() -> str:
    """A fresh output message id: ``msg_`` and 24 hex digits."""
    return "msg_" + secrets.token_hex(12)


def new_function_call_id() -> str:
    """A fresh function call item id: ``fc_`` and 24 hex digits."""
    return "fc_" + secrets.token_hex(12)


def new_call_id() -> str:
    """A fresh tool call id, for upstreams that sent none: ``call_`` and 24 hex digits."""
    return "call_" + secrets.token_hex(12)


def incomplete_reason(finish_reason: str | None) -> str | None:
    """The ``incomplete_details.reason`` a chat finish reason means, if the answer was cut."""
    return _INCOMPLETE.get(finish_reason or "")


def namespaced_functions(tools: list[dict[str, Any]] | None) -> dict[str, str]:
    """Function name -> namespace, for the functions a request offers inside a namespace (the
    first tool of a name wins, as in the chat request)."""
    seen: set[str] = set()
    out: dict[str, str] = {}
    for tool in tools or ():
        if tool.get("type") == "function":
            seen.add(tool["name"])
        elif tool.get("type") == "namespace":
            for inner in tool.get("tools") or ():
                name = inner.get("name")
                if inner.get("type") == "function" and name not in seen:
                    seen.add(name)
                    out[name] = tool["name"]
    return out


def output_text_part(text: str, annotations: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """An ``output_text`` content part."""
    return {"type": "output_text", "text": text, "annotations": annotations or [], "logprobs": []}


def message_item(item_id: str, content: list[dict[str, Any]], *, status: str) -> dict[str, Any]:
    """An assistant ``message`` output item."""
    return {
        "id": item_id,
        "type": "message",
        "status": status,
        "role": "assistant",
        "content": content,
    }


def function_call_item(
    item_id: str,
    *,
    call_id: str,
    name: str,
    arguments: str,
    status: str,
    namespace: str | None = None,
) -> dict[str, Any]:
    """A ``function_call`` output item; ``namespace`` when the function was offered in one."""
    item = {
        "id": item_id,
        "type": "function_call",
        "status": status,
        "call_id": call_id,
        "name": name,
        "arguments": arguments,
    }
    if namespace is not None:
        item["namespace"] = namespace
    return item


def response_usage(usage: Usage | None) -> dict[str, Any] | None:
    """Chat usage as Responses usage."""
    if usage is None:
        return None
    prompt = usage.prompt_tokens_details
    completion = usage.completion_tokens_details
    return {
        "input_tokens": usage.prompt_tokens,
        "input_tokens_details": {
            "cached_tokens": (prompt.cached_tokens if prompt else None) or 0,
            "cache_write_tokens": 0,
        },
        "output_tokens": usage.completion_tokens,
        "output_tokens_details": {
            "reasoning_tokens": (completion.reasoning_tokens if completion else None) or 0
        },
        "total_tokens": usage.total_tokens or usage.prompt_tokens + usage.completion_tokens,
    }


def response_object(
    request: ResponsesRequest,
    *,
    response_id: str,
    created_at: int,
    status: str,
    output: list[dict[str, Any]],
    usage: dict[str, Any] | None = None,
    incomplete: str | None = None,
    error: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A Response object answering ``request``, echoing the settings it was made with."""
    text = dict(request.text or {})
    text.setdefault("format", {"type": "text"})
    return {
        "id": response_id,
        "object": "response",
        "created_at": created_at,
        "status": status,
        "background": False,
        "error": error,
        "incomplete_details": {"reason": incomplete} if incomplete else None,
        "instructions": request.instructions,
        "max_output_tokens": request.max_output_tokens,
        "max_tool_calls": None,
        "model": request.model,
        "output": output,
        "parallel_tool_calls": True
        if request.parallel_tool_calls is None
        else request.parallel_tool_calls,
        "previous_response_id": request.previous_response_id,
        "reasoning": None,
        "store": request.store is not False,  # the API's default is to store
        "temperature": request.temperature,
        "text": text,
        "tool_choice": "auto" if request.tool_choice is None else request.tool_choice,
        "tools": [_echo_tool(tool) for tool in request.tools or ()],
        "top_p": request.top_p,
        "truncation": "disabled",
        "usage": usage,
        "user": request.user,
        "metadata": dict(request.metadata or {}),
    }


def response_from_chat(
    completion: ChatCompletion, request: ResponsesRequest, *, response_id: str, created_at: int
) -> dict[str, Any]:
    """The complete Response object for a chat completion of ``request``."""
    choice = completion.choices[0] if completion.choices else None
    reason = incomplete_reason(choice.finish_reason) if choice else None
    output = _output(choice.message, request) if choice else []
    if reason and output:
        output[-1]["status"] = "incomplete"
    return response_object(
        request,
        response_id=response_id,
        created_at=created_at,
        status="incomplete" if reason else "completed",
        output=output,
        usage=response_usage(completion.usage),
        incomplete=reason,
    )


def output_items(response: dict[str, Any]) -> list[dict[str, Any]]:
    """The output items of a finished Response, as a follow-up turn's history needs them."""
    return [copy.deepcopy(item) for item in response.get("output") or () if isinstance(item, dict)]


def _output(message: ChatCompletionMessage, request: ResponsesRequest) -> list[dict[str, Any]]:
    output: list[dict[str, Any]] = []
    content: list[dict[str, Any]] = []
    if message.content:
        content.append(output_text_part(message.content, _annotations(message.annotations)))
    if message.refusal:
        content.append({"type": "refusal", "refusal": message.refusal})
    if content or not message.tool_calls:
        content = content or [output_text_part("")]
        output.append(message_item(new_message_id(), content, status="completed"))
    namespaces = namespaced_functions(request.tools)
    for call in message.tool_calls or ():
        item = function_call_item(
            new_function_call_id(),
            call_id=call.id,
            name=call.function.name,
            arguments=call.function.arguments,
            status="completed",
            namespace=namespaces.get(call.function.name),
        )
        output.append(item)
    return output


def _annotations(annotations: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    out = []
    for annotation in annotations or ():
        cited = annotation.get("url_citation")
        if annotation.get("type") == "url_citation" and isinstance(cited, dict):
            out.append({"type": "url_citation", **cited})
    return out


def _echo_tool(tool: dict[str, Any]) -> dict[str, Any]:
    if tool.get("type") == "namespace" and "description" not in tool:
        return {**tool, "description": ""}
    return tool
