"""The OpenAI error envelope: ``{"error": {"message", "type", "param", "code"}}``."""

from __future__ import annotations

from ._base import WireModel

__all__ = ["ErrorDetail", "ErrorEnvelope"]


class ErrorDetail(WireModel):
    """The inside of an error body: message, type, param and code."""

    message: str = ""
    type: str | None = None
    param: str | None = None
    code: str | int | None = None


class ErrorEnvelope(WireModel):
    """``{"error": {...}}``."""

    error: ErrorDetail
