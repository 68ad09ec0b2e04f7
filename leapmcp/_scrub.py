"""The last check before a tool's output leaves: every key the gateway knows is scrubbed.

Provider errors are already redacted where they are raised; this catches what a provider layer
might have missed (an upstream that echoes its key inside a stream's error event, say).
"""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel

from leapasgi import GatewayCore, Redactor

__all__ = ["Scrubber"]

_M = TypeVar("_M", bound=BaseModel)


class Scrubber:
    """Replaces the gateway's keys and every provider's credentials in text and results."""

    def __init__(self, gateway: GatewayCore) -> None:
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
            self._redact = Redactor(self._gateway.secrets())
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
