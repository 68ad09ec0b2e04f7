"""leapmcp: the leapasgi gateway as an MCP server for agent hosts and IDEs.

``leapmcp --config gateway.toml`` serves it over stdio (``--http`` for Streamable HTTP), and
``server.mcp = true`` mounts it at ``/mcp`` in the gateway's own app.
"""

from .endpoint import McpEndpoint, build_http_app, transport_security
from .tools import GatewayTools, build_server

__all__ = ["GatewayTools", "McpEndpoint", "build_http_app", "build_server", "transport_security"]
