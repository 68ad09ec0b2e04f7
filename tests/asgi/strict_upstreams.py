"""Fake upstreams that refuse what the real services refuse, with the bodies they answer
with, so that a request the gateway would send wrongly fails as it would in production.

- OpenAI's reasoning models: 400 ``unsupported_parameter`` for ``max_tokens`` ("Use
  'max_completion_tokens' instead") and ``logprobs``; 400 ``unsupported_value`` for a
  ``temperature`` or ``top_p`` other than 1 ("Only the default (1) value is supported") (the
  bodies quoted in many public bug reports).
- Groq: a 400 for ``logprobs``, ``logit_bias``, ``top_logprobs`` and ``n`` other than 1
  (console.groq.com/docs/openai; the docs give the status, the wording here is illustrative).
- Mistral: a 422 ``extra_forbidden`` for any field it does not know (``seed``,
  ``stream_options``...), in its wrapped pydantic error body; a stream ends with usage
  whatever was asked.
- Anthropic's OpenAI compatibility layer: ``n`` must be 1; ``response_format`` is ignored
  (answers are plain text).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tests.fake_responses import response_body
from tests.fake_upstream import Behavior, FakeUpstream, Seen, chunk, completion, sse, text_stream

__all__ = [
    "StrictUpstream",
    "anthropic_chat",
    "groq",
    "lm_studio",
    "mistral",
    "openai_reasoning",
    "openai_refusal",
]

# Checks a chat body; a Behavior refuses it, None lets it through.
Check = Callable[[dict[str, Any]], Behavior | None]
USAGE = {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}


class StrictUpstream(FakeUpstream):
    """A fake upstream that answers each chat request after ``check`` let it through: a
    completion, or a text stream when the body asked for one (with usage at the end when
    asked, or always when ``always_usage``); a Responses request (whole) likewise."""

    def __init__(self, check: Check, *, models: tuple[str, ...], always_usage: bool = False):
        super().__init__(models=models)
        self._check = check
        self._always_usage = always_usage

    def behavior_for(self, seen: Seen) -> Behavior:
        if seen.path.endswith("/responses") and not self.script:
            return self._check(seen.json) or Behavior(
                json_body=response_body("fine", model=seen.json["model"])
            )
        if self.script or not seen.path.endswith("/chat/completions"):
            return super().behavior_for(seen)
        body = seen.json
        refused = self._check(body)
        if refused is not None:
            return refused
        if not body.get("stream"):
            return Behavior(json_body=completion("fine", model=body["model"]))
        options = body.get("stream_options") or {}
        if not (self._always_usage or options.get("include_usage")):
            return Behavior(events=text_stream(["fi", "ne"]))
        return Behavior(
            events=sse(
                chunk({"role": "assistant", "content": "fine"}),
                chunk({}, finish="stop"),
                {**chunk(), "choices": [], "usage": USAGE},
            )
        )


def openai_refusal(message: str, *, param: str, code: str) -> Behavior:
    """A 400 in OpenAI's words."""
    error = {"message": message, "type": "invalid_request_error", "param": param, "code": code}
    return Behavior(status=400, json_body={"error": error})


def openai_reasoning(body: dict[str, Any]) -> Behavior | None:
    """What an o-series or gpt-5 model refuses."""
    if "max_tokens" in body:
        return openai_refusal(
            "Unsupported parameter: 'max_tokens' is not supported with this model. "
            "Use 'max_completion_tokens' instead.",
            param="max_tokens",
            code="unsupported_parameter",
        )
    for name in ("temperature", "top_p"):
        value = body.get(name)
        if value is not None and value != 1:
            return openai_refusal(
                f"Unsupported value: '{name}' does not support {value} with this model. "
                "Only the default (1) value is supported.",
                param=name,
                code="unsupported_value",
            )
    if "logprobs" in body:
        return openai_refusal(
            "Unsupported parameter: 'logprobs' is not supported with this model.",
            param="logprobs",
            code="unsupported_parameter",
        )
    return None


def groq(body: dict[str, Any]) -> Behavior | None:
    """Groq's documented refusals."""
    for name in ("logprobs", "logit_bias", "top_logprobs"):
        if name in body:
            return _groq_400(f"'{name}' : property '{name}' is unsupported")
    if body.get("n", 1) != 1:
        return _groq_400("'n' : number must be at most 1")
    return None


def _groq_400(message: str) -> Behavior:
    error = {"message": message, "type": "invalid_request_error"}
    return Behavior(status=400, json_body={"error": error})


# What Mistral's chat completions accept; anything else is extra_forbidden.
_MISTRAL_FIELDS = frozenset(
    {
        "model",
        "messages",
        "temperature",
        "top_p",
        "max_tokens",
        "stream",
        "stop",
        "random_seed",
        "response_format",
        "tools",
        "tool_choice",
        "presence_penalty",
        "frequency_penalty",
        "n",
        "prediction",
        "parallel_tool_calls",
        "safe_prompt",
    }
)


def mistral(body: dict[str, Any]) -> Behavior | None:
    """Mistral's 422 for the first field it does not know."""
    for name in body:
        if name not in _MISTRAL_FIELDS:
            detail = {
                "type": "extra_forbidden",
                "loc": ["body", name],
                "msg": "Extra inputs are not permitted",
                "input": body[name],
            }
            error = {
                "object": "error",
                "message": {"detail": [detail]},
                "type": "invalid_request_error",
                "param": None,
                "code": None,
            }
            return Behavior(status=422, json_body=error)
    return None


def anthropic_chat(body: dict[str, Any]) -> Behavior | None:
    """Anthropic's compatibility layer: n must be 1 (the rest it ignores)."""
    if body.get("n", 1) != 1:
        error = {"type": "invalid_request_error", "message": "n: only n=1 is supported"}
        return Behavior(status=400, json_body={"type": "error", "error": error})
    return None


def lm_studio(body: dict[str, Any]) -> Behavior | None:
    """What LM Studio refuses: a tool_choice that is not a string (its words, as users
    report them)."""
    if isinstance(body.get("tool_choice"), dict):
        message = (
            "Invalid tool_choice type: 'object'. Supported string values: none, auto, required"
        )
        return Behavior(status=400, json_body={"error": message})
    return None
