"""The ``leapasgi`` command: ``serve``, ``check``, ``presets``, and ``keys`` and ``usage`` (in
``cli_tenants.py``)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from . import __version__
from ._logging import configure_server_logging
from .cli_tenants import add_commands, run
from .exceptions import LeapError
from .params import merge
from .providers.presets import PRESETS
from .redact import public_url

if TYPE_CHECKING:
    from .config import GatewayConfig

__all__ = ["app_from_env", "main", "warn_unshared"]

# How ``serve --workers N`` tells each worker process which config to load.
CONFIG_ENV = "LEAPASGI_CONFIG"
# Seconds in-flight requests get to finish on shutdown.
GRACEFUL_SHUTDOWN = 30


def _presets() -> int:
    width = max(len(name) for name in PRESETS)
    for preset in PRESETS.values():
        key = preset.api_key_env or "no key"
        if preset.api_key_env and not preset.key_required:
            key += " (optional)"
        features = ",".join(sorted(preset.features))
        print(f"{preset.name:<{width}}  {preset.base_url:<40} {key:<28} {features}")
        for rules in preset.params:
            scope = ", ".join(rules.models) or "every model"
            said = merge([rules.model_copy(update={"models": ()})], "")
            if said is not None:
                print(f"{'':<{width}}  params ({scope}): {'; '.join(said.describe())}")
    return 0


def _check(path: Path) -> int:
    from .config import load_config

    config = load_config(path)
    providers = config.enabled_providers()
    print(f"{path}: OK, {len(providers)} provider(s) would be registered")
    for provider in providers:
        kind = provider.type if provider.preset is None else f"preset {provider.preset}"
        url = provider.resolved_base_url
        where = public_url(url) if url else "in process"
        models = ", ".join(provider.models) or "discovered from /models"
        print(f"  {provider.name}: {kind}, {where}, models: {models}")
    for name, reason in config.skipped_providers().items():
        print(f"  {name}: skipped ({reason})")
    for alias, target in config.routing.aliases.items():
        print(f"  alias {alias} -> {', '.join(target.targets)}")
    return 0


def app_from_env() -> object:
    """The ASGI app for the config named by LEAPASGI_CONFIG (uvicorn factory, for --workers)."""
    from .asgi import Gateway
    from .config import load_config

    config = load_config(os.environ[CONFIG_ENV])
    # Each worker process sets up its own.
    configure_server_logging(sys.stderr, json_lines=config.server.log_format == "json")
    return Gateway.from_config(config).app


# Bytes a WebSocket frame may exceed the body limit by and still be read (and refused).
WS_FRAME_SLACK = 64 * 1024


def warn_unshared(config: GatewayConfig, workers: int) -> None:
    """Say, once, that several workers on the memory backend do not share their state."""
    if workers > 1 and config.state.backend == "memory":
        logging.getLogger("leapasgi").warning(
            "%d workers with the memory state backend: each worker keeps its own breakers, "
            "rate limits, cache, sessions, conversations and budgets (keys and usage are "
            'shared through the SQLite file); set [state] backend = "redis" to share them',
            workers,
        )


def _serve(path: Path, host: str | None, port: int | None, workers: int) -> int:
    from .config import load_config
    from .server import run_server

    config = load_config(path)  # fail fast, with the file and key, before binding anything
    os.environ[CONFIG_ENV] = str(path.resolve())
    configure_server_logging(sys.stderr, json_lines=config.server.log_format == "json")
    warn_unshared(config, workers)
    run_server(
        "leapasgi.cli:app_from_env",
        limits=config.server.connection_limits(),
        factory=True,
        host=host or config.server.host,
        port=port if port is not None else config.server.port,
        workers=workers,
        log_config=None,  # uvicorn's loggers write through ours: one format, batched writes
        access_log=False,  # leapasgi.access logs one line per request, without prompts or keys
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN,
        log_level="info",
        # A Responses WebSocket frame over the body limit gets the gateway's error event
        # before it closes, not uvicorn's bare close.
        ws_max_size=config.server.max_body_bytes + WS_FRAME_SLACK,
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser = argparse.ArgumentParser(prog="leapasgi", description="An OpenAI-compatible gateway.")
    parser.add_argument("--version", action="version", version=f"leapasgi {__version__}")
    commands = parser.add_subparsers(dest="command")
    serve = commands.add_parser("serve", help="run the gateway on uvicorn")
    serve.add_argument("--config", type=Path, required=True)
    serve.add_argument("--host", help="default: the config's, else 127.0.0.1")
    serve.add_argument("--port", type=int, help="default: the config's, else 8000")
    serve.add_argument("--workers", type=int, default=1)
    check = commands.add_parser("check", help="validate a config and list its providers")
    check.add_argument("--config", type=Path, required=True)
    commands.add_parser("presets", help="list the built-in provider presets")
    add_commands(commands)
    args = parser.parse_args(argv)
    try:
        result = run(args)
        if result is not None:
            return result
        if args.command == "serve":
            return _serve(args.config, args.host, args.port, args.workers)
        if args.command == "check":
            return _check(args.config)
        if args.command == "presets":
            return _presets()
    except LeapError as error:
        print(f"leapasgi: {error.message}", file=sys.stderr)
        return 2
    parser.print_help(sys.stderr)
    return 2
