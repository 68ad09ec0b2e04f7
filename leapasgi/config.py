"""Typed configuration of the whole gateway, loaded from TOML or built in code.

    GatewayConfig
    ├── providers: [ProviderConfig]   [[providers]] one table per upstream (or the mock)
    ├── routing: RoutingConfig        [routing] strategy, attempts, deadlines; [routing.aliases]
    └── health: HealthConfig          [health] active checks and ejection

String values in a file may use ``${VAR}``, ``${VAR:-default}`` (used when VAR is unset or
empty) and ``$${`` for a literal ``${``. Every model is frozen and forbids unknown keys, so a typo
fails the load with its key path. Secrets are ``SecretStr`` and no error echoes a value.
"""

from __future__ import annotations

import os
import resource
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Self

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from ._config_file import SKIPPED_CONTEXT, format_errors, prepare, read_text
from .balancing import Strategy
from .clock import Clock
from .conversations import DEFAULT_MAX_BYTES as DEFAULT_STORE_BYTES
from .conversations import DEFAULT_MAX_ENTRIES as DEFAULT_STORE_ENTRIES
from .conversations import DEFAULT_TTL as DEFAULT_STORE_TTL
from .exceptions import ConfigurationError
from .features import ALL_FEATURES
from .health import DEFAULT_BASE_EJECTION, DEFAULT_FAILURE_THRESHOLD, DEFAULT_MAX_EJECTION
from .hooks import load_hook
from .native import WireProtocol
from .params import ParamRules
from .providers.base import DEFAULT_CONNECT_TIMEOUT, DEFAULT_TOTAL_TIMEOUT, Provider, Timeouts
from .providers.compatible import OpenAICompatibleProvider
from .providers.mock import MockProvider
from .providers.presets import PRESETS, Preset, get_preset
from .providers.settings import (
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_RESPONSE_BYTES,
    ProviderSettings,
    check_headers,
)
from .providers.urls import check_base_url
from .redact import public_url
from .retry import DEFAULT_MAX_RETRIES, INITIAL_RETRY_DELAY, MAX_RETRY_AFTER, MAX_RETRY_DELAY
from .state.memory import DEFAULT_CACHE_MAX_BYTES, DEFAULT_CACHE_MAX_ENTRIES
from .tenants.policy import PRIORITY_MAX, PRIORITY_MIN, Budget, Period, TenantPolicy

__all__ = [
    "DEFAULT_BASE_EJECTION",
    "DEFAULT_FAILURE_THRESHOLD",
    "DEFAULT_FIRST_TOKEN_TIMEOUT",
    "DEFAULT_HEAD_TIMEOUT",
    "DEFAULT_HEALTH_INTERVAL",
    "DEFAULT_HEALTH_TIMEOUT",
    "DEFAULT_HOST",
    "DEFAULT_KEEPALIVE_INTERVAL",
    "DEFAULT_KEEP_ALIVE_TIMEOUT",
    "DEFAULT_MAX_ATTEMPTS",
    "DEFAULT_MAX_BODY_BYTES",
    "DEFAULT_MAX_EJECTION",
    "DEFAULT_MAX_HEADERS",
    "DEFAULT_MAX_HEAD_BYTES",
    "DEFAULT_PORT",
    "DEFAULT_REQUEST_TIMEOUT",
    "DEFAULT_TIMEOUT",
    "STRATEGIES",
    "AliasConfig",
    "BatchesConfig",
    "CacheConfig",
    "ConnectionLimits",
    "GatewayConfig",
    "HealthConfig",
    "HookConfig",
    "ProviderConfig",
    "RateLimitConfig",
    "ResponsesConfig",
    "RoutingConfig",
    "ServerConfig",
    "StateConfig",
    "TelemetryConfig",
    "load_config",
    "parse_config",
]

DEFAULT_TIMEOUT = 30.0
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
DEFAULT_MAX_BODY_BYTES = 10 * 1024 * 1024
DEFAULT_KEEPALIVE_INTERVAL = 15.0
DEFAULT_MAX_ATTEMPTS = 4
DEFAULT_REQUEST_TIMEOUT = DEFAULT_TOTAL_TIMEOUT
DEFAULT_FIRST_TOKEN_TIMEOUT = 60.0
DEFAULT_HEALTH_INTERVAL = 30.0
DEFAULT_HEALTH_TIMEOUT = 5.0
DEFAULT_STICKY_TTL = 3600.0
# At most this share of requests are hedged (a retry budget's usual size).
DEFAULT_HEDGE_BUDGET = 0.05
DEFAULT_SESSION_HEADERS = ("x-session-id", "x-claude-code-session-id")
DEFAULT_OP_TIMEOUT = 0.1
DEFAULT_SYNC_INTERVAL = 0.25
DEFAULT_RECOVER_INTERVAL = 1.0
DEFAULT_CACHE_TTL = 300.0
DEFAULT_CACHE_ENTRY_BYTES = 1024 * 1024
CACHEABLE_ROUTES = ("/v1/chat/completions", "/v1/responses", "/v1/messages", "/v1/embeddings")

STRATEGIES: tuple[str, ...] = tuple(Strategy)

_NAME_PATTERN = r"^[A-Za-z0-9_.-]{1,64}$"
_ENV_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"
_MASK = "**********"
# Hop-by-hop headers belong to one connection; a configured one would confuse the upstream.
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)


