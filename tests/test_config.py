from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import SecretStr

from leapasgi.config import (
    AliasConfig,
    GatewayConfig,
    ProviderConfig,
    RoutingConfig,
    load_config,
    parse_config,
)
from leapasgi.exceptions import ConfigurationError
from leapasgi.features import ALL_FEATURES, Feature
from leapasgi.providers.base import Timeouts
from leapasgi.providers.compatible import OpenAICompatibleProvider
from leapasgi.providers.mock import MockProvider
from leapasgi.providers.presets import PRESETS

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "gateway.toml"
SECRET = "sk-test-0123456789abcdef"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "gateway.toml"
    path.write_text(text, encoding="utf-8")
    return path


def config_error(path: Path, env: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigurationError) as caught:
        load_config(path, env=env or {})
    return str(caught.value)


def test_the_example_loads_with_an_empty_environment_and_enables_only_the_mock() -> None:
    config = load_config(EXAMPLE, env={})
    assert [p.name for p in config.enabled_providers(env={})] == ["mock"]
    assert set(config.skipped_providers(env={})) == {"openai", "anthropic", "groq", "together"}
    assert "OPENAI_API_KEY" in config.skipped_providers(env={})["openai"]
    assert config.routing.aliases["default"].targets[0] == "mock/mock-chat"
    assert "fast" in config.routing.aliases


def test_the_example_enables_openai_when_its_key_is_set() -> None:
    env = {"OPENAI_API_KEY": SECRET}
    config = load_config(EXAMPLE, env=env)
    enabled = {p.name: p for p in config.enabled_providers(env=env)}
    assert set(enabled) == {"mock", "openai"}
    key = enabled["openai"].resolve_key(env)
    assert isinstance(key, SecretStr)
    assert key.get_secret_value() == SECRET
    for text in (repr(config), str(config), repr(enabled["openai"]), str(key)):
        assert SECRET not in text


def test_a_secret_never_appears_in_an_error(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[[providers]]\nname = "x"\npreset = "openai"\napi_key = "${KEY}"\ntimeout = "${KEY}"\n',
    )
    message = config_error(path, {"KEY": SECRET})
    assert "providers[0].timeout" in message
    assert SECRET not in message


def test_a_default_is_used_when_the_variable_is_unset_or_empty() -> None:
    text = '[[providers]]\nname = "local"\nbase_url = "${URL:-http://localhost:8000/v1}"\n'
    for env in ({}, {"URL": ""}):
        assert parse_config(text, env=env).providers[0].base_url == "http://localhost:8000/v1"
    config = parse_config(text, env={"URL": "http://10.0.0.2/v1"})
    assert config.providers[0].base_url == "http://10.0.0.2/v1"


def test_a_variable_in_a_number_field_is_coerced() -> None:
    config = parse_config('[health]\ninterval = "${EVERY:-15}"\n', env={})
    assert config.health.interval == 15.0


def test_a_doubled_dollar_escapes_a_reference() -> None:
    text = '[[providers]]\nname = "m"\ntype = "mock"\nreply = "costs $${HOME} and $$5"\n'
    assert parse_config(text, env={}).providers[0].reply == "costs ${HOME} and $$5"


def test_a_missing_variable_names_file_key_path_and_variable_but_no_value(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[[providers]]\nname = "m"\ntype = "mock"\n'
        '[[providers]]\nname = "o"\npreset = "openai"\napi_key = "${MY_OPENAI_KEY}"\n',
    )
    message = config_error(path, {"OTHER": SECRET})
    assert str(path) in message
    assert "providers[1].api_key" in message
    assert "MY_OPENAI_KEY" in message
    assert SECRET not in message


def test_malformed_references_are_errors() -> None:
    for value in ("${1BAD}", "${OPEN", "${A:-${B}}"):
        with pytest.raises(ConfigurationError, match=r"routing\.strategy"):
            parse_config(f'[routing]\nstrategy = "{value}"\n', env={"B": "x"})


