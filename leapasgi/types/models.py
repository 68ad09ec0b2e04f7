"""``GET /v1/models`` objects."""

from __future__ import annotations

from pydantic import Field

from ._base import WireModel

__all__ = ["Model", "ModelList"]


class Model(WireModel):
    """One model a provider serves."""

    id: str
    object: str = "model"
    created: int = 0
    owned_by: str = ""


class ModelList(WireModel):
    """The list of models."""

    object: str = "list"
    data: list[Model] = Field(default_factory=list)
