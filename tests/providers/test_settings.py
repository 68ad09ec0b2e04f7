from __future__ import annotations

import pytest
from pydantic import ValidationError

from leapasgi.exceptions import ConfigurationError
from leapasgi.features import Feature
from leapasgi.params import ParamPolicy
from leapasgi.providers.base import Timeouts
from leapasgi.providers.presets import PRESETS, get_preset
from leapasgi.providers.settings import ProviderSettings

CANARY = "sk-canary-settings-0123456789"


def test_every_preset_has_a_usable_base_url_and_timeout() -> None:
    assert set(PRESETS) == {
        "openai",
        "anthropic",
        "gemini",
        "groq",
        "together",
        "ollama",
        "mistral",
        "deepseek",
        "openrouter",
        "fireworks",
        "vllm",
        "lmstudio",
    }
    for preset in PRESETS.values():
        settings = ProviderSettings.from_preset(preset.name, api_key="k" * 10)
        assert settings.base_url.startswith(("https://", "http://localhost"))
        assert settings.timeouts.first_byte == preset.timeout


def test_the_issue_defaults_of_the_main_presets() -> None:
    assert get_preset("openai").timeout == 30.0
    assert Feature.VISION in get_preset("openai").features
    assert Feature.VISION not in get_preset("groq").features
    ollama = get_preset("ollama")
    assert (ollama.base_url, ollama.api_key_env, ollama.timeout) == (
        "http://localhost:11434/v1",
        None,
        120.0,
    )
    # Ollama reads max_tokens only: the other spelling is renamed on the way out.
    rules = ParamPolicy(ollama.params).for_model("llama3.2")
    assert rules is not None
    assert "rename max_completion_tokens -> max_tokens" in rules.describe()


def test_the_key_comes_from_the_environment_variable() -> None:
    settings = ProviderSettings.from_preset("groq", env={"GROQ_API_KEY": CANARY})
    assert settings.api_key is not None
    assert settings.api_key.get_secret_value() == CANARY
    assert CANARY not in repr(settings)
    assert CANARY not in str(settings)


def test_a_missing_key_is_a_clear_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="set OPENAI_API_KEY"):
        ProviderSettings.from_preset("openai", env={})


def test_local_presets_need_no_key() -> None:
    settings = ProviderSettings.from_preset("ollama", env={})
    assert settings.api_key is None


def test_overrides_and_unknown_presets() -> None:
    settings = ProviderSettings.from_preset(
        "together",
        name="tg",
        api_key="k" * 10,
        base_url="https://api.together.xyz/v1/",
        models=["a/b"],
        timeouts=Timeouts(first_byte=1.0),
        features=["streaming", "my-feature"],
    )
    assert (settings.name, settings.base_url, settings.models) == (
        "tg",
        "https://api.together.xyz/v1",
        ("a/b",),
    )
    assert settings.features == {"streaming", "my-feature"}
    with pytest.raises(ConfigurationError, match="known presets: anthropic, deepseek"):
        get_preset("nope")


@pytest.mark.parametrize(
    "fields",
    [
        {"base_url": "ftp://x/v1"},
        {"base_url": "api.openai.com/v1"},
        {"name": "has space"},
        {"headers": {"Authorization": "Bearer x"}},
        {"headers": {"X-Ok": "a\r\nInjected: 1"}},
        {"max_connections": 0},
    ],
)
def test_settings_that_cannot_work_are_refused(fields: dict[str, object]) -> None:
    base: dict[str, object] = {"name": "p", "base_url": "http://127.0.0.1:1/v1"}
    with pytest.raises(ValidationError):
        ProviderSettings.model_validate({**base, **fields})


def test_a_key_in_the_url_query_stays_out_of_reprs() -> None:
    settings = ProviderSettings(name="p", base_url=f"https://host.test/v1?key={CANARY}")
    assert CANARY not in repr(settings)
    assert settings.base_url.endswith(CANARY)


def test_header_values_stay_out_of_reprs() -> None:
    settings = ProviderSettings(
        name="p", base_url="https://host.test/v1", headers={"x-api-key": CANARY}
    )
    assert CANARY not in repr(settings)
    assert CANARY not in str(settings)
    assert "x-api-key" in repr(settings)


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest/meta-data",
        "http://metadata.google.internal/v1",
        "http://[fe80::1]/v1",
        "file:///etc/passwd",
    ],
)
def test_providers_built_in_code_refuse_metadata_and_link_local_urls(url: str) -> None:
    with pytest.raises(ValidationError):
        ProviderSettings(name="p", base_url=url)


def test_providers_built_in_code_accept_loopback_and_lan_urls() -> None:
    for url in ("http://127.0.0.1:11434/v1", "http://10.0.0.5/v1", "https://api.openai.com/v1"):
        assert ProviderSettings(name="p", base_url=url).base_url == url