def test_an_optional_provider_with_an_unset_variable_is_dropped() -> None:
    text = (
        '[routing.aliases]\nfast = ["o/gpt-4o-mini"]\n'
        '[[providers]]\nname = "o"\npreset = "openai"\noptional = true\n'
        'base_url = "${OPENAI_URL}"\n'
        '[[providers]]\nname = "m"\ntype = "mock"\ntimeout = "soon"\n'
    )
    with pytest.raises(ConfigurationError) as caught:
        parse_config(text, source="gw.toml", env={})
    # Error paths point into the file as written, even with provider 0 dropped.
    assert "gw.toml: providers[1].timeout: Input should be a valid number" in str(caught.value)
    config = parse_config(text.replace('"soon"', "3"), env={})
    assert [p.name for p in config.providers] == ["m"]
    assert "OPENAI_URL" in config.skipped_providers()["o"]


def test_api_key_file_is_read_and_stripped_relative_to_the_config(tmp_path: Path) -> None:
    (tmp_path / "key.txt").write_text(f"  {SECRET}\n", encoding="utf-8")
    path = write(
        tmp_path, '[[providers]]\nname = "o"\npreset = "openai"\napi_key_file = "key.txt"\n'
    )
    provider = load_config(path, env={}).providers[0]
    assert provider.api_key_file == tmp_path / "key.txt"
    key = provider.resolve_key(env={})
    assert key is not None
    assert key.get_secret_value() == SECRET


def test_a_missing_key_file_names_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.txt"
    provider = ProviderConfig(name="o", preset="openai", api_key_file=missing)
    with pytest.raises(ConfigurationError, match=r"nope\.txt") as caught:
        provider.resolve_key(env={"OPENAI_API_KEY": SECRET})
    assert caught.value.provider == "o"
    optional = provider.model_copy(update={"optional": True})
    config = GatewayConfig(providers=[optional])
    assert config.enabled_providers(env={}) == []


def test_an_empty_key_file_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "key.txt").write_text("\n", encoding="utf-8")
    provider = ProviderConfig(name="o", preset="openai", api_key_file=tmp_path / "key.txt")
    with pytest.raises(ConfigurationError, match="is empty"):
        provider.resolve_key(env={})


def test_an_unknown_key_is_an_error_naming_it(tmp_path: Path) -> None:
    path = write(tmp_path, '[[providers]]\nname = "o"\npreset = "openai"\napi_kye = "x"\n')
    message = config_error(path)
    assert f"{path}: providers[0].api_kye: Extra inputs are not permitted" in message
    with pytest.raises(ConfigurationError, match=r"routing\.stratgy"):
        parse_config('[routing]\nstratgy = "priority"\n', env={})


def test_a_wrong_type_names_file_path_and_expectation(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[[providers]]\nname = "m"\ntype = "mock"\n'
        '[[providers]]\nname = "o"\npreset = "openai"\ntimeout = "slow"\n',
    )
    message = config_error(path, {"OPENAI_API_KEY": SECRET})
    assert f"{path}: providers[1].timeout: Input should be a valid number" in message
    assert "slow" not in message


def test_a_bad_strategy_lists_the_choices() -> None:
    with pytest.raises(ConfigurationError, match=r"routing\.strategy: Input should be") as caught:
        parse_config('[routing]\nstrategy = "fastest"\n', env={})
    assert "least_latency" in str(caught.value)
    with pytest.raises(ConfigurationError, match=r"routing\.aliases\.a\.strategy"):
        parse_config('[routing.aliases.a]\ntargets = ["m"]\nstrategy = "x"\n', env={})


def test_invalid_values_are_rejected() -> None:
    cases = {
        "[routing]\nmax_attempts = 0\n": "routing.max_attempts",
        "[routing]\nretry_initial_delay = 5\nretry_max_delay = 1\n": "retry_max_delay",
        "[health]\nbase_ejection = 60\nmax_ejection = 10\n": "max_ejection",
        "[health]\ntimeout = inf\n": "health.timeout",
        '[[providers]]\nname = "bad name"\ntype = "mock"\n': "providers[0].name",
        '[[providers]]\nname = "x"\n': "base_url is required",
        '[[providers]]\nname = "x"\npreset = "nope"\n': "unknown preset",
        '[[providers]]\nname = "x"\nbase_url = "ftp://h"\n': "http:// or https://",
        '[[providers]]\nname = "x"\ntype = "mock"\npreset = "openai"\n': "mock",
        '[[providers]]\nname = "x"\npreset = "groq"\nreply = "hi"\n': "mock providers only",
        '[[providers]]\nname = "x"\npreset = "groq"\nheaders = {Authorization = "k"}\n': "header",
        "[routing.aliases]\nfast = []\n": "routing.aliases.fast.targets",
        '[routing.aliases]\nfast = ["p/"]\n': "routing.aliases.fast.targets[0]",
    }
    for text, expected in cases.items():
        with pytest.raises(ConfigurationError) as caught:
            parse_config(text, env={})
        assert expected in str(caught.value), text


