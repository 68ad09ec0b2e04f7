"""leapmcp: the leapasgi gateway as an MCP server (its tools arrive in a later release)."""

__all__: list[str] = []
