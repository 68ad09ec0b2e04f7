"""Known services: base URL, key variable, timeout, features, the APIs each serves natively,
and the parameter rules of its chat completions (``leapasgi.params``), from each service's
documentation and the errors it is known to return."""

from __future__ import annotations

from dataclasses import dataclass

from ..exceptions import ConfigurationError
from ..features import ALL_FEATURES, Feature
from ..native import WireProtocol
from ..params import ParamRules

__all__ = ["PRESETS", "Preset", "get_preset"]

_NO_VISION = ALL_FEATURES - {Feature.VISION}
_CHAT = WireProtocol.CHAT_COMPLETIONS
_RESPONSES = WireProtocol.RESPONSES
_MESSAGES = WireProtocol.MESSAGES
_EMBEDDINGS = WireProtocol.EMBEDDINGS
CHAT_ONLY = frozenset({_CHAT})


@dataclass(frozen=True, slots=True)
class Preset:
    """Defaults for one service; every field can be overridden per provider."""

    name: str
    base_url: str
    api_key_env: str | None
    timeout: float
    features: frozenset[str]
    key_required: bool = True
    # The APIs it serves natively; a client speaking one of these passes straight through.
    protocols: frozenset[WireProtocol] = CHAT_ONLY
    # Its native Messages API takes the key as ``x-api-key`` only (Anthropic's own).
    key_header: str = "authorization"
    # What its chat completions cannot take, and what is done about it.
    params: tuple[ParamRules, ...] = ()


# OpenAI's reasoning models (o1, o3, o4-mini, gpt-5...): 400 ``unsupported_parameter`` for
# max_tokens ("Use 'max_completion_tokens' instead") and logprobs, 400 ``unsupported_value``
# for a temperature other than 1 ("Only the default (1) value is supported"), the same for
# top_p and the penalties; o3, o4-mini and gpt-5 reject stop too.
_OPENAI = (
    ParamRules(
        models=("o1*", "o3*", "o4*", "gpt-5*"),
        rename={"max_tokens": "max_completion_tokens"},
        drop=("temperature", "top_p", "presence_penalty", "frequency_penalty"),
        unsupported=("logprobs", "top_logprobs", "logit_bias"),
    ),
    ParamRules(models=("o3*", "o4*", "gpt-5*"), unsupported=("stop",)),
)
# Anthropic's OpenAI SDK compatibility layer: n must be 1; logprobs, response_format and
# logit_bias are ignored (so a request that needs them must go elsewhere); seed and the
# penalties are ignored; temperature above 1 is capped at 1.
_ANTHROPIC = (
    ParamRules(
        max={"n": 1},
        clamp={"temperature": 1},
        drop=("seed", "presence_penalty", "frequency_penalty"),
        unsupported=(
            "logprobs",
            "top_logprobs",
            "logit_bias",
            "response_format:json_object",
            "response_format:json_schema",
        ),
    ),
)
# Groq: a 400 for logprobs, logit_bias and top_logprobs, and for n other than 1.
_GROQ = (ParamRules(max={"n": 1}, unsupported=("logprobs", "top_logprobs", "logit_bias")),)
# Ollama's /v1: reads max_tokens only (max_completion_tokens is ignored); ignores n,
# tool_choice, logit_bias and parallel_tool_calls, so a request that needs them goes elsewhere.
_OLLAMA = (
    ParamRules(
        rename={"max_completion_tokens": "max_tokens"},
        max={"n": 1},
        unsupported=(
            "logit_bias",
            "parallel_tool_calls",
            "tool_choice:required",
            "tool_choice:function",
            "tool_choice:allowed_tools",
            "tool_choice:custom",
        ),
    ),
)
# Mistral refuses fields it does not know (422 extra_forbidden): seed is random_seed there,
# stream_options is refused (usage comes at a stream's end anyway), max_tokens is its limit.
_MISTRAL = (
    ParamRules(
        rename={"seed": "random_seed", "max_completion_tokens": "max_tokens"},
        drop=("stream_options", "user", "metadata"),
        unsupported=("logprobs", "top_logprobs", "logit_bias"),
    ),
)
# DeepSeek: max_tokens is its limit; deepseek-reasoner ignores the sampling parameters and
# answers logprobs and top_logprobs with an error.
_DEEPSEEK = (
    ParamRules(rename={"max_completion_tokens": "max_tokens"}),
    ParamRules(
        models=("deepseek-reasoner*",),
        drop=("temperature", "top_p", "presence_penalty", "frequency_penalty"),
        unsupported=("logprobs", "top_logprobs"),
    ),
)

