"""The last check before a tool's output leaves: every key the gateway knows is scrubbed.

Provider errors are already redacted where they are raised; this catches what a provider layer
might have missed (an upstream that echoes its key inside a stream's error event, say).
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Iterator
from typing import Any, TypeVar

from pydantic import BaseModel

from leapasgi import Gateway, OpenAICompatibleProvider
from leapasgi._redact import Redactor

__all__ = ["Scrubber"]

_M = TypeVar("_M", bound=BaseModel)


class Scrubber:
    """Replaces the gateway's keys and every provider's credentials in text and results."""

    def __init__(self, gateway: Gateway) -> None:
        self._gateway = gateway
        self._version = -1
        self._redact = Redactor(())

    def text(self, text: str) -> str:
        """``text`` with every known secret replaced by ``[redacted]``."""
        return self._redactor()(text)

    def model(self, value: _M) -> _M:
        """A copy of ``value`` whose strings, at any depth, are scrubbed."""
        redact = self._redactor()
        return type(value).model_validate(_walk(value.model_dump(), redact))

    def _redactor(self) -> Redactor:
        registry = self._gateway.manager.registry
        if registry.version != self._version:
            # Providers can be registered at any time; the registry's version says when.
            self._redact = Redactor(_secrets(self._gateway))
            self._version = registry.version
        return self._redact


def _walk(value: Any, redact: Redactor) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {redact(str(k)): _walk(v, redact) for k, v in value.items()}
    if isinstance(value, list):
        return [_walk(v, redact) for v in value]
    return value


def _secrets(gateway: Gateway) -> Iterator[str]:
    server = gateway.config.server
    for key in (*server.api_keys, server.admin_key):
        if key is not None:
            yield key.get_secret_value()
    for entry in gateway.manager.registry:
        provider = entry.provider
        if not isinstance(provider, OpenAICompatibleProvider):
            continue
        settings = provider.settings
        if settings.api_key is not None:
            yield settings.api_key.get_secret_value()
        yield from settings.headers.values()
        url = urllib.parse.urlsplit(settings.base_url)
        yield from (value for _, value in urllib.parse.parse_qsl(url.query))
        if url.password:
            yield url.password
