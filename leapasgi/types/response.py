"""Chat completion responses, streaming chunks and usage, as providers send them.

Response models are lenient where providers differ (missing ``object``, ``created`` or ``id``
get defaults) and keep every field they do not model.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, PrivateAttr

from ._base import CoreWireModel, WireModel

__all__ = [
    "CHUNK_CHOICE_CORE",
    "CHUNK_CORE",
    "ChatCompletion",
    "ChatCompletionChunk",
    "ChatCompletionMessage",
    "Choice",
    "ChoiceDelta",
    "ChoiceDeltaFunctionCall",
    "ChoiceDeltaToolCall",
    "ChunkChoice",
    "CompletionTokensDetails",
    "FinishReason",
    "FunctionCall",
    "PromptTokensDetails",
    "ToolCall",
    "Usage",
]

# The fields of a chunk and of its choices that every wire dump carries. Chunks skip the
# CoreWireModel hook, which would cost a Python call per parsed chunk; they mark these when
# they are serialized instead.
CHUNK_CORE = frozenset({"id", "object", "created", "model", "choices"})
CHUNK_CHOICE_CORE = frozenset({"index", "delta", "finish_reason"})

FinishReason = Literal["stop", "length", "tool_calls", "content_filter", "function_call"]


class FunctionCall(WireModel):
    """A function name and its arguments as a JSON-encoded string."""

    name: str
    arguments: str = ""


class ToolCall(CoreWireModel):
    """A complete tool call in an assistant message."""

    always_sent: ClassVar[frozenset[str]] = frozenset({"id", "type", "function"})

    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatCompletionMessage(CoreWireModel):
    """The assistant message of one choice."""

    always_sent: ClassVar[frozenset[str]] = frozenset({"role", "content"})

    role: Literal["assistant"] = "assistant"
    content: str | None = None
    refusal: str | None = None
    tool_calls: list[ToolCall] | None = None
    annotations: list[dict[str, Any]] | None = None
    audio: dict[str, Any] | None = None
    function_call: FunctionCall | None = None


class Choice(CoreWireModel):
    """One choice of a non-streaming completion."""

    always_sent: ClassVar[frozenset[str]] = frozenset({"index", "message", "finish_reason"})

    index: int = 0
    message: ChatCompletionMessage
    finish_reason: str | None = None
    logprobs: dict[str, Any] | None = None


class PromptTokensDetails(WireModel):
    """Breakdown of prompt tokens."""

    cached_tokens: int | None = None
    audio_tokens: int | None = None


class CompletionTokensDetails(WireModel):
    """Breakdown of completion tokens."""

    reasoning_tokens: int | None = None
    audio_tokens: int | None = None
    accepted_prediction_tokens: int | None = None
    rejected_prediction_tokens: int | None = None


class Usage(WireModel):
    """Token counts of one completion."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    prompt_tokens_details: PromptTokensDetails | None = None
    completion_tokens_details: CompletionTokensDetails | None = None


class ChatCompletion(CoreWireModel):
    """A non-streaming chat completion."""

    always_sent: ClassVar[frozenset[str]] = frozenset(
        {"id", "object", "created", "model", "choices"}
    )

    id: str = ""
    object: str = "chat.completion"
    created: int = 0
    model: str = ""
    choices: list[Choice] = Field(default_factory=list)
    usage: Usage | None = None
    system_fingerprint: str | None = None
    service_tier: str | None = None
    # The upstream's x-request-id, for response headers; never serialized.
    _request_id: str | None = PrivateAttr(default=None)

    @property
    def request_id(self) -> str | None:
        """The upstream's ``x-request-id`` for this completion, when it sent one."""
        return self._request_id

    def with_request_id(self, request_id: str | None) -> ChatCompletion:
        """This completion, noting the upstream's ``x-request-id`` (never serialized)."""
        self._request_id = request_id
        return self


class ChoiceDeltaFunctionCall(WireModel):
    """A fragment of a tool call's function: the name comes once, arguments in pieces."""

    name: str | None = None
    arguments: str | None = None


class ChoiceDeltaToolCall(WireModel):
    """A fragment of one tool call, identified by ``index`` within its choice."""

    index: int | None = None
    id: str | None = None
    type: Literal["function"] | None = None
    function: ChoiceDeltaFunctionCall | None = None


class ChoiceDelta(WireModel):
    """What one chunk adds to a choice's message."""

    role: str | None = None
    content: str | None = None
    refusal: str | None = None
    tool_calls: list[ChoiceDeltaToolCall] | None = None
    function_call: ChoiceDeltaFunctionCall | None = None


class ChunkChoice(WireModel):
    """One choice's part of a streaming chunk."""

    index: int = 0
    delta: ChoiceDelta = Field(default_factory=ChoiceDelta)
    finish_reason: str | None = None
    logprobs: dict[str, Any] | None = None


class ChatCompletionChunk(WireModel):
    """One event of a streamed chat completion."""

    id: str = ""
    object: str = "chat.completion.chunk"
    created: int = 0
    model: str = ""
    choices: list[ChunkChoice] = Field(default_factory=list)
    usage: Usage | None = None
    system_fingerprint: str | None = None
    service_tier: str | None = None

    def to_wire(self) -> dict[str, Any]:
        self._mark_core()
        return super().to_wire()

    def to_wire_json(self) -> bytes:
        self._mark_core()
        return super().to_wire_json()

    def _mark_core(self) -> None:
        self.__pydantic_fields_set__.update(CHUNK_CORE)
        for choice in self.choices:
            choice.__pydantic_fields_set__.update(CHUNK_CHOICE_CORE)
