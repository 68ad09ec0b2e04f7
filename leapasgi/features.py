"""What a provider can do, and what a request needs."""

from __future__ import annotations

from enum import StrEnum

from .types import ChatCompletionRequest, ResponseFormatText

__all__ = ["ALL_FEATURES", "Feature", "required_features"]


class Feature(StrEnum):
    """A capability a request may need; providers may also declare custom string features."""

    STREAMING = "streaming"
    TOOLS = "tools"
    JSON_MODE = "json_mode"
    VISION = "vision"
    SYSTEM_MESSAGES = "system_messages"


ALL_FEATURES: frozenset[str] = frozenset(Feature)


def required_features(request: ChatCompletionRequest) -> frozenset[str]:
    """The features a provider must support to serve ``request``."""
    needed: set[str] = set()
    if request.stream:
        needed.add(Feature.STREAMING)
    if request.tools:
        needed.add(Feature.TOOLS)
    if request.response_format is not None and not isinstance(
        request.response_format, ResponseFormatText
    ):
        needed.add(Feature.JSON_MODE)
    if request.has_images():
        needed.add(Feature.VISION)
    if request.has_system_messages():
        needed.add(Feature.SYSTEM_MESSAGES)
    return frozenset(needed)
