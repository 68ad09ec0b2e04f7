"""Message content parts: text, image_url, input_audio, file and refusal."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Tag

from ._base import LIST_TAG, STR_TAG, WireModel, str_or_list, tag_by

__all__ = [
    "AssistantContent",
    "File",
    "FilePart",
    "ImageURL",
    "ImageURLPart",
    "InputAudio",
    "InputAudioPart",
    "RefusalPart",
    "TextContent",
    "TextPart",
    "UserContent",
    "UserContentPart",
]


class TextPart(WireModel):
    """A text content part."""

    type: Literal["text"] = "text"
    text: str


class ImageURL(WireModel):
    """An image by URL or ``data:`` URI, with an optional detail level."""

    url: str
    detail: Literal["auto", "low", "high", "original"] | None = None


class ImageURLPart(WireModel):
    """An image content part."""

    type: Literal["image_url"] = "image_url"
    image_url: ImageURL


class InputAudio(WireModel):
    """Base64 audio and its format."""

    data: str
    format: str


class InputAudioPart(WireModel):
    """An audio content part."""

    type: Literal["input_audio"] = "input_audio"
    input_audio: InputAudio


class File(WireModel):
    """A file given inline (base64 ``file_data``) or by ``file_id``."""

    file_data: str | None = None
    file_id: str | None = None
    filename: str | None = None


class FilePart(WireModel):
    """A file content part."""

    type: Literal["file"] = "file"
    file: File


class RefusalPart(WireModel):
    """A refusal part in an assistant message."""

    type: Literal["refusal"] = "refusal"
    refusal: str


UserContentPart = Annotated[
    Annotated[TextPart, Tag("type:text")]
    | Annotated[ImageURLPart, Tag("type:image_url")]
    | Annotated[InputAudioPart, Tag("type:input_audio")]
    | Annotated[FilePart, Tag("type:file")],
    tag_by("type"),
]
_AssistantPart = Annotated[
    Annotated[TextPart, Tag("type:text")] | Annotated[RefusalPart, Tag("type:refusal")],
    tag_by("type"),
]

UserContent = Annotated[
    Annotated[str, Tag(STR_TAG)] | Annotated[list[UserContentPart], Tag(LIST_TAG)],
    str_or_list("content parts"),
]
TextContent = Annotated[
    Annotated[str, Tag(STR_TAG)] | Annotated[list[TextPart], Tag(LIST_TAG)],
    str_or_list("text parts"),
]
AssistantContent = Annotated[
    Annotated[str, Tag(STR_TAG)] | Annotated[list[_AssistantPart], Tag(LIST_TAG)],
    str_or_list("text or refusal parts"),
]