class _Config(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


def _check_target(target: str) -> str:
    provider, slash, model = target.partition("/")
    if not provider or (slash and not model):
        raise ValueError("a target is 'model' or 'provider/model'")
    return target


def _provider_of(target: str) -> str | None:
    provider, slash, _ = target.partition("/")
    return provider if slash else None


class RateLimitConfig(_Config):
    """Requests and tokens per minute for one model of a provider."""

    rpm: int | None = Field(default=None, ge=1)
    tpm: int | None = Field(default=None, ge=1)


class ProviderConfig(_Config):
    """One provider as the manager registers it."""

    name: str = Field(pattern=_NAME_PATTERN)
    type: Literal["openai_compatible", "mock"] = "openai_compatible"
    preset: str | None = None
    base_url: str | None = None
    api_key: SecretStr | None = None
    api_key_env: str | None = Field(default=None, pattern=_ENV_NAME_PATTERN)
    api_key_file: Path | None = None
    # First byte and idle (silence between reads) together; the next three refine it.
    timeout: float | None = Field(default=None, gt=0)
    connect_timeout: float = Field(default=DEFAULT_CONNECT_TIMEOUT, gt=0)
    first_byte_timeout: float | None = Field(default=None, gt=0)
    idle_timeout: float | None = Field(default=None, gt=0)
    # The whole call to this provider, retries included; it stops an upstream that drips.
    total_timeout: float | None = Field(default=None, gt=0)
    # Retries on this provider within one request; the manager runs them (and caps the request).
    max_retries: int = Field(default=DEFAULT_MAX_RETRIES, ge=0)
    features: list[str] | None = None
    # The APIs the upstream serves natively besides chat completions ("responses", "messages",
    # "embeddings"); unset: the preset's. A client speaking one of these passes through.
    protocols: list[WireProtocol] | None = None
    models: list[str] = Field(default_factory=list)
    weight: float = Field(default=1.0, gt=0)
    priority: int = 0
    max_connections: int = Field(default=DEFAULT_MAX_CONNECTIONS, ge=1)
    # The most an answer may be, decompressed (a JSON body or a whole stream); over it: 502.
    max_response_bytes: int = Field(default=DEFAULT_MAX_RESPONSE_BYTES, ge=1024)
    # Ask the upstream for usage on every stream (for cost and budgets); false for an
    # upstream that refuses stream_options (then a stream's usage is estimated).
    stream_usage: bool = True
    # Requests to this provider at once (unset: no limit) and how many more may wait for a
    # slot, up to the request's deadline; beyond that a request fails over at once.
    max_in_flight: int | None = Field(default=None, ge=1)
    max_waiting: int = Field(default=0, ge=0)
    # Adaptive concurrency: the in-flight limit follows what the provider can take (its
    # latency, its 429s and 503s), between min_in_flight and max_in_flight.
    adaptive_concurrency: bool = False
    min_in_flight: int = Field(default=1, ge=1)
    # Requests and tokens per minute to this provider (unset: no limit), exact across
    # replicas with a shared state backend; per model too. Over one: fail over, else a 429.
    rpm: int | None = Field(default=None, ge=1)
    tpm: int | None = Field(default=None, ge=1)
    model_limits: dict[str, RateLimitConfig] = Field(default_factory=dict)
    headers: dict[str, str] = Field(default_factory=dict)
    # Parameter rules after the preset's own (``[providers.params]``: one table for every
    # model, or ``[[providers.params]]`` tables, each for every model or its ``models``).
    params: list[ParamRules] = Field(default_factory=list)
    optional: bool = False
    reply: str | None = None
    chunks: int | None = Field(default=None, ge=1)
    chunk_delay: float = Field(default=0.0, ge=0)

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        # A key can hide in a URL query, its user info or a header; reprs show none of them.
        for name, value in super().__repr_args__():
            if name == "base_url" and isinstance(value, str):
                value = public_url(value)
            elif name == "headers" and value:
                value = dict.fromkeys(value, _MASK)
            yield name, value

    @field_validator("preset")
    @classmethod
    def _known_preset(cls, value: str | None) -> str | None:
        if value is not None and value.lower() not in PRESETS:
            raise ValueError(f"unknown preset; known presets: {', '.join(sorted(PRESETS))}")
        return None if value is None else value.lower()

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        return None if value is None else check_base_url(value)

    @field_validator("api_key", mode="before")
    @classmethod
    def _empty_is_none(cls, value: Any) -> Any:
        return None if value == "" else value

    @field_validator("params", mode="before")
    @classmethod
    def _one_table_is_a_list(cls, value: Any) -> Any:
        return [value] if isinstance(value, Mapping) else value

    @field_validator("headers")
    @classmethod
    def _safe_headers(cls, value: dict[str, str]) -> dict[str, str]:
        for key in value:
            if key.lower() in _HOP_BY_HOP:
                raise ValueError(f"header {key!r} is hop-by-hop and cannot be sent upstream")
        return check_headers(value)

    @model_validator(mode="after")
    def _fields_fit_type(self) -> Self:
        if self.type == "mock":
            names = ("preset", "base_url", "api_key", "api_key_env", "api_key_file")
            stray = [n for n in names if getattr(self, n) is not None]
            if stray:
                raise ValueError(f"{', '.join(stray)}: not used by mock providers")
            return self
        stray = [n for n in ("reply", "chunks") if getattr(self, n) is not None]
        stray += ["chunk_delay"] if self.chunk_delay else []
        if stray:
            raise ValueError(f"{', '.join(stray)}: for mock providers only")
        if self.preset is None and self.base_url is None:
            raise ValueError("base_url is required when no preset is given")
        return self

    @model_validator(mode="after")
    def _waiting_needs_a_limit(self) -> Self:
        if self.max_waiting and self.max_in_flight is None:
            raise ValueError("max_waiting: set max_in_flight too; requests wait for its slots")
        if self.adaptive_concurrency and self.max_in_flight is None:
            raise ValueError("adaptive_concurrency: set max_in_flight too (its ceiling)")
        if self.max_in_flight is not None and self.min_in_flight > self.max_in_flight:
            raise ValueError("min_in_flight: at most max_in_flight")
        return self

    def resolve_key(self, env: Mapping[str, str] | None = None) -> SecretStr | None:
        """The API key: ``api_key``, else ``api_key_file``, else the key variable's value."""
        if self.api_key is not None:
            return self.api_key
        if self.api_key_file is not None:
            return self._read_key_file(self.api_key_file)
        preset = self._preset()
        variable = self.api_key_env or (preset.api_key_env if preset else None)
        value = (os.environ if env is None else env).get(variable) if variable else None
        if value:
            return SecretStr(value)
        if self.api_key_env is not None or (preset is not None and preset.key_required):
            raise ConfigurationError(
                f"Provider {self.name!r} needs an API key: set {variable}", provider=self.name
            )
        return None

    def build(
        self, *, clock: Clock | None = None, env: Mapping[str, str] | None = None
    ) -> Provider:
        """The provider client (one upstream attempt per call: the dispatcher retries)."""
        if self.type == "mock":
            return MockProvider(
                name=self.name,
                models=self.models or None,
                reply=self.reply,
                chunks=self.chunks,
                chunk_delay=self.chunk_delay,
                features=self.features,
                timeouts=self._timeouts(),
                clock=clock,
                params=self.params,
            )
        preset = self._preset()
        try:
            settings = ProviderSettings(
                name=self.name,
                base_url=self.resolved_base_url or "",
                api_key=self.resolve_key(env),
                preset=self.preset,
                timeouts=self._timeouts(),
                features=frozenset(self._features()),
                models=tuple(self.models),
                headers=self.headers,
                max_connections=self.max_connections,
                max_response_bytes=self.max_response_bytes,
                params=(*(preset.params if preset else ()), *self.params),
                stream_usage=self.stream_usage,
                protocols=self._protocols(),
                key_header=preset.key_header if preset else "authorization",
            )
        except ValidationError as exc:
            detail = format_errors(exc, source=f"provider {self.name!r}")
            raise ConfigurationError(detail, provider=self.name) from None
        return OpenAICompatibleProvider(settings, clock=clock)

    @property
    def resolved_base_url(self) -> str | None:
        """The configured base URL, else the preset's; None for the mock provider."""
        if self.type == "mock":
            return None
        preset = self._preset()
        return self.base_url or (preset.base_url if preset else None)

    def _preset(self) -> Preset | None:
        return get_preset(self.preset) if self.preset else None

    def _timeouts(self) -> Timeouts:
        preset = self._preset()
        seconds = self.timeout or (preset.timeout if preset else DEFAULT_TIMEOUT)
        first_byte = self.first_byte_timeout or seconds
        idle = self.idle_timeout or seconds
        total = self.total_timeout or max(DEFAULT_TOTAL_TIMEOUT, first_byte, idle)
        return Timeouts(connect=self.connect_timeout, first_byte=first_byte, idle=idle, total=total)

    def _protocols(self) -> frozenset[WireProtocol]:
        if self.protocols is not None:
            return frozenset({WireProtocol.CHAT_COMPLETIONS, *self.protocols})
        preset = self._preset()
        return preset.protocols if preset else frozenset({WireProtocol.CHAT_COMPLETIONS})

    def _features(self) -> frozenset[str]:
        if self.features is not None:
            return frozenset(self.features)
        preset = self._preset()
        return preset.features if preset else ALL_FEATURES

    def _read_key_file(self, path: Path) -> SecretStr:
        try:
            key = path.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            reason = getattr(exc, "strerror", None) or type(exc).__name__
            raise ConfigurationError(
                f"Provider {self.name!r}: cannot read API key file {path}: {reason}",
                provider=self.name,
            ) from None
        if not key:
            raise ConfigurationError(
                f"Provider {self.name!r}: API key file {path} is empty", provider=self.name
            )
        return SecretStr(key)


class AliasConfig(_Config):
    """A model name that stands for targets in preference order.

    A target is a model name, or ``provider/model`` to pin one provider. A target with a slash
    always starts with a provider name: write ``together/meta-llama/...``, not ``meta-llama/...``.
    """

    targets: list[Annotated[str, AfterValidator(_check_target)]] = Field(min_length=1)
    strategy: Strategy | None = None
    # Keep a session on the provider that served it (unset: routing.sticky).
    sticky: bool | None = None
    # Hedge this alias's requests (needs routing.hedge_after; unset: routing.hedge_models).
    hedge: bool | None = None


class RoutingConfig(_Config):
    """How requests pick providers, and the bounds on one request's attempts and time."""

    strategy: Strategy = Strategy.PRIORITY
    aliases: dict[str, AliasConfig] = Field(default_factory=dict)
    max_attempts: int = Field(default=DEFAULT_MAX_ATTEMPTS, ge=1)
    request_timeout: float = Field(default=DEFAULT_REQUEST_TIMEOUT, gt=0)
    # TOML has no null: 0 switches the first-token timeout off.
    first_token_timeout: float | None = Field(default=DEFAULT_FIRST_TOKEN_TIMEOUT, gt=0)
    retry_initial_delay: float = Field(default=INITIAL_RETRY_DELAY, ge=0)
    retry_max_delay: float = Field(default=MAX_RETRY_DELAY, ge=0)
    max_retry_after: float = Field(default=MAX_RETRY_AFTER, ge=0)
    # Sticky routing for providers' prompt caches: a session (a session header, the Responses
    # chain, the user field, else its system prompt and first turn) stays on the provider
    # that served it while that one is healthy. Off by default; an alias may switch it.
    sticky: bool = False
    sticky_ttl: float = Field(default=DEFAULT_STICKY_TTL, gt=0)
    # Hedged requests (off unless hedge_after is set): a request without content after
    # hedge_after seconds (or "p95": its provider's recent p95 time to first token) sends a
    # second attempt to the next provider, and the first to produce content wins. Models in
    # hedge_models ("*": all) and aliases with hedge = true are hedged; a request opts in or
    # out with ``x-leap-hedge: on|off``. hedge_budget caps hedges at that share of requests.
    hedge_after: float | Literal["p95"] | None = Field(default=None)
    hedge_budget: float = Field(default=DEFAULT_HEDGE_BUDGET, ge=0, le=1)
    hedge_models: list[str] = Field(default_factory=list)
    session_headers: list[Annotated[str, Field(pattern=r"^[A-Za-z0-9-]{1,64}$")]] = Field(
        default_factory=lambda: list(DEFAULT_SESSION_HEADERS), max_length=8
    )

    @field_validator("session_headers")
    @classmethod
    def _lower_headers(cls, value: list[str]) -> list[str]:
        return [name.lower() for name in value]

    @field_validator("aliases", mode="before")
    @classmethod
    def _list_shorthand(cls, value: Any) -> Any:
        if not isinstance(value, Mapping):
            return value
        return {k: {"targets": v} if isinstance(v, list) else v for k, v in value.items()}

    @field_validator("hedge_after")
    @classmethod
    def _positive_delay(cls, value: float | str | None) -> float | str | None:
        if isinstance(value, float | int) and not value > 0:
            raise ValueError("hedge_after is a number of seconds above 0, or 'p95'")
        return value

    @field_validator("first_token_timeout", mode="before")
    @classmethod
    def _zero_is_off(cls, value: Any) -> Any:
        return None if value == 0 and not isinstance(value, bool) else value

    @model_validator(mode="after")
    def _delays_ordered(self) -> Self:
        if self.retry_max_delay < self.retry_initial_delay:
            raise ValueError("retry_max_delay must be at least retry_initial_delay")
        return self


class HealthConfig(_Config):
    """Active health checks and how long a failing provider is ejected."""

    interval: float = Field(default=DEFAULT_HEALTH_INTERVAL, ge=0)
    timeout: float = Field(default=DEFAULT_HEALTH_TIMEOUT, gt=0)
    failure_threshold: int = Field(default=DEFAULT_FAILURE_THRESHOLD, ge=1)
    base_ejection: float = Field(default=DEFAULT_BASE_EJECTION, gt=0)
    max_ejection: float = Field(default=DEFAULT_MAX_EJECTION, gt=0)

    @model_validator(mode="after")
    def _ejections_ordered(self) -> Self:
        if self.max_ejection < self.base_ejection:
            raise ValueError("max_ejection must be at least base_ejection")
        return self


# nginx reads at most 4 x 8 KiB of headers, Node 16 KiB; cookies and long tokens fit in this.
DEFAULT_MAX_HEAD_BYTES = 64 * 1024
DEFAULT_MAX_HEADERS = 100
# nginx's client_header_timeout is 60 s; a real client sends its head in one go.
DEFAULT_HEAD_TIMEOUT = 10.0
# uvicorn's default.
DEFAULT_KEEP_ALIVE_TIMEOUT = 5.0
# Descriptors kept for everything but client connections: upstream connections, files, logs.
_RESERVED_FDS = 0.25
_MAX_CONNECTIONS_CAP = 10_000


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    """What one client connection may take; ``max_connections`` None: three quarters of the
    process's open-file limit (at most 10,000)."""

    max_head_bytes: int = DEFAULT_MAX_HEAD_BYTES
    max_headers: int = DEFAULT_MAX_HEADERS
    head_timeout: float = DEFAULT_HEAD_TIMEOUT
    keep_alive_timeout: float = DEFAULT_KEEP_ALIVE_TIMEOUT
    max_connections: int | None = None

    def connection_cap(self) -> int:
        """``max_connections``, or the one the open-file limit allows."""
        if self.max_connections is not None:
            return self.max_connections
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft == resource.RLIM_INFINITY:
            return _MAX_CONNECTIONS_CAP
        return max(16, min(_MAX_CONNECTIONS_CAP, int(soft * (1 - _RESERVED_FDS))))


class ServerConfig(_Config):
    """The HTTP side: where to listen, who may call, and request limits."""

    host: str = DEFAULT_HOST
    port: int = Field(default=DEFAULT_PORT, ge=0, le=65535)
    # Bearer keys clients must present on /v1; none configured means no gateway auth.
    api_keys: list[SecretStr] = Field(default_factory=list)
    # The key for /v1/providers admin routes; without one they are not served.
    admin_key: SecretStr | None = None
    max_body_bytes: int = Field(default=DEFAULT_MAX_BODY_BYTES, ge=1024)
    # Connection limits when served by leapasgi serve / leapmcp --http: the request head's
    # size and header count (431 past them), seconds to send it (408), idle keep-alive
    # seconds, and connections at once (default: 3/4 of the open-file limit).
    max_head_bytes: int = Field(default=DEFAULT_MAX_HEAD_BYTES, ge=1024)
    max_headers: int = Field(default=DEFAULT_MAX_HEADERS, ge=8)
    head_timeout: float = Field(default=DEFAULT_HEAD_TIMEOUT, gt=0)
    keep_alive_timeout: float = Field(default=DEFAULT_KEEP_ALIVE_TIMEOUT, gt=0)
    max_connections: int | None = Field(default=None, ge=2)
    # Seconds between SSE keep-alive comments; also how long a stream may wait for its first
    # chunk before the response starts (after that an upstream error arrives in-band).
    keepalive_interval: float = Field(default=DEFAULT_KEEPALIVE_INTERVAL, gt=0)
    # Serve the MCP server (leapmcp) at /mcp in the gateway's app, behind the same keys.
    mcp: bool = False
    # Offer MCP clients set_provider_status; over HTTP a call must present admin_key.
    mcp_admin_tools: bool = False
    # Serve the live dashboard at /dashboard/ (its data and actions need admin_key).
    dashboard: bool = False
    # The server's log lines: "text", or "json" (one object per line, the access line's
    # fields included; mounted, the access records carry them as ``record.fields``).
    log_format: Literal["text", "json"] = "text"
    # Host names every route answers to besides loopback ones ("gw.example.com" any port,
    # "gw.example.com:8443", "*" any): checked when reached on loopback or when set.
    allowed_hosts: list[str] = Field(default_factory=list)
    # Browser origins allowed to call, with CORS ("https://app.example.com", "...:*", "*");
    # a page's own site and loopback pages need no entry. Default: no cross-origin access.
    allowed_origins: list[str] = Field(default_factory=list)
    # More Host and Origin headers accepted, for /mcp (which always checks both, as the MCP
    # spec asks) and every other route alike.
    mcp_allowed_hosts: list[str] = Field(default_factory=list)
    mcp_allowed_origins: list[str] = Field(default_factory=list)

    @field_validator("api_keys", mode="before")
    @classmethod
    def _drop_empty_keys(cls, value: Any) -> Any:
        if isinstance(value, list):
            return [key for key in value if key not in ("", None)]
        return value

    @field_validator("admin_key", mode="before")
    @classmethod
    def _empty_admin_key_is_none(cls, value: Any) -> Any:
        return None if value == "" else value

    def connection_limits(self) -> ConnectionLimits:
        """The limits the server applies to each client connection."""
        return ConnectionLimits(
            max_head_bytes=self.max_head_bytes,
            max_headers=self.max_headers,
            head_timeout=self.head_timeout,
            keep_alive_timeout=self.keep_alive_timeout,
            max_connections=self.max_connections,
        )

    @model_validator(mode="after")
    def _mcp_admin_needs_key(self) -> Self:
        if self.mcp and self.mcp_admin_tools and self.admin_key is None:
            raise ValueError("mcp_admin_tools: set admin_key too; /mcp callers must present it")
        if self.dashboard and self.admin_key is None:
            raise ValueError("dashboard: set admin_key too; the dashboard's viewers present it")
        return self


class ResponsesConfig(_Config):
    """The Responses API's conversation store (``previous_response_id``): how long a stored
    response is kept, and how many, and how many bytes in all, before the oldest go."""

    store_ttl: float = Field(default=DEFAULT_STORE_TTL, gt=0)
    store_max_entries: int = Field(default=DEFAULT_STORE_ENTRIES, ge=1)
    store_max_bytes: int = Field(default=DEFAULT_STORE_BYTES, ge=1024)


class StateConfig(_Config):
    """Where state beyond one request lives: this process (``memory``, the default) or a
    Redis/Valkey server shared by every replica (``redis``: breakers and holds, rate limits,
    the response cache, sticky sessions, Responses conversations, the health prober's lock).

    The URL may carry credentials: give it as ``url`` (``${REDIS_URL}``), ``url_env`` (a
    variable's name) or ``url_file``; it is never logged or shown."""

    backend: Literal["memory", "redis"] = "memory"
    url: SecretStr | None = None
    url_env: str | None = Field(default=None, pattern=_ENV_NAME_PATTERN)
    url_file: Path | None = None
    # Keys are named "<prefix>:..." so several gateways can share one server.
    prefix: str = Field(default="leap", pattern=r"^[A-Za-z0-9_.:-]{1,64}$")
    # Seconds one state operation may take before the gateway runs on local state.
    op_timeout: float = Field(default=DEFAULT_OP_TIMEOUT, gt=0, le=10)
    # Replicas sharing the limits: while degraded each enforces limit / replicas.
    replicas: int = Field(default=1, ge=1)
    # Seconds between breaker syncs, and between reconnection attempts while degraded.
    sync_interval: float = Field(default=DEFAULT_SYNC_INTERVAL, gt=0, le=5)
    recover_interval: float = Field(default=DEFAULT_RECOVER_INTERVAL, gt=0, le=5)

    @field_validator("url", mode="before")
    @classmethod
    def _empty_url_is_none(cls, value: Any) -> Any:
        return None if value == "" else value

    @model_validator(mode="after")
    def _url_for_redis(self) -> Self:
        given = [n for n in ("url", "url_env", "url_file") if getattr(self, n) is not None]
        if len(given) > 1:
            raise ValueError(f"{', '.join(given)}: give the URL one way")
        if self.backend == "redis" and not given:
            raise ValueError("backend = 'redis' needs url, url_env or url_file")
        return self

    def resolve_url(self, env: Mapping[str, str] | None = None) -> SecretStr:
        """The backend's URL (with its credentials), from wherever it was given."""
        if self.url is not None:
            return self.url
        if self.url_file is not None:
            try:
                text = self.url_file.read_text(encoding="utf-8").strip()
            except (OSError, UnicodeDecodeError) as exc:
                reason = getattr(exc, "strerror", None) or type(exc).__name__
                raise ConfigurationError(
                    f"state: cannot read url_file {self.url_file}: {reason}"
                ) from None
            if text:
                return SecretStr(text)
            raise ConfigurationError(f"state: url_file {self.url_file} is empty")
        variable = self.url_env or ""
        value = (os.environ if env is None else env).get(variable)
        if not value:
            raise ConfigurationError(f"state: set {variable} to the backend's URL")
        return SecretStr(value)


class CacheConfig(_Config):
    """The exact response cache: which requests it serves by default (``models``: model and
    alias names, ``"*"`` for all; ``routes``: paths), how long and how big entries are, and
    whose they are (``tenant``: each client key its own; ``global``: everyone's)."""

    enabled: bool = False
    models: list[str] = Field(default_factory=list)
    routes: list[str] = Field(default_factory=list)
    ttl: float = Field(default=DEFAULT_CACHE_TTL, gt=0)
    max_entry_bytes: int = Field(default=DEFAULT_CACHE_ENTRY_BYTES, ge=1024)
    max_bytes: int = Field(default=DEFAULT_CACHE_MAX_BYTES, ge=1024)
    max_entries: int = Field(default=DEFAULT_CACHE_MAX_ENTRIES, ge=1)
    scope: Literal["tenant", "global"] = "tenant"
    # Identical misses at once make one upstream call; the others wait for its answer.
    coalesce: bool = True

    @field_validator("routes")
    @classmethod
    def _known_routes(cls, value: list[str]) -> list[str]:
        unknown = [route for route in value if route not in CACHEABLE_ROUTES]
        if unknown:
            raise ValueError(
                f"not cacheable: {', '.join(unknown)}; cacheable: {', '.join(CACHEABLE_ROUTES)}"
            )
        return value


class BudgetConfig(_Config):
    """A budget: at most ``usd`` per ``period`` (a UTC day, a UTC month, or all time); past
    ``alert_at`` (a fraction, such as 0.8) an alert is logged and counted once per period."""

    usd: float = Field(gt=0, le=1e12)
    period: Literal["day", "month", "total"] = "month"
    alert_at: float | None = Field(default=None, gt=0, lt=1)

    def build(self) -> Budget:
        return Budget(self.usd, Period(self.period), self.alert_at)


class PolicyConfig(_Config):
    """What a tenant may use: the models and aliases it may ask for (unset: all), requests and
    tokens per minute, requests at once, and a budget."""

    models: list[str] | None = None
    rpm: int | None = Field(default=None, ge=1, le=1_000_000_000)
    tpm: int | None = Field(default=None, ge=1, le=1_000_000_000_000)
    max_in_flight: int | None = Field(default=None, ge=1, le=1_000_000)
    budget: BudgetConfig | None = None
    # May its requests be hedged (false: never sent twice)?
    hedge: bool = True
    # Its requests' priority in a provider's queue (higher first, PRIORITY_MIN..PRIORITY_MAX),
    # and the highest a request may ask for with x-leap-priority (unset: its priority).
    priority: int = Field(default=0, ge=PRIORITY_MIN, le=PRIORITY_MAX)
    max_priority: int | None = Field(default=None, ge=PRIORITY_MIN, le=PRIORITY_MAX)

    def build(self) -> TenantPolicy:
        return TenantPolicy(
            models=frozenset(self.models) if self.models is not None else None,
            rpm=self.rpm,
            tpm=self.tpm,
            max_in_flight=self.max_in_flight,
            budget=self.budget.build() if self.budget is not None else None,
            hedge=self.hedge,
            priority=self.priority,
            max_priority=self.max_priority,
        )


class PriceConfig(_Config):
    """A model's price in USD per million tokens: prompt (``input``), completion (``output``)
    and prompt tokens read from the provider's cache (``cached_input``; default: ``input``)."""

    input: float = Field(ge=0)
    output: float = Field(ge=0)
    cached_input: float | None = Field(default=None, ge=0)


# JWS algorithms an access token may be signed with: asymmetric only. "none" and the HMAC
# family are refused outright, so a public key can never be used as a shared secret.
OAUTH_ALGORITHMS = (
    "RS256",
    "RS384",
    "RS512",
    "PS256",
    "PS384",
    "PS512",
    "ES256",
    "ES384",
    "ES512",
    "EdDSA",
)


class OAuthConfig(_Config):
    """OAuth2 / OpenID Connect access tokens (JWTs) accepted on the HTTP API and /mcp.

    Tokens are checked against ``issuer`` (its discovery document gives the JWKS URL unless
    ``jwks_url`` is set): signature by a key of the issuer's JWKS, one of ``algorithms``,
    ``iss``, ``aud`` (one of ``audience``), ``exp`` and ``nbf`` with ``leeway`` seconds.
    The tenant is the ``tenant_claim``; its policy is ``policies[<policy_claim's value>]``,
    else ``policies["default"]``, else no limits. ``resource`` is this gateway's URL as the
    protected resource MCP hosts discover (default: from the request).
    """

    issuer: str
    audience: list[str] = Field(min_length=1)
    jwks_url: str | None = None
    algorithms: list[str] = Field(default_factory=lambda: ["RS256", "ES256", "PS256", "EdDSA"])
    tenant_claim: str = "sub"
    policy_claim: str | None = None
    policies: dict[str, PolicyConfig] = Field(default_factory=dict)
    required_scopes: list[str] = Field(default_factory=list)
    resource: str | None = None
    leeway: float = Field(default=30.0, ge=0, le=300)
    # Seconds the issuer's keys are kept; an unknown key id fetches them again, at most once
    # per refresh_interval.
    jwks_ttl: float = Field(default=600.0, gt=0)
    refresh_interval: float = Field(default=30.0, ge=0)
    http_timeout: float = Field(default=5.0, gt=0, le=60)

    @field_validator("audience", mode="before")
    @classmethod
    def _one_audience(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("algorithms")
    @classmethod
    def _asymmetric_only(cls, value: list[str]) -> list[str]:
        refused = [alg for alg in value if alg not in OAUTH_ALGORITHMS]
        if refused:
            raise ValueError(
                f"not accepted: {', '.join(refused)} (only asymmetric signatures: "
                f"{', '.join(OAUTH_ALGORITHMS)})"
            )
        if not value:
            raise ValueError("name at least one algorithm")
        return value

    @field_validator("issuer", "jwks_url", "resource")
    @classmethod
    def _https(cls, value: str | None) -> str | None:
        if value is None:
            return value
        scheme, _, rest = value.partition("://")
        host = rest.split("/", 1)[0].rsplit(":", 1)[0].strip("[]")
        loopback = host in ("127.0.0.1", "localhost", "::1")
        if scheme != "https" and not (scheme == "http" and loopback):
            raise ValueError("an https:// URL (http:// only on loopback)")
        return value


class TenantsConfig(_Config):
    """Virtual keys, usage and budgets. ``database`` is the SQLite file keys, usage and spend
    are kept in with the memory state backend (unset: in memory, lost at exit); with the Redis
    backend they are kept in Redis. ``policy`` applies to callers with a static API key (or no
    key at all); ``completion_estimate`` is the completion tokens a budget reserves for a
    request that gives no ``max_tokens``."""

    database: Path | None = None
    # Refuse callers without a key or token even when no static API key is configured (so
    # virtual keys are the only way in).
    require_key: bool = False
    policy: PolicyConfig = Field(default_factory=PolicyConfig)
    # Seconds a looked-up key is trusted before it is read again: a revoked key is refused
    # everywhere within this.
    key_cache_ttl: float = Field(default=0.5, gt=0, le=5)
    completion_estimate: int = Field(default=1024, ge=1)
    # Seconds between writes of usage to the store, and days of usage kept.
    flush_interval: float = Field(default=1.0, gt=0, le=60)
    retention_days: int = Field(default=400, ge=1)


class BatchesConfig(_Config):
    """[batches]: OpenAI's Files and Batch APIs (``/v1/files``, ``/v1/batches``), each batch run
    by the gateway itself through its routing, limits and budgets at the lowest priority in
    every provider's line. Off by default: then no route exists and nothing is spent.

    ``directory`` keeps the files and the batches' progress (a SQLite file beside them), so a
    restarted gateway resumes; unset, they live in a temporary directory until the gateway
    closes. With ``[state] backend = "redis"`` the records are kept in Redis and
    ``directory`` (then required) holds the files' bytes: a mount every replica shares."""

    enabled: bool = False
    directory: Path | None = None
    # Batch lines in flight at once, over every batch (each still waits its turn in a
    # provider's line, behind interactive requests).
    concurrency: int = Field(default=8, ge=1, le=10_000)
    # Caps on an uploaded file: bytes, lines, and bytes of one line.
    max_file_bytes: int = Field(default=200 * 1024 * 1024, ge=1024)
    max_lines: int = Field(default=50_000, ge=1)
    max_line_bytes: int = Field(default=1024 * 1024, ge=256)
    # Batches of one tenant not yet finished, at most (more: 429).
    max_active_per_tenant: int = Field(default=100, ge=1)
    # Seconds a file lives unless its upload says otherwise (OpenAI's batch files: 30 days).
    file_ttl: float = Field(default=30 * 86_400.0, ge=3600)
    # Seconds between looks at completion windows and file expiry.
    poll_interval: float = Field(default=1.0, gt=0, le=60)
    # The longest wait before a line the providers could not take now is tried again.
    retry_max_delay: float = Field(default=30.0, gt=0, le=600)
    # Batches one gateway process runs at once; more wait for a runner with room (any
    # replica's).
    max_running: int = Field(default=64, ge=1, le=10_000)
    # Hand a batch over to its provider's own batch API (OpenAI's), at that provider's batch
    # price, when every line names one model whose first route is such a provider. Off by
    # default: a batch handed over gets no failover, no per-line limits, and may take the
    # provider's whole 24 h window.
    native: bool = False


class HookConfig(_Config):
    """[[hooks]]: a request hook by import path (``"package.module:factory"``), made at load
    by calling the factory with ``options``."""

    path: str = Field(min_length=3)
    options: dict[str, Any] = Field(default_factory=dict)
    _hook: object = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _load(self) -> Self:
        try:
            self._hook = load_hook(self.path, self.options)
        except ConfigurationError as exc:
            raise ValueError(exc.message) from None
        return self

    @property
    def hook(self) -> object:
        """The hook the factory made."""
        return self._hook


class TelemetryConfig(_Config):
    """OpenTelemetry: ``traces`` turns spans on (with the global tracer provider, unless the
    gateway is given one); ``metrics`` the GenAI metrics (likewise with the global meter
    provider); ``capture_content`` puts prompts and completions in attempt spans
    (``gen_ai.input.messages``, ``gen_ai.output.messages``), off by default."""

    traces: bool = False
    metrics: bool = False
    capture_content: bool = False


class GatewayConfig(_Config):
    """Providers, routing, health and server settings of one gateway."""

    providers: list[ProviderConfig] = Field(default_factory=list)
    routing: RoutingConfig = Field(default_factory=RoutingConfig)
    health: HealthConfig = Field(default_factory=HealthConfig)
    server: ServerConfig = Field(default_factory=ServerConfig)
    responses: ResponsesConfig = Field(default_factory=ResponsesConfig)
    state: StateConfig = Field(default_factory=StateConfig)
    cache: CacheConfig = Field(default_factory=CacheConfig)
    tenants: TenantsConfig = Field(default_factory=TenantsConfig)
    batches: BatchesConfig = Field(default_factory=BatchesConfig)
    oauth: OAuthConfig | None = None
    telemetry: TelemetryConfig = Field(default_factory=TelemetryConfig)
    # Prices (USD per million tokens) by model, over the shipped table.
    prices: dict[str, PriceConfig] = Field(default_factory=dict)
    # Request hooks, in order ("package.module:factory" alone, or a table with options).
    hooks: list[HookConfig] = Field(default_factory=list)
    # Optional providers dropped while loading a file (an unset variable), with the reason.
    _skipped: dict[str, str] = PrivateAttr(default_factory=dict)

    @field_validator("hooks", mode="before")
    @classmethod
    def _path_shorthand(cls, value: Any) -> Any:
        if isinstance(value, list):
            return [{"path": item} if isinstance(item, str) else item for item in value]
        return value

    @model_validator(mode="after")
    def _consistent(self, info: ValidationInfo) -> Self:
        self._skipped = dict((info.context or {}).get(SKIPPED_CONTEXT, {}))
        if self.batches.enabled and self.state.backend == "redis" and not self.batches.directory:
            raise ValueError(
                "batches.directory: with [state] backend = 'redis' the batches' records are "
                "shared through Redis and their files' bytes through this directory; set it "
                "to a mount every replica shares"
            )
        names = set(self._skipped)
        for provider in self.providers:
            if provider.name in names:
                raise ValueError(f"providers: duplicate provider name {provider.name!r}")
            names.add(provider.name)
        for alias, config in self.routing.aliases.items():
            for i, target in enumerate(config.targets):
                provider_name = _provider_of(target)
                if provider_name is not None and provider_name not in names:
                    known = ", ".join(sorted(names)) or "none"
                    raise ValueError(
                        f"routing.aliases.{alias}.targets[{i}]: unknown provider "
                        f"{provider_name!r} (configured: {known}); a target with a slash "
                        "starts with a provider name"
                    )
        return self

    def enabled_providers(self, env: Mapping[str, str] | None = None) -> list[ProviderConfig]:
        """The providers to register: optional ones whose key does not resolve are left out."""
        enabled = []
        for provider in self.providers:
            try:
                provider.resolve_key(env)
            except ConfigurationError:
                if not provider.optional:
                    raise
                continue
            enabled.append(provider)
        return enabled

    def skipped_providers(self, env: Mapping[str, str] | None = None) -> dict[str, str]:
        """The optional providers left out, by name, each with the reason (never a value)."""
        reasons = dict(self._skipped)
        for provider in self.providers:
            if provider.optional:
                try:
                    provider.resolve_key(env)
                except ConfigurationError as exc:
                    reasons[provider.name] = exc.message
        return reasons


def parse_config(
    text: str, *, source: str = "<string>", env: Mapping[str, str] | None = None
) -> GatewayConfig:
    """The gateway configuration in TOML ``text``; ``source`` names it in error messages."""
    return _parse(text, source=source, env=env, base_dir=None)


def load_config(path: str | Path, *, env: Mapping[str, str] | None = None) -> GatewayConfig:
    """The gateway configuration in the TOML file at ``path``; variables come from ``env``."""
    path = Path(path)
    return _parse(read_text(path), source=str(path), env=env, base_dir=path.parent)


def _parse(
    text: str, *, source: str, env: Mapping[str, str] | None, base_dir: Path | None
) -> GatewayConfig:
    environ = os.environ if env is None else env
    prepared = prepare(text, source=source, env=environ, base_dir=base_dir)
    try:
        return GatewayConfig.model_validate(
            prepared.data, context={SKIPPED_CONTEXT: prepared.skipped}
        )
    except ValidationError as exc:
        detail = format_errors(exc, source=source, provider_index=prepared.provider_index)
        raise ConfigurationError(detail) from None
