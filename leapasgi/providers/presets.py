"""Known services: base URL, key variable, timeout, features and the APIs each serves natively."""

from __future__ import annotations

from dataclasses import dataclass

from ..exceptions import ConfigurationError
from ..features import ALL_FEATURES, Feature
from ..native import WireProtocol

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
    # The service reads only the deprecated ``max_tokens``; ``max_completion_tokens`` is mapped.
    legacy_max_tokens: bool = False
    # The APIs it serves natively; a client speaking one of these passes straight through.
    protocols: frozenset[WireProtocol] = CHAT_ONLY
    # Its native Messages API takes the key as ``x-api-key`` only (Anthropic's own).
    key_header: str = "authorization"


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
        Preset("groq", "https://api.groq.com/openai/v1", "GROQ_API_KEY", 30.0, _NO_VISION),
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
            legacy_max_tokens=True,
            protocols=frozenset({_CHAT, _MESSAGES, _EMBEDDINGS}),
        ),
        Preset(
            "mistral",
            "https://api.mistral.ai/v1",
            "MISTRAL_API_KEY",
            60.0,
            ALL_FEATURES,
            protocols=frozenset({_CHAT, _EMBEDDINGS}),
        ),
        Preset("deepseek", "https://api.deepseek.com/v1", "DEEPSEEK_API_KEY", 60.0, _NO_VISION),
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
