"""Request messages of every role: system, developer, user, assistant, tool and legacy function."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Tag, model_validator
from pydantic_core import PydanticCustomError

from ._base import WireModel, tag_by
from .content import AssistantContent, TextContent, UserContent
from .response import FunctionCall, ToolCall

__all__ = [
    "AssistantMessage",
    "DeveloperMessage",
    "FunctionMessage",
    "Message",
    "SystemMessage",
    "ToolMessage",
    "UserMessage",
]


class SystemMessage(WireModel):
    """Instructions from the application."""

    role: Literal["system"] = "system"
    content: TextContent
    name: str | None = None


class DeveloperMessage(WireModel):
    """Instructions from the developer; replaces ``system`` on newer models."""

    role: Literal["developer"] = "developer"
    content: TextContent
    name: str | None = None


class UserMessage(WireModel):
    """A user turn: text, or parts (text, images, audio, files)."""

    role: Literal["user"] = "user"
    content: UserContent
    name: str | None = None


class AssistantMessage(WireModel):
    """A previous assistant turn; ``content`` may be null when it made tool calls."""

    role: Literal["assistant"] = "assistant"
    content: AssistantContent | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    refusal: str | None = None
    audio: dict[str, Any] | None = None
    function_call: FunctionCall | None = None

    @model_validator(mode="after")
    def _has_something(self) -> AssistantMessage:
        if self.content is None and not (self.tool_calls or self.function_call or self.audio):
            raise PydanticCustomError(
                "missing_content",
                "An assistant message needs content unless it has tool_calls",
                {"field": "content"},
            )
        return self


class ToolMessage(WireModel):
    """The result of a tool call, answering ``tool_call_id``."""

    role: Literal["tool"] = "tool"
    content: TextContent
    tool_call_id: str


class FunctionMessage(WireModel):
    """The legacy result of a function call."""

    role: Literal["function"] = "function"
    content: str | None
    name: str


Message = Annotated[
    Annotated[SystemMessage, Tag("role:system")]
    | Annotated[DeveloperMessage, Tag("role:developer")]
    | Annotated[UserMessage, Tag("role:user")]
    | Annotated[AssistantMessage, Tag("role:assistant")]
    | Annotated[ToolMessage, Tag("role:tool")]
    | Annotated[FunctionMessage, Tag("role:function")],
    tag_by("role"),
]
