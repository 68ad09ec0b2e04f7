"""``GET /v1/models`` objects."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from ._base import CoreWireModel

__all__ = ["Model", "ModelList"]


class Model(CoreWireModel):
    """One model a provider serves."""

    always_sent: ClassVar[frozenset[str]] = frozenset({"id", "object", "created", "owned_by"})

    id: str
    object: str = "model"
    created: int = 0
    owned_by: str = ""


class ModelList(CoreWireModel):
    """The list of models."""

    always_sent: ClassVar[frozenset[str]] = frozenset({"object", "data"})

    object: str = "list"
    data: list[Model] = Field(default_factory=list)
