"""The ``leapmcp`` command: the gateway's MCP server over stdio, or Streamable HTTP with ``--http``.

Logs go to stderr only: over stdio, stdout carries the protocol.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path

from leapasgi import (
    ConfigurationError,
    Gateway,
    GatewayConfig,
    LeapError,
    __version__,
    guard_handlers,
    load_config,
    run_server,
)

from .endpoint import build_http_app, transport_security
from .tools import build_server

__all__ = ["DEFAULT_HOST", "DEFAULT_PORT", "main"]

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765
# Seconds requests in flight get to finish on shutdown; open MCP event streams are cut after it.
GRACEFUL_SHUTDOWN = 10
LOG_LEVELS = ("debug", "info", "warning", "error")
_ANY_ADDRESS = frozenset({"", "0.0.0.0", "::"})


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="leapmcp", description="The leapasgi gateway as an MCP server (stdio by default)."
    )
    parser.add_argument("--version", action="version", version=f"leapmcp {__version__}")
    parser.add_argument("--config", type=Path, required=True, help="the gateway's TOML config")
    parser.add_argument("--http", action="store_true", help="serve Streamable HTTP at /mcp")
    parser.add_argument("--host", default=DEFAULT_HOST, help=f"with --http; default {DEFAULT_HOST}")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="with --http")
    parser.add_argument(
        "--admin-tools",
        action="store_true",
        help="offer set_provider_status (as server.mcp_admin_tools does); over HTTP callers "
        "must present server.admin_key",
    )
    parser.add_argument(
        "--allow-host",
        action="append",
        default=[],
        metavar="HOST",
        help="with --http: a Host header to accept besides loopback ones (name, name:port or "
        "name:*); repeatable",
    )
    parser.add_argument(
        "--allow-origin",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="with --http: an Origin header to accept (https://name[:port]); repeatable",
    )
    parser.add_argument("--log-level", choices=LOG_LEVELS, default="info")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    # At every level, no library's debug output (the mcp SDK logs each message) reaches it.
    guard_handlers()
    try:
        config = load_config(args.config)
        admin_tools = args.admin_tools or config.server.mcp_admin_tools
        if args.http:
            return _serve_http(config, args, admin_tools=admin_tools)
        return _serve_stdio(config, admin_tools=admin_tools)
    except LeapError as error:
        print(f"leapmcp: {error.message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _serve_stdio(config: GatewayConfig, *, admin_tools: bool) -> int:
    gateway = Gateway.from_config(config)
    server = build_server(gateway, admin_tools=admin_tools)

    async def serve() -> None:
        async with gateway:
            await server.run_stdio_async()

    asyncio.run(serve())
    return 0


def _serve_http(config: GatewayConfig, args: argparse.Namespace, *, admin_tools: bool) -> int:
    if admin_tools and config.server.admin_key is None:
        raise ConfigurationError(
            "Admin tools over HTTP need server.admin_key in the config: callers must present it"
        )
    hosts = [*config.server.allowed_hosts, *config.server.mcp_allowed_hosts, *args.allow_host]
    if args.host not in _ANY_ADDRESS:
        # Clients that reach a named bind address send it as the Host header.
        hosts.append(f"[{args.host}]:*" if ":" in args.host else f"{args.host}:*")
    server = config.server
    origins = [*server.allowed_origins, *server.mcp_allowed_origins, *args.allow_origin]
    security = transport_security(allowed_hosts=hosts, allowed_origins=origins)
    gateway = Gateway.from_config(config)
    app = build_http_app(gateway, admin_tools=admin_tools, security=security)
    run_server(
        app,
        limits=config.server.connection_limits(),
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        access_log=False,  # leapasgi.access logs each chat, without prompts or keys
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN,
    )
    return 0
