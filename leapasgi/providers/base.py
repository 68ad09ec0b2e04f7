"""The provider contract every upstream client implements, and its timeouts."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from ..features import Feature
from ..types import ChatCompletion, ChatCompletionChunk, ChatCompletionRequest, Model

__all__ = [
    "DEFAULT_CONNECT_TIMEOUT",
    "DEFAULT_TOTAL_TIMEOUT",
    "Provider",
    "Timeouts",
]

DEFAULT_CONNECT_TIMEOUT = 5.0
DEFAULT_TOTAL_TIMEOUT = 600.0


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Four separate clocks, in seconds.

    ``connect``: TCP and TLS set-up. ``first_byte``: from sending a request to its response
    headers. ``idle``: the longest silence between two reads of a response body. ``total``: the
    whole call, every retry and its backoff included; it also stops an upstream that drips one
    byte at a time, which no per-read timeout catches.
    """

    connect: float = DEFAULT_CONNECT_TIMEOUT
    first_byte: float = 30.0
    idle: float = 30.0
    total: float = DEFAULT_TOTAL_TIMEOUT

    @classmethod
    def uniform(cls, seconds: float, *, total: float = DEFAULT_TOTAL_TIMEOUT) -> Timeouts:
        """First-byte and idle timeouts of ``seconds``, default connect, and ``total``."""
        return cls(first_byte=seconds, idle=seconds, total=max(total, seconds))


@runtime_checkable
class Provider(Protocol):
    """An upstream that serves chat completions in the OpenAI wire format."""

    name: str

    async def chat(self, request: ChatCompletionRequest) -> ChatCompletion:
        """One non-streaming completion."""
        ...

    def stream(self, request: ChatCompletionRequest) -> AsyncIterator[ChatCompletionChunk]:
        """A streamed completion, as normalized chunks."""
        ...

    async def list_models(self) -> list[Model]:
        """The models the upstream serves."""
        ...

    async def check_health(self) -> None:
        """Raise if the upstream is unreachable or refuses us; never a billed call."""
        ...

    def supports(self, feature: Feature | str) -> bool:
        """True when the provider can serve requests that need ``feature``."""
        ...

    async def aclose(self) -> None:
        """Release connections."""
        ...
