"""Typed settings of one OpenAI-compatible provider; keys are SecretStr."""

from __future__ import annotations

import os
import urllib.parse
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Literal, Self, TypeVar

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from ..exceptions import ConfigurationError
from ..features import Feature
from ..native import WireProtocol
from ..params import ParamRules
from ..redact import public_url
from .base import Timeouts
from .presets import CHAT_ONLY, get_preset
from .urls import check_base_url

__all__ = [
    "DEFAULT_MAX_CONNECTIONS",
    "DEFAULT_MAX_RESPONSE_BYTES",
    "ProviderSettings",
    "check_headers",
]

DEFAULT_MAX_CONNECTIONS = 100
# The most an upstream answer may be, decompressed: a whole JSON body, or a whole stream.
DEFAULT_MAX_RESPONSE_BYTES = 64 * 1024 * 1024
_FORBIDDEN_HEADERS = frozenset({"authorization", "host", "content-length", "cookie"})
_H = TypeVar("_H", bound=Mapping[str, str])


def check_headers(value: _H) -> _H:
    """Extra upstream headers: never ones leapasgi sets itself, never a line break."""
    for key, item in value.items():
        if key.lower() in _FORBIDDEN_HEADERS:
            raise ValueError(f"header {key!r} is set by leapasgi and cannot be overridden")
        if any(c in key + item for c in "\r\n\0"):
            raise ValueError(f"header {key!r} contains a line break")
    return value


class ProviderSettings(BaseModel):
    """Everything needed to talk to one upstream. Build by hand or with ``from_preset``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    base_url: str
    api_key: SecretStr | None = None
    preset: str | None = None
    timeouts: Timeouts = Field(default_factory=Timeouts)
    features: frozenset[str] = frozenset(Feature)
    models: tuple[str, ...] = ()
    headers: Mapping[str, str] = Field(default_factory=dict)
    max_connections: int = Field(default=DEFAULT_MAX_CONNECTIONS, ge=1)
    max_response_bytes: int = Field(default=DEFAULT_MAX_RESPONSE_BYTES, ge=1024)
    # Parameter rules, in order (a preset's first, then the provider's own; later ones win).
    params: tuple[ParamRules, ...] = ()
    # Ask for usage on every stream (stream_options.include_usage), for accounting; off for
    # an upstream that refuses stream_options.
    stream_usage: bool = True
    # The APIs the upstream serves natively (chat completions always).
    protocols: frozenset[WireProtocol] = CHAT_ONLY
    # How native Messages calls carry the key: "authorization" sends it both as a bearer
    # token and as ``x-api-key``; "x-api-key" only the latter (Anthropic's own API).
    key_header: Literal["authorization", "x-api-key"] = "authorization"

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        # A key can sit in the URL query (``?key=...``), user info or a header; reprs show none.
        for name, value in super().__repr_args__():
            if name == "base_url" and isinstance(value, str):
                value = public_url(value)
            elif name == "headers" and value:
                value = dict.fromkeys(value, "**********")
            yield name, value

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        return check_base_url(value).rstrip("/")

    @field_validator("headers")
    @classmethod
    def _safe_headers(cls, value: Mapping[str, str]) -> Mapping[str, str]:
        return check_headers(value)

    @model_validator(mode="after")
    def _one_credential(self) -> Self:
        # aiohttp sends URL user info as Basic auth and refuses it beside an Authorization.
        if self.api_key is not None and "@" in urllib.parse.urlsplit(self.base_url).netloc:
            raise ValueError("give either api_key or user info in base_url, not both")
        return self

    @classmethod
    def from_preset(
        cls,
        preset: str,
        *,
        name: str | None = None,
        api_key: str | SecretStr | None = None,
        base_url: str | None = None,
        models: Iterable[str] | None = None,
        timeouts: Timeouts | None = None,
        features: Iterable[str] | None = None,
        protocols: Iterable[str] | None = None,
        params: Iterable[ParamRules] | None = None,
        env: Mapping[str, str] | None = None,
    ) -> ProviderSettings:
        """Settings for a known service; a missing key is read from its environment variable;
        ``params`` are rules applied after the preset's own."""
        known = get_preset(preset)
        environ = os.environ if env is None else env
        if api_key is None and known.api_key_env:
            api_key = environ.get(known.api_key_env) or None
        if api_key is None and known.key_required:
            raise ConfigurationError(
                f"Provider {name or known.name!r} needs an API key: set {known.api_key_env} "
                "or pass api_key"
            )
        fields: dict[str, Any] = {
            "name": name or known.name,
            "base_url": base_url or known.base_url,
            "api_key": api_key,
            "preset": known.name,
            "timeouts": timeouts or Timeouts.uniform(known.timeout),
            "features": frozenset(features) if features is not None else known.features,
            "models": tuple(models or ()),
            "params": (*known.params, *(params or ())),
            "protocols": _protocols(protocols) if protocols is not None else known.protocols,
            "key_header": known.key_header,
        }
        return cls(**fields)


def _protocols(names: Iterable[str]) -> frozenset[WireProtocol]:
    """Protocols by name; chat completions is always among them."""
    return frozenset({WireProtocol.CHAT_COMPLETIONS, *(WireProtocol(n) for n in names)})
