"""The ``leapmcp`` command."""

from __future__ import annotations

import sys

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    """Explain that the MCP server is not part of this release yet."""
    del argv
    print("leapmcp: the MCP server is not part of this release yet.", file=sys.stderr)
    return 2
