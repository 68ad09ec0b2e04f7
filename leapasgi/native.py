"""What passes between the dispatcher and a provider that speaks a client's protocol natively:
the call (the client's own body, with the route's model name), a whole answer, and the events
of a stream, a read at a time."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .types import ChatCompletionRequest

__all__ = [
    "EventBatch",
    "NativeCall",
    "NativeEvent",
    "NativeReply",
    "ProtocolRequest",
    "WireProtocol",
]


class WireProtocol(StrEnum):
    """An API a provider speaks natively."""

    CHAT_COMPLETIONS = "chat_completions"
    RESPONSES = "responses"
    MESSAGES = "messages"
    EMBEDDINGS = "embeddings"


@dataclass(frozen=True, slots=True)
class NativeCall:
    """One request in a protocol the upstream speaks: the client's body as parsed (the model
    replaced by the route's), and the client headers the protocol forwards (an allow-list)."""

    protocol: WireProtocol
    body: Mapping[str, Any]
    headers: Mapping[str, str] = field(default_factory=dict)
    stream: bool = False
    # A sub-resource of the protocol's endpoint ("count_tokens" for /messages/count_tokens).
    endpoint: str | None = None

    def for_model(self, model: str) -> NativeCall:
        """The same call naming ``model``."""
        if self.body.get("model") == model:
            return self
        return NativeCall(
            self.protocol, {**self.body, "model": model}, self.headers, self.stream, self.endpoint
        )

    def encode(self) -> bytes:
        """The body as JSON."""
        return json.dumps(self.body, separators=(",", ":"), ensure_ascii=False).encode()


@dataclass(frozen=True, slots=True)
class NativeReply:
    """A whole answer: the upstream's JSON as received and parsed, its request id, and the
    token usage it reported (prompt, completion, cached prompt)."""

    data: dict[str, Any]
    raw: bytes
    request_id: str | None = None
    usage: tuple[int, int, int] | None = None


@dataclass(frozen=True, slots=True)
class NativeEvent:
    """One server-sent event of a native stream: its name (the SSE event name, else its JSON's
    ``type``), its JSON when it was read (errors, usage and the end are; content passes through
    unparsed), and its bytes as sent."""

    name: str | None
    data: dict[str, Any] | None
    raw: bytes

    def sse(self) -> bytes:
        """The event as an SSE frame."""
        if self.name is None:
            return b"data: " + self.raw + b"\n\n"
        return b"event: " + self.name.encode() + b"\ndata: " + self.raw + b"\n\n"


class EventBatch:
    """The events of one upstream read (a provider holds a protocol's preamble back, so the
    first batch it yields carries content); ``usage`` is the (prompt, completion, cached
    prompt) tokens the events reported, if any."""

    __slots__ = ("chunks", "request_id", "usage")

    def __init__(
        self,
        events: list[NativeEvent],
        *,
        request_id: str | None = None,
        usage: tuple[int, int, int] | None = None,
    ) -> None:
        # Named like ChunkBatch's, so the dispatcher reads both kinds of batch alike.
        self.chunks = events
        self.request_id = request_id
        self.usage = usage

    @property
    def events(self) -> list[NativeEvent]:
        """The events, in order."""
        return self.chunks

    def __iter__(self) -> Iterator[NativeEvent]:
        return iter(self.chunks)

    def __len__(self) -> int:
        return len(self.chunks)

    def sse(self) -> bytes:
        """Every event as SSE, ready to send in one write."""
        return b"".join([event.sse() for event in self.chunks])

    def __repr__(self) -> str:
        return f"EventBatch({len(self.chunks)} events)"


class ProtocolRequest:
    """A request in a protocol other than chat completions, as the dispatcher routes it: the
    native call for providers that speak the protocol, and ``translate``, which makes its chat
    form for those that do not (None when nothing translates it, as for embeddings). The chat
    form is made on first use only: a request that passes through never pays for it."""

    __slots__ = ("_chat", "_translate", "native", "notes")

    def __init__(
        self,
        native: NativeCall,
        translate: Callable[[list[str]], ChatCompletionRequest] | None = None,
    ) -> None:
        self.native = native
        self._translate = translate
        self._chat: ChatCompletionRequest | None = None
        # What the chat form dropped ("dropped cache_control", ...), once it was made.
        self.notes: tuple[str, ...] = ()

    @property
    def model(self) -> str:
        """The model the client asked for."""
        model = self.native.body.get("model")
        return model if isinstance(model, str) else ""

    @property
    def translatable(self) -> bool:
        """Whether providers that do not speak the protocol can serve it through chat."""
        return self._translate is not None

    def rewritten(
        self,
        native: NativeCall,
        chat: Callable[[ChatCompletionRequest], ChatCompletionRequest],
    ) -> ProtocolRequest:
        """The same request with ``native`` as its call, and ``chat`` applied to its chat
        form (a hook's rewrite, kept exact in both forms)."""
        translate = self._translate
        if translate is None:
            return ProtocolRequest(native)

        def rewrite(notes: list[str]) -> ChatCompletionRequest:
            return chat(translate(notes))

        return ProtocolRequest(native, rewrite)

    def chat(self) -> ChatCompletionRequest:
        """The chat form (made once); raises the translation's InvalidRequestError."""
        chat = self._chat
        if chat is None:
            if self._translate is None:
                raise TypeError(f"a {self.native.protocol} request has no chat form")
            notes: list[str] = []
            chat = self._chat = self._translate(notes)
            self.notes = tuple(notes)
        return chat
