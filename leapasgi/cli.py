"""The ``leapasgi`` command."""

from __future__ import annotations

import argparse
import sys

from . import __version__
from .providers.presets import PRESETS

__all__ = ["main"]


def _presets() -> int:
    width = max(len(name) for name in PRESETS)
    for preset in PRESETS.values():
        key = preset.api_key_env or "no key"
        if preset.api_key_env and not preset.key_required:
            key += " (optional)"
        features = ",".join(sorted(preset.features))
        print(f"{preset.name:<{width}}  {preset.base_url:<40} {key:<28} {features}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser = argparse.ArgumentParser(prog="leapasgi", description="An OpenAI-compatible gateway.")
    parser.add_argument("--version", action="version", version=f"leapasgi {__version__}")
    commands = parser.add_subparsers(dest="command")
    commands.add_parser("presets", help="list the built-in provider presets")
    args = parser.parse_args(argv)
    if args.command == "presets":
        return _presets()
    parser.print_help(sys.stderr)
    return 2