def test_duplicate_provider_names_are_an_error() -> None:
    text = '[[providers]]\nname = "m"\ntype = "mock"\n' * 2
    with pytest.raises(ConfigurationError, match="duplicate provider name 'm'"):
        parse_config(text, env={})


def test_an_alias_naming_an_unknown_provider_is_an_error() -> None:
    text = '[routing.aliases]\nfast = ["grok/llama"]\n[[providers]]\nname = "m"\ntype = "mock"\n'
    with pytest.raises(ConfigurationError) as caught:
        parse_config(text, source="gw.toml", env={})
    assert "gw.toml: routing.aliases.fast.targets[0]: unknown provider 'grok'" in str(caught.value)
    config = parse_config(text.replace("grok/llama", "llama"), env={})
    assert config.routing.aliases["fast"] == AliasConfig(targets=["llama"])


def test_a_toml_syntax_error_names_the_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, "[routing]\nstrategy = \n")
    message = config_error(path)
    assert str(path) in message
    assert "line 2" in message


def test_a_missing_file_is_a_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match=r"absent\.toml"):
        load_config(tmp_path / "absent.toml")


def test_first_token_timeout_zero_switches_it_off() -> None:
    config = parse_config("[routing]\nfirst_token_timeout = 0\n", env={})
    assert config.routing.first_token_timeout is None
    assert RoutingConfig().first_token_timeout == 60.0


def test_build_gives_a_mock_provider_with_the_configured_settings() -> None:
    config = ProviderConfig(
        name="m",
        type="mock",
        models=["a", "b"],
        reply="hi",
        chunks=3,
        chunk_delay=0.1,
        features=["streaming"],
        timeout=7,
    )
    provider = config.build()
    assert isinstance(provider, MockProvider)
    assert (provider.name, provider.models, provider.reply) == ("m", ("a", "b"), "hi")
    assert (provider.chunks, provider.chunk_delay) == (3, 0.1)
    assert provider.features == frozenset({Feature.STREAMING})
    assert provider.timeouts.first_byte == 7
    default = ProviderConfig(name="m", type="mock").build()
    assert isinstance(default, MockProvider)
    assert default.models == ("mock-chat", "mock-embed")


def test_build_gives_an_openai_compatible_provider() -> None:
    config = ProviderConfig(
        name="g",
        preset="groq",
        timeout=12,
        connect_timeout=2,
        max_retries=5,
        models=["llama"],
        headers={"X-Team": "t"},
        max_connections=7,
    )
    provider = config.build(env={"GROQ_API_KEY": SECRET})
    assert isinstance(provider, OpenAICompatibleProvider)
    settings = provider.settings
    assert settings.timeouts == Timeouts(connect=2, first_byte=12, idle=12, total=600)
    assert settings.features == PRESETS["groq"].features
    assert settings.models == ("llama",)
    assert settings.base_url == PRESETS["groq"].base_url
    assert settings.max_connections == 7
    assert settings.api_key is not None
    assert settings.api_key.get_secret_value() == SECRET
    assert config.max_retries == 5


def test_build_without_a_preset_uses_every_feature_and_the_default_timeout() -> None:
    config = ProviderConfig(name="local", base_url="http://localhost:8000/v1")
    provider = config.build(env={})
    assert isinstance(provider, OpenAICompatibleProvider)
    assert provider.settings.features == ALL_FEATURES
    assert provider.settings.timeouts.first_byte == 30.0
    assert provider.settings.api_key is None


def test_a_preset_without_a_key_names_the_variable() -> None:
    config = GatewayConfig(providers=[ProviderConfig(name="oa", preset="openai")])
    with pytest.raises(ConfigurationError, match="OPENAI_API_KEY") as caught:
        config.enabled_providers(env={})
    assert caught.value.provider == "oa"
    with pytest.raises(ConfigurationError, match="OPENAI_API_KEY"):
        config.providers[0].build(env={})


