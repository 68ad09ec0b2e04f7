"""What an event of a native stream means to the gateway, whatever its protocol."""

from __future__ import annotations

from enum import Enum

__all__ = ["EventKind"]


class EventKind(Enum):
    """Preamble (held back until content), content, an error, the end, or anything else."""

    PREAMBLE = "preamble"
    CONTENT = "content"
    ERROR = "error"
    TERMINAL = "terminal"
    OTHER = "other"
