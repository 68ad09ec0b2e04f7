"""The Anthropic Messages API's own shapes: the request, its parsing, ids, errors and counts.

Pure data, no I/O. Translation to and from chat completions is in ``messages_chat``, streams in
``messages_stream``. Content blocks chat has no counterpart for validate as ``OtherBlock`` so
that the translation can drop them with a note instead of refusing the request.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterable, Mapping
from typing import Annotated, Any, Literal

from pydantic import Discriminator, Field, Tag, ValidationError, ValidationInfo, model_validator
from pydantic_core import PydanticCustomError

from ..exceptions import (
    AuthenticationError,
    ConflictError,
    InvalidRequestError,
    LeapError,
    LeapTimeoutError,
    MisdirectedRequestError,
    NoProviderAvailableError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    RequestTooLargeError,
    UnprocessableEntityError,
    UpstreamUnavailableError,
)
from ..types import invalid_request_from
from ..types._base import LIST_TAG, STR_TAG, TAG_MARK, WireModel, str_or_list
from ..types.guard import check_request_fields

__all__ = [
    "FORWARDED_HEADERS",
    "BlockSource",
    "ContentBlock",
    "DocumentBlock",
    "ImageBlock",
    "InputMessage",
    "MessagesRequest",
    "OtherBlock",
    "ResultPart",
    "TextBlock",
    "ToolChoice",
    "ToolDefinition",
    "ToolResultBlock",
    "ToolUseBlock",
    "anthropic_error",
    "estimate_input_tokens",
    "new_message_id",
    "new_tool_use_id",
    "parse_count_tokens_request",
    "parse_messages_request",
    "tokens_count",
]

# Client headers a native Messages upstream receives; nothing else of the client's passes.
FORWARDED_HEADERS = (b"anthropic-version", b"anthropic-beta")
_CHARS_PER_TOKEN = 4
# What one image or binary document is taken to cost, instead of its base64 length.
_IMAGE_TOKENS = 1600


def _invalid(field: str, message: str) -> PydanticCustomError:
    return PydanticCustomError("invalid_request", message, {"field": field})


class TextBlock(WireModel):
    """A text block."""

    type: Literal["text"] = "text"
    text: str


class BlockSource(WireModel):
    """Where an image or document comes from: inline (base64, text), a URL, or a file id."""

    type: str
    media_type: str | None = None
    data: str | None = None
    url: str | None = None
    file_id: str | None = None


class ImageBlock(WireModel):
    """An image block."""

    type: Literal["image"] = "image"
    source: BlockSource

    @model_validator(mode="after")
    def _complete(self) -> ImageBlock:
        source = self.source
        if source.type == "base64" and (source.data is None or source.media_type is None):
            raise _invalid("source", "a base64 image needs 'media_type' and 'data'")
        if source.type == "url" and source.url is None:
            raise _invalid("source.url", "a url image needs 'url'")
        return self


class DocumentBlock(WireModel):
    """A document block (plain text or a PDF)."""

    type: Literal["document"] = "document"
    source: BlockSource
    title: str | None = None


class OtherBlock(WireModel):
    """A block chat has no counterpart for (thinking, server tool results, ...)."""

    type: str


class ToolUseBlock(WireModel):
    """A tool call the assistant made."""

    type: Literal["tool_use"] = "tool_use"
    id: str = Field(min_length=1)
    name: str = Field(min_length=1)
    input: dict[str, Any]


_KNOWN_BLOCKS = frozenset({"text", "image", "document", "tool_use", "tool_result"})


def _block_tag(value: Any) -> str | None:
    kind = value.get("type") if isinstance(value, dict) else getattr(value, "type", None)
    if not isinstance(kind, str):
        return None
    return f"type{TAG_MARK}{kind if kind in _KNOWN_BLOCKS else 'other'}"


# Blocks of a type not modelled here validate as OtherBlock, to be dropped with a note.
_BY_TYPE = Discriminator(
    _block_tag,
    custom_error_type="invalid_union_member",
    custom_error_message="Input does not have a valid 'type'",
)
ResultPart = Annotated[
    Annotated[TextBlock, Tag("type:text")]
    | Annotated[ImageBlock, Tag("type:image")]
    | Annotated[DocumentBlock, Tag("type:document")]
    | Annotated[OtherBlock, Tag("type:other")],
    _BY_TYPE,
]


class ToolResultBlock(WireModel):
    """The result of a tool call, in a user message."""

    type: Literal["tool_result"] = "tool_result"
    tool_use_id: str = Field(min_length=1)
    content: str | list[ResultPart] | None = None
    is_error: bool | None = None


ContentBlock = Annotated[
    Annotated[TextBlock, Tag("type:text")]
    | Annotated[ImageBlock, Tag("type:image")]
    | Annotated[DocumentBlock, Tag("type:document")]
    | Annotated[ToolUseBlock, Tag("type:tool_use")]
    | Annotated[ToolResultBlock, Tag("type:tool_result")]
    | Annotated[OtherBlock, Tag("type:other")],
    _BY_TYPE,
]


class InputMessage(WireModel):
    """One message of ``messages``; Claude Code also sends ``system`` ones between turns."""

    role: Literal["user", "assistant", "system"]
    content: Annotated[
        Annotated[str, Tag(STR_TAG)] | Annotated[list[ContentBlock], Tag(LIST_TAG)],
        str_or_list("content blocks"),
    ]


class ToolDefinition(WireModel):
    """A tool: a custom one (``input_schema``) or a server tool (``type`` names it)."""

    name: str = Field(min_length=1)
    type: str | None = None
    description: str | None = None
    input_schema: dict[str, Any] | None = None

    @property
    def is_custom(self) -> bool:
        """True for a tool the client runs itself, which chat can offer as a function."""
        return self.type in (None, "custom")

    @model_validator(mode="after")
    def _has_schema(self) -> ToolDefinition:
        if self.is_custom and self.input_schema is None:
            raise _invalid("input_schema", "a custom tool needs 'input_schema'")
        return self


class ToolChoice(WireModel):
    """How the model should use the tools."""

    type: Literal["auto", "any", "tool", "none"]
    name: str | None = None
    disable_parallel_tool_use: bool | None = None

    @model_validator(mode="after")
    def _named(self) -> ToolChoice:
        if self.type == "tool" and not self.name:
            raise _invalid("name", "tool_choice of type 'tool' needs 'name'")
        return self


_System = Annotated[
    Annotated[str, Tag(STR_TAG)] | Annotated[list[TextBlock], Tag(LIST_TAG)],
    str_or_list("text blocks"),
]


class MessagesRequest(WireModel):
    """A ``POST /v1/messages`` body. Fields it does not model are kept (and forwarded as they
    came to providers that speak Messages natively)."""

    model: str = Field(min_length=1)
    messages: list[InputMessage] = Field(min_length=1)
    max_tokens: int = Field(ge=1)
    system: _System | None = None
    tools: list[ToolDefinition] | None = None
    tool_choice: ToolChoice | None = None
    stop_sequences: list[str] | None = None
    temperature: float | None = Field(default=None, ge=0, le=1)
    top_p: float | None = Field(default=None, ge=0, le=1)
    top_k: int | None = Field(default=None, ge=0)
    metadata: dict[str, Any] | None = None
    stream: bool | None = None
    thinking: dict[str, Any] | None = None
    context_management: dict[str, Any] | None = None
    output_config: dict[str, Any] | None = None

    @model_validator(mode="before")
    @classmethod
    def _count_tokens_default(cls, data: Any, info: ValidationInfo) -> Any:
        # A count_tokens body has no max_tokens; the count does not depend on it.
        counting = isinstance(info.context, Mapping) and info.context.get("count_tokens")
        if counting and isinstance(data, Mapping) and "max_tokens" not in data:
            return {**data, "max_tokens": 1}
        return data


def parse_messages_request(
    body: bytes | str | Mapping[str, Any], *, raw: bytes | None = None
) -> MessagesRequest:
    """Validate a Messages body; InvalidRequestError (``param`` set) for bad JSON, a missing
    field, a wrong shape, or a field that would pick the upstream (``base_url`` ...).
    ``raw``: the bytes ``body`` was parsed from, for the guard's fast check."""
    return _parse(body, counting=False, raw=raw)