def test_an_explicit_key_variable_is_required_and_a_keyless_preset_is_not() -> None:
    custom = ProviderConfig(name="c", base_url="http://h/v1", api_key_env="C_KEY")
    with pytest.raises(ConfigurationError, match="C_KEY"):
        custom.resolve_key(env={})
    assert custom.resolve_key(env={"C_KEY": "k"}) == SecretStr("k")
    assert ProviderConfig(name="ol", preset="ollama").resolve_key(env={}) is None


def test_secrets_stay_out_of_reprs() -> None:
    config = ProviderConfig(
        name="o",
        base_url=f"https://h/v1?key={SECRET}",
        api_key=SecretStr(SECRET),
        headers={"X-Api-Key": SECRET},
    )
    assert SECRET not in repr(config)
    assert SECRET not in str(config)
    assert "X-Api-Key" in repr(config)


def test_configs_are_frozen() -> None:
    config = GatewayConfig()
    with pytest.raises(ValueError, match="frozen"):
        config.routing = RoutingConfig()  # type: ignore[misc]


def test_each_provider_clock_can_be_set_on_its_own() -> None:
    text = """
[[providers]]
name = "up"
base_url = "http://127.0.0.1:9/v1"
timeout = 20
connect_timeout = 0.5
idle_timeout = 2
total_timeout = 9
"""
    provider = parse_config(text).providers[0].build()
    assert isinstance(provider, OpenAICompatibleProvider)
    timeouts = provider.settings.timeouts
    assert (timeouts.connect, timeouts.first_byte, timeouts.idle, timeouts.total) == (
        0.5,
        20,
        2,
        9,
    )


def _base_url_error(url: str) -> str:
    quoted = url.replace("\\", "\\\\")
    text = f'[[providers]]\nname = "p"\nbase_url = "{quoted}"\n'
    with pytest.raises(ConfigurationError) as caught:
        parse_config(text, source="gw.toml")
    return caught.value.message


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("file:///etc/passwd", "http:// or https://"),
        ("gopher://127.0.0.1:6379/_x", "http:// or https://"),
        ("http://h /v1", "http:// or https://"),
        ("http://h\\@169.254.169.254/", "http:// or https://"),
        ("http://169.254.169.254/latest", "metadata service"),
        ("http://[fd00:ec2::254]/", "metadata service"),
        ("http://metadata.google.internal/v1", "metadata service"),
        ("http://Metadata.Google.Internal./v1", "metadata service"),
        ("http://2852039166/", "metadata service"),
        ("http://0xa9fea9fe/", "metadata service"),
        ("http://0251.0376.0251.0376/", "metadata service"),
        ("http://[::ffff:169.254.169.254]/", "metadata service"),
        ("http://x@169.254.169.254/", "metadata service"),
        ("http://169.254.169.254#@example.com", "metadata service"),
        ("http://100.100.100.200/", "metadata service"),
        ("http://169.254.10.1:8000/v1", "link-local"),
        ("http://[fe80::1]:8000/v1", "link-local"),
        ("http://224.0.0.1/", "multicast"),
        ("http://%31%36%39.254.169.254/", "valid host name"),
        ("http://[fe80::1%25eth0]/", "valid host name"),
    ],
)
def test_base_urls_that_reach_metadata_or_other_schemes_are_refused(url: str, reason: str) -> None:
    message = _base_url_error(url)
    assert message.startswith("gw.toml: providers[0].base_url: ")
    assert reason in message
    assert url not in message


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:11434/v1",
        "http://localhost:8000/v1",
        "http://[::1]:8000/v1",
        "http://0.0.0.0:11434/v1",
        "http://10.1.2.3/v1",
        "http://172.16.0.9:8080/v1",
        "http://192.168.1.20/v1",
        "https://api.example.com/v1?key=abc",
        "http://ollama.internal:11434/v1",
    ],
)
def test_loopback_private_and_public_base_urls_are_allowed(url: str) -> None:
    assert ProviderConfig(name="p", base_url=url).base_url == url


