"""The base of every wire model: unknown fields are kept and forwarded, never dropped."""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Discriminator

__all__ = [
    "LIST_TAG",
    "STR_TAG",
    "TAG_MARK",
    "CoreWireModel",
    "WireModel",
    "str_or_list",
    "tag_by",
]


class WireModel(BaseModel):
    """A pydantic model of an OpenAI wire object that keeps fields it does not model."""

    model_config = ConfigDict(extra="allow", populate_by_name=True, serialize_by_alias=True)

    def to_wire(self) -> dict[str, Any]:
        """This object as JSON-ready data, with only the fields that were set."""
        return self.model_dump(mode="json", exclude_unset=True, by_alias=True)

    def to_wire_json(self) -> bytes:
        """``to_wire()`` as compact JSON bytes."""
        return self.model_dump_json(exclude_unset=True, by_alias=True).encode()


# Union tags in validation error locations contain this marker, so that the error mapper can
# tell a tag ("role:user") from a field name ("user") when it names the offending field.
TAG_MARK = ":"


class CoreWireModel(WireModel):
    """A wire model whose core fields are in every dump, even when the sender left them out."""

    always_sent: ClassVar[frozenset[str]] = frozenset()

    def model_post_init(self, context: Any, /) -> None:
        self.__pydantic_fields_set__.update(self.always_sent)


def tag_by(key: str, *, string_tag: str | None = None) -> Discriminator:
    """A discriminator on ``key`` whose tags are ``"key:value"``; strings get ``string_tag``."""

    def pick(value: Any) -> str | None:
        if isinstance(value, str):
            return string_tag
        tag = value.get(key) if isinstance(value, dict) else getattr(value, key, None)
        return f"{key}{TAG_MARK}{tag}" if isinstance(tag, str) else None

    return Discriminator(
        pick,
        custom_error_type="invalid_union_member",
        custom_error_message=f"Input does not have a valid '{key}'",
    )


def str_or_list(what: str) -> Discriminator:
    """A discriminator for "a string or an array of ..." unions, with readable tags."""

    def pick(value: Any) -> str | None:
        if isinstance(value, str):
            return STR_TAG
        if isinstance(value, list):
            return LIST_TAG
        return None

    return Discriminator(
        pick,
        custom_error_type="string_or_array_type",
        custom_error_message=f"Input should be a string or an array of {what}",
    )


STR_TAG = f"str{TAG_MARK}"
LIST_TAG = f"list{TAG_MARK}"