def parse_count_tokens_request(
    body: bytes | str | Mapping[str, Any], *, raw: bytes | None = None
) -> MessagesRequest:
    """Validate a ``/v1/messages/count_tokens`` body, which needs no ``max_tokens``."""
    return _parse(body, counting=True, raw=raw)


def _parse(
    body: bytes | str | Mapping[str, Any], *, counting: bool, raw: bytes | None = None
) -> MessagesRequest:
    context = {"count_tokens": counting}
    try:
        if isinstance(body, bytes | str):
            request = MessagesRequest.model_validate_json(body, context=context)
        else:
            request = MessagesRequest.model_validate(body, context=context)
    except ValidationError as exc:
        raise invalid_request_from(exc) from None
    try:
        check_request_fields(body if raw is None else raw)
    except InvalidRequestError:
        # The guard knows where chat keeps schemas, not where Messages keeps data (tool
        # schemas, tool inputs): look again without them.
        data = json.loads(body) if isinstance(body, bytes | str) else body
        check_request_fields(_without_data(data))
    return request


def _without_data(data: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(data)
    tools = data.get("tools")
    if isinstance(tools, list):
        out["tools"] = [_without(tool, "input_schema") for tool in tools]
    messages = data.get("messages")
    if isinstance(messages, list):
        out["messages"] = [_without_inputs(message) for message in messages]
    config = data.get("output_config")
    if isinstance(config, dict) and isinstance(config.get("format"), dict):
        out["output_config"] = {**config, "format": _without(config["format"], "schema")}
    return out


def _without_inputs(message: Any) -> Any:
    if not isinstance(message, dict) or not isinstance(message.get("content"), list):
        return message
    return {**message, "content": [_without(block, "input") for block in message["content"]]}


def _without(value: Any, key: str) -> Any:
    if not isinstance(value, dict):
        return value
    return {k: v for k, v in value.items() if k != key}


def new_message_id() -> str:
    """A fresh Message id: ``msg_`` and 24 hex digits."""
    return "msg_" + secrets.token_hex(12)


def new_tool_use_id() -> str:
    """A fresh tool use id, for an upstream tool call that came without one."""
    return "toolu_" + secrets.token_hex(12)


def tokens_count(request: MessagesRequest) -> dict[str, Any]:
    """The ``/v1/messages/count_tokens`` answer, from the estimate."""
    return {"input_tokens": estimate_input_tokens(request)}


def estimate_input_tokens(request: MessagesRequest) -> int:
    """About four characters a token over system, messages and tools; an image counts as a
    fixed amount, not as its base64. Deterministic, at least 1."""
    data = request.model_dump(include={"system", "messages", "tools"}, exclude_none=True)
    return max(1, -(-_characters(data.values()) // _CHARS_PER_TOKEN))


def _characters(values: Iterable[Any]) -> int:
    total = 0
    stack = list(values)
    while stack:
        value = stack.pop()
        if isinstance(value, str):
            total += len(value)
        elif isinstance(value, dict):
            source = value.get("source")
            if isinstance(source, dict) and source.get("type") in ("base64", "url", "file"):
                total += _IMAGE_TOKENS * _CHARS_PER_TOKEN
                continue
            total += sum(len(key) + 3 for key in value)
            stack.extend(value.values())
        elif isinstance(value, list):
            total += len(value)
            stack.extend(value)
        else:
            total += len(str(value))
    return total


# (status, error type) by class, most specific first. Failures the gateway could not get past
# with its own retries and failover still say what they are, so clients may retry later:
# - capacity (no provider free; an upstream's 503 or 529): 529 overloaded_error, which the SDKs
#   and Claude Code retry after a pause, honouring retry-after;
# - any other upstream failure: 500 api_error (the SDK retries it twice, with backoff; the
#   breakers and holds it left behind make those retries cheap);
# - timeouts: 504 timeout_error (the SDK's GatewayTimeoutError), not 408, which would blame
#   the client's upload.
_ERRORS: tuple[tuple[type[LeapError], int, str], ...] = (
    (RequestTooLargeError, 413, "request_too_large"),
    (MisdirectedRequestError, 421, "invalid_request_error"),
    (UnprocessableEntityError, 422, "invalid_request_error"),
    (AuthenticationError, 401, "authentication_error"),
    (PermissionDeniedError, 403, "permission_error"),
    (NotFoundError, 404, "not_found_error"),
    (ConflictError, 409, "conflict_error"),
    (RateLimitError, 429, "rate_limit_error"),
    (NoProviderAvailableError, 529, "overloaded_error"),
    (LeapTimeoutError, 504, "timeout_error"),
)
_OVERLOADED_UPSTREAM = frozenset({503, 529})


def anthropic_error(
    error: LeapError, *, request_id: str | None = None
) -> tuple[int, dict[str, Any]]:
    """The HTTP status and Anthropic error body for ``error``."""
    status, kind = _status(error)
    body: dict[str, Any] = {"type": "error", "error": {"type": kind, "message": error.message}}
    if request_id is not None:
        body["request_id"] = request_id
    return status, body


def _status(error: LeapError) -> tuple[int, str]:
    for cls, status, kind in _ERRORS:
        if isinstance(error, cls):
            return status, kind
    if isinstance(error, InvalidRequestError):
        # An unusual 4xx from the upstream (402, 405, ...) keeps its status.
        status = error.http_status
        return status, "billing_error" if status == 402 else "invalid_request_error"
    if isinstance(error, UpstreamUnavailableError):
        upstream = error.upstream_status
        if upstream in _OVERLOADED_UPSTREAM:
            return 529, "overloaded_error"
        if upstream == 504:
            return 504, "timeout_error"
    if error.http_status == 503:
        return 503, "api_error"  # the gateway's own stores or issuer away: try again later
    return 500, "api_error"