# LM Studio takes tool_choice only as a string: "Invalid tool_choice type: 'object'.
# Supported string values: none, auto, required" (a 400).
_LMSTUDIO = (ParamRules(string_tool_choice=True),)


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset(
            "openai",
            "https://api.openai.com/v1",
            "OPENAI_API_KEY",
            30.0,
            ALL_FEATURES,
            protocols=frozenset({_CHAT, _RESPONSES, _EMBEDDINGS}),
            params=_OPENAI,
        ),
        # Anthropic's own Messages API, and its OpenAI-compatible chat completions beside it.
        Preset(
            "anthropic",
            "https://api.anthropic.com/v1",
            "ANTHROPIC_API_KEY",
            60.0,
            ALL_FEATURES,
            protocols=frozenset({_CHAT, _MESSAGES}),
            key_header="x-api-key",
            params=_ANTHROPIC,
        ),
        # Google's OpenAI-compatible endpoint for Gemini (chat and embeddings).
        Preset(
            "gemini",
            "https://generativelanguage.googleapis.com/v1beta/openai",
            "GEMINI_API_KEY",
            60.0,
            ALL_FEATURES,
            protocols=frozenset({_CHAT, _EMBEDDINGS}),
        ),
        Preset(
            "groq",
            "https://api.groq.com/openai/v1",
            "GROQ_API_KEY",
            30.0,
            _NO_VISION,
            params=_GROQ,
        ),
        Preset(
            "together",
            "https://api.together.ai/v1",
            "TOGETHER_API_KEY",
            60.0,
            ALL_FEATURES,
            protocols=frozenset({_CHAT, _EMBEDDINGS}),
        ),
        Preset(
            "ollama",
            "http://localhost:11434/v1",
            None,
            120.0,
            ALL_FEATURES,
            key_required=False,
            protocols=frozenset({_CHAT, _MESSAGES, _EMBEDDINGS}),
            params=_OLLAMA,
        ),
        Preset(
            "mistral",
            "https://api.mistral.ai/v1",
            "MISTRAL_API_KEY",
            60.0,
            ALL_FEATURES,
            protocols=frozenset({_CHAT, _EMBEDDINGS}),
            params=_MISTRAL,
        ),
        Preset(
            "deepseek",
            "https://api.deepseek.com/v1",
            "DEEPSEEK_API_KEY",
            60.0,
            _NO_VISION,
            params=_DEEPSEEK,
        ),
        Preset(
            "openrouter", "https://openrouter.ai/api/v1", "OPENROUTER_API_KEY", 60.0, ALL_FEATURES
        ),
        Preset(
            "fireworks",
            "https://api.fireworks.ai/inference/v1",
            "FIREWORKS_API_KEY",
            60.0,
            ALL_FEATURES,
        ),
        Preset(
            "vllm",
            "http://localhost:8000/v1",
            "VLLM_API_KEY",
            120.0,
            ALL_FEATURES,
            key_required=False,
            protocols=frozenset({_CHAT, _RESPONSES, _MESSAGES, _EMBEDDINGS}),
        ),
        Preset(
            "lmstudio",
            "http://localhost:1234/v1",
            None,
            120.0,
            ALL_FEATURES,
            key_required=False,
            protocols=frozenset({_CHAT, _EMBEDDINGS}),
            params=_LMSTUDIO,
        ),
    )
}


def get_preset(name: str) -> Preset:
    """The preset called ``name``; an unknown name lists the known ones."""
    try:
        return PRESETS[name.lower()]
    except KeyError:
        known = ", ".join(sorted(PRESETS))
        raise ConfigurationError(f"Unknown preset {name!r}; known presets: {known}") from None
