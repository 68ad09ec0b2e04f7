"""Token estimates for what a TPM limit reserves before a request is sent: its prompt's text
at about four characters a token, plus its completion limit (or a default). The reservation
is corrected with the real usage when the answer comes."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .native import ProtocolRequest
from .types import ChatCompletion, ChatCompletionRequest

__all__ = [
    "DEFAULT_COMPLETION_TOKENS",
    "estimate_answer_tokens",
    "estimate_prompt_tokens",
    "estimate_tokens",
]

# Reserved for the completion when the request sets no limit.
DEFAULT_COMPLETION_TOKENS = 256
_CHARS_PER_TOKEN = 4
# The most nested values one estimate looks at: a bound, never a parse of everything.
_MAX_VALUES = 100_000


def estimate_tokens(request: ChatCompletionRequest | ProtocolRequest) -> int:
    """The tokens to reserve for ``request``: prompt estimate plus completion limit."""
    prompt, completion = estimate_prompt_tokens(request, DEFAULT_COMPLETION_TOKENS)
    return prompt + completion


def estimate_prompt_tokens(
    request: ChatCompletionRequest | ProtocolRequest, default_completion: int
) -> tuple[int, int]:
    """(prompt estimate, completion limit) of ``request``; ``default_completion`` when it
    sets no limit."""
    if isinstance(request, ChatCompletionRequest):
        chars = 0
        for message in request.messages:
            chars += _text_chars(message.content, _MAX_VALUES)
        limit = request.completion_token_limit
    else:
        body = request.native.body
        chars = _text_chars(
            [body.get("system"), body.get("instructions"), body.get("messages"), body.get("input")],
            _MAX_VALUES,
        )
        limit = body.get("max_tokens") or body.get("max_output_tokens")
    completion = limit if isinstance(limit, int) and limit > 0 else default_completion
    return chars // _CHARS_PER_TOKEN + 1, completion


def estimate_answer_tokens(completion: ChatCompletion) -> int:
    """Completion tokens of an answer whose upstream reported none: its text, about four
    characters a token."""
    chars = 0
    for choice in completion.choices:
        message = choice.message
        chars += len(message.content or "")
        for call in message.tool_calls or ():
            chars += len(call.function.arguments or "") + len(call.function.name or "")
    return chars // _CHARS_PER_TOKEN + 1 if chars else 0


def _text_chars(value: Any, budget: int) -> int:
    """Characters of text in ``value`` (strings, lists, mappings, content parts)."""
    chars = 0
    stack = [value]
    while stack and budget > 0:
        budget -= 1
        item = stack.pop()
        if isinstance(item, str):
            chars += len(item)
        elif isinstance(item, Mapping):
            stack.extend(item.values())
        elif isinstance(item, Sequence) and not isinstance(item, bytes | bytearray):
            stack.extend(item)
        elif item is not None and hasattr(item, "text"):
            text = item.text
            if isinstance(text, str):
                chars += len(text)
    return chars
