"""The provider contract: everything the core needs from an upstream client, and its timeouts.

A provider makes exactly one upstream attempt per call. Retrying the same provider and failing
over to another belong to the dispatcher, which passes each call the request's deadline; for
standalone use, ``Retrying`` (``leapasgi.providers.retrying``) adds retries explicitly.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Iterable
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from ..deadline import Deadline
from ..features import ALL_FEATURES, Feature
from ..native import EventBatch, NativeCall, NativeReply, WireProtocol
from ..params import ParamPolicy
from ..streaming import ChunkBatch
from ..types import ChatCompletion, ChatCompletionRequest, Model

__all__ = [
    "DEFAULT_CONNECT_TIMEOUT",
    "DEFAULT_TOTAL_TIMEOUT",
    "Capabilities",
    "NativeProvider",
    "Provider",
    "Timeouts",
    "WireProtocol",
]

DEFAULT_CONNECT_TIMEOUT = 5.0
DEFAULT_TOTAL_TIMEOUT = 600.0


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Four separate clocks, in seconds.

    ``connect``: TCP and TLS set-up. ``first_byte``: from sending a request to its response
    headers. ``idle``: the longest silence between two reads of a response body. ``total``: the
    whole call; it also stops an upstream that drips one byte at a time, which no per-read
    timeout catches. A call also stops at the request's deadline when that comes first.
    """

    connect: float = DEFAULT_CONNECT_TIMEOUT
    first_byte: float = 30.0
    idle: float = 30.0
    total: float = DEFAULT_TOTAL_TIMEOUT

    @classmethod
    def uniform(cls, seconds: float, *, total: float = DEFAULT_TOTAL_TIMEOUT) -> Timeouts:
        """First-byte and idle timeouts of ``seconds``, default connect, and ``total``."""
        return cls(first_byte=seconds, idle=seconds, total=max(total, seconds))


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What a provider declares about itself; the core reads nothing else about it.

    ``features``: what requests it can serve (streaming, tools, ...; custom strings allowed).
    ``protocols``: the APIs it speaks natively; a provider naming any but chat completions is
    a ``NativeProvider`` too. ``honors_deadline``: its calls stop at the
    deadline they are given by themselves, so the dispatcher sets no timer of its own.
    ``params``: the parameter rules of its models (``leapasgi.params``): routing skips it for
    requests it cannot serve as asked, and the dispatcher adapts what it sends; None: none.
    """

    features: frozenset[str] = ALL_FEATURES
    protocols: frozenset[WireProtocol] = field(
        default_factory=lambda: frozenset({WireProtocol.CHAT_COMPLETIONS})
    )
    honors_deadline: bool = False
    params: ParamPolicy | None = None

    def supports(self, feature: Feature | str) -> bool:
        """True when requests that need ``feature`` can be sent here."""
        return str(feature) in self.features


@runtime_checkable
class Provider(Protocol):
    """An upstream that serves chat completions in the OpenAI wire format.

    Each call is one upstream attempt; failures raise the LeapError they stand for.
    """

    name: str

    @property
    def capabilities(self) -> Capabilities:
        """What it can serve and how it behaves."""
        ...

    async def chat(
        self, request: ChatCompletionRequest, *, deadline: Deadline | None = None
    ) -> ChatCompletion:
        """One non-streaming completion, done by ``deadline``."""
        ...

    def stream(
        self, request: ChatCompletionRequest, *, deadline: Deadline | None = None
    ) -> AsyncGenerator[ChunkBatch, None]:
        """A streamed completion, as the normalized chunks of each upstream read; closing the
        generator cancels the upstream request."""
        ...

    async def list_models(self) -> list[Model]:
        """The models the upstream serves."""
        ...

    async def check_health(self) -> None:
        """Raise if the upstream is unreachable or refuses us; never a billed call."""
        ...

    def secrets(self) -> Iterable[str]:
        """Every secret it holds (keys, credentials in its URL or headers), so that output
        leaving the gateway can be scrubbed of them."""
        ...

    async def aclose(self) -> None:
        """Release connections."""
        ...


@runtime_checkable
class NativeProvider(Protocol):
    """A provider that also speaks other protocols natively (Responses, Anthropic Messages,
    embeddings), as its ``capabilities.protocols`` say: the client's request passes through.

    The same rules hold as for chat: one upstream attempt per call, LeapErrors, the deadline.
    """

    async def send(self, call: NativeCall, *, deadline: Deadline | None = None) -> NativeReply:
        """One whole answer to ``call``."""
        ...

    def open(
        self, call: NativeCall, *, deadline: Deadline | None = None
    ) -> AsyncGenerator[EventBatch, None]:
        """A streamed answer as the events of each upstream read. The protocol's preamble
        (``response.created``, ``message_start``, pings) is held back until the first content
        event and yielded with it, so an error before content raises (and fails over); an error
        event after it raises too. Closing the generator cancels the upstream request."""
        ...
