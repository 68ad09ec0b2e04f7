"""The chat completion request: messages, tools, response formats and sampling controls."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, Tag, field_validator, model_validator
from pydantic_core import PydanticCustomError

from ._base import LIST_TAG, STR_TAG, WireModel, str_or_list, tag_by
from .content import ImageURLPart
from .messages import Message, SystemMessage

__all__ = [
    "AllowedToolsChoice",
    "ChatCompletionRequest",
    "CustomTool",
    "FunctionDefinition",
    "FunctionTool",
    "JSONSchemaFormat",
    "NamedFunction",
    "NamedToolChoice",
    "ResponseFormat",
    "ResponseFormatJSONObject",
    "ResponseFormatJSONSchema",
    "ResponseFormatText",
    "StreamOptions",
    "Tool",
    "ToolChoice",
]

_NAME_PATTERN = r"^[a-zA-Z0-9_-]{1,64}$"


class FunctionDefinition(WireModel):
    """A function the model may call, with its parameters as a JSON Schema."""

    name: str = Field(pattern=_NAME_PATTERN)
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class FunctionTool(WireModel):
    """A function tool."""

    type: Literal["function"] = "function"
    function: FunctionDefinition


class CustomTool(WireModel):
    """A custom (free-form input) tool."""

    type: Literal["custom"] = "custom"
    custom: dict[str, Any]


Tool = Annotated[
    Annotated[FunctionTool, Tag("type:function")] | Annotated[CustomTool, Tag("type:custom")],
    tag_by("type"),
]


class NamedFunction(WireModel):
    """The name of the function a tool choice forces."""

    name: str


class NamedToolChoice(WireModel):
    """Force a call to one named function."""

    type: Literal["function"] = "function"
    function: NamedFunction


class AllowedToolsChoice(WireModel):
    """Restrict the model to a subset of the tools."""

    type: Literal["allowed_tools"] = "allowed_tools"
    allowed_tools: dict[str, Any]


class CustomToolChoice(WireModel):
    """Force a call to one named custom tool."""

    type: Literal["custom"] = "custom"
    custom: NamedFunction


ToolChoice = Annotated[
    Annotated[Literal["none", "auto", "required"], Tag(STR_TAG)]
    | Annotated[NamedToolChoice, Tag("type:function")]
    | Annotated[AllowedToolsChoice, Tag("type:allowed_tools")]
    | Annotated[CustomToolChoice, Tag("type:custom")],
    tag_by("type", string_tag=STR_TAG),
]
_Stop = Annotated[
    Annotated[str, Tag(STR_TAG)] | Annotated[list[str], Tag(LIST_TAG)], str_or_list("strings")
]


class ResponseFormatText(WireModel):
    """Plain text output (the default)."""

    type: Literal["text"] = "text"


class ResponseFormatJSONObject(WireModel):
    """JSON mode: the reply is any valid JSON object."""

    type: Literal["json_object"] = "json_object"


class JSONSchemaFormat(WireModel):
    """A named JSON Schema the reply must match."""

    name: str = Field(pattern=_NAME_PATTERN)
    description: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None


class ResponseFormatJSONSchema(WireModel):
    """Structured output: the reply matches ``json_schema.schema``."""

    type: Literal["json_schema"] = "json_schema"
    json_schema: JSONSchemaFormat


ResponseFormat = Annotated[
    Annotated[ResponseFormatText, Tag("type:text")]
    | Annotated[ResponseFormatJSONObject, Tag("type:json_object")]
    | Annotated[ResponseFormatJSONSchema, Tag("type:json_schema")],
    tag_by("type"),
]


class StreamOptions(WireModel):
    """Options that apply only when ``stream`` is true."""

    include_usage: bool | None = None
    include_obfuscation: bool | None = None


def _invalid(param: str, message: str) -> PydanticCustomError:
    return PydanticCustomError("invalid_request", message, {"field": param})


class ChatCompletionRequest(WireModel):
    """A ``POST /v1/chat/completions`` body. Fields it does not model are kept and forwarded."""

    model: str = Field(min_length=1)
    messages: list[Message] = Field(min_length=1)
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    n: int | None = Field(default=None, ge=1, le=128)
    stop: _Stop | None = None
    seed: int | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    logit_bias: dict[str, float] | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    tools: list[Tool] | None = None
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None
    user: str | None = None
    metadata: dict[str, str] | None = None

    @field_validator("stop")
    @classmethod
    def _at_most_four_stops(cls, value: str | list[str] | None) -> str | list[str] | None:
        if isinstance(value, list) and len(value) > 4:
            raise ValueError("at most 4 stop sequences are allowed")
        return value

    @field_validator("logit_bias")
    @classmethod
    def _bias_range(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        if value and any(not -100 <= bias <= 100 for bias in value.values()):
            raise ValueError("logit_bias values must be between -100 and 100")
        return value

    @field_validator("metadata")
    @classmethod
    def _metadata_limits(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        if value is None:
            return value
        if len(value) > 16:
            raise ValueError("metadata holds at most 16 pairs")
        for key, item in value.items():
            if len(key) > 64 or len(item) > 512:
                raise ValueError("metadata keys are at most 64 and values 512 characters")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> ChatCompletionRequest:
        if self.stream_options is not None and not self.stream:
            raise _invalid("stream_options", "stream_options is only allowed when stream is true")
        if self.top_logprobs is not None and not self.logprobs:
            raise _invalid("top_logprobs", "top_logprobs requires logprobs to be true")
        if self.tool_choice is not None and self.tool_choice != "none" and not self.tools:
            raise _invalid("tool_choice", "tool_choice is only allowed when tools are given")
        forced = self.forced_function()
        if forced is not None and forced not in self.function_names():
            raise _invalid("tool_choice", f"tool_choice names '{forced}', which is not in tools")
        return self

    def function_names(self) -> list[str]:
        """The names of the function tools offered, in order."""
        return [t.function.name for t in self.tools or () if isinstance(t, FunctionTool)]

    def forced_function(self) -> str | None:
        """The function name a ``tool_choice`` forces, if it names one."""
        choice = self.tool_choice
        return choice.function.name if isinstance(choice, NamedToolChoice) else None

    @property
    def include_usage(self) -> bool:
        """True when a stream must end with a usage chunk."""
        return bool(self.stream and self.stream_options and self.stream_options.include_usage)

    @property
    def completion_token_limit(self) -> int | None:
        """``max_completion_tokens``, else the deprecated ``max_tokens``."""
        if self.max_completion_tokens is not None:
            return self.max_completion_tokens
        return self.max_tokens

    def has_images(self) -> bool:
        """True when any message carries an image part."""
        return any(
            isinstance(part, ImageURLPart)
            for message in self.messages
            if isinstance(message.content, list)
            for part in message.content
        )

    def has_system_messages(self) -> bool:
        """True when any message is a system or developer instruction."""
        return any(isinstance(m, SystemMessage) or m.role == "developer" for m in self.messages)