def test_a_hop_by_hop_header_cannot_be_configured() -> None:
    for name in ("Connection", "transfer-encoding", "Upgrade", "Proxy-Authorization", "TE"):
        with pytest.raises(ValueError, match="hop-by-hop"):
            ProviderConfig(name="p", base_url="http://h/v1", headers={name: "x"})


def test_a_key_in_the_url_user_info_stays_out_of_reprs() -> None:
    config = ProviderConfig(name="p", base_url=f"http://user:{SECRET}@h/v1")
    assert SECRET not in repr(config)
    assert "h/v1" in repr(config)


def test_batches_with_the_redis_backend_need_a_shared_directory() -> None:
    text = """
[state]
backend = "redis"
url = "redis://127.0.0.1:6379/0"

[batches]
enabled = true
"""
    with pytest.raises(ConfigurationError, match=r"batches\.directory: .*every replica shares"):
        parse_config(text)
    shared = parse_config(text + 'directory = "/mnt/shared/batches"\n')
    assert shared.batches.directory is not None
    # Without batches, or on the memory backend, nothing is asked for.
    assert parse_config(text.replace("enabled = true", "enabled = false")).batches.directory is None
    assert parse_config("[batches]\nenabled = true\n").batches.directory is None


PARAMS_TOML = """
[[providers]]
name = "local"
preset = "ollama"

[providers.params]
drop = ["seed"]
rename = { max_tokens = "max_completion_tokens" }
defaults = { keep_alive = "5m" }
max = { n = 1 }
unsupported = ["logprobs", "response_format:json_schema"]
"""


def test_provider_params_as_one_table_come_after_the_presets() -> None:
    config = parse_config(PARAMS_TOML, env={})
    [rules] = config.providers[0].params
    assert rules.drop == ("seed",)
    assert rules.defaults == {"keep_alive": "5m"}
    provider = config.providers[0].build(env={})
    assert isinstance(provider, OpenAICompatibleProvider)
    policy = provider.capabilities.params
    assert policy is not None
    assert policy.rules[-1] == rules
    params = policy.for_model("llama3.2")
    assert params is not None
    described = params.describe()
    # Ollama's own rename, then the provider's rules.
    assert "rename max_completion_tokens -> max_tokens" in described
    assert "rename max_tokens -> max_completion_tokens" in described
    assert {"drop seed", "n at most 1", "default keep_alive", "refuse logprobs"} <= set(described)
    assert "refuse response_format:json_schema" in described


def test_provider_params_as_tables_per_model_pattern() -> None:
    text = """
[[providers]]
name = "openai"
preset = "openai"
api_key = "sk-x"

[[providers.params]]
models = ["o9*"]
allow = ["temperature"]

[[providers.params]]
drop = ["user"]
"""
    provider = parse_config(text, env={}).providers[0].build(env={})
    policy = provider.capabilities.params
    assert policy is not None
    o9 = policy.for_model("o9-mini")
    assert o9 is not None
    assert "drop user" in o9.describe()
    o3 = policy.for_model("o3")
    assert o3 is not None
    assert "drop temperature" in o3.describe()


def test_a_mock_provider_takes_params_too() -> None:
    text = '[[providers]]\nname = "m"\ntype = "mock"\n[providers.params]\nmax = { n = 1 }\n'
    provider = parse_config(text, env={}).providers[0].build()
    assert provider.capabilities.params is not None


@pytest.mark.parametrize(
    ("table", "expected"),
    [
        ('dorp = ["seed"]', "providers[0].params[0].dorp: Extra inputs are not permitted"),
        ('drop = ["n"]', "providers[0].params[0]: drop: dropping 'n' would change what the client"),
        ("clamp = { n = 1 }", "providers[0].params[0]: clamp: 'n' cannot be lowered"),
        ('unsupported = ["response_format:xml"]', "the kinds of response_format are"),
        ('max = { n = "one" }', "providers[0].params[0].max.n: Input should be a valid number"),
    ],
)
def test_params_mistakes_name_their_key_path(tmp_path: Path, table: str, expected: str) -> None:
    text = f'[[providers]]\nname = "m"\ntype = "mock"\n[providers.params]\n{table}\n'
    assert expected in config_error(write(tmp_path, text))
