"""Reading a gateway configuration file: TOML, ``${VAR}`` substitution and error messages.

Works on plain data only; the typed models live in ``leapasgi.config``. No message built here
ever contains a configuration value, only file names, key paths and variable names.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from .exceptions import ConfigurationError

__all__ = ["SKIPPED_CONTEXT", "Prepared", "format_errors", "key_path", "prepare", "read_text"]

# Validation-context key under which the optional providers dropped at load time travel.
SKIPPED_CONTEXT = "skipped_providers"

_REFERENCE = re.compile(r"\$\$\{|\$\{([^}]*)\}|\$\{")
_VARIABLE = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)(?::-(.*))?", re.DOTALL)


class _SubstitutionError(Exception):
    def __init__(self, path: str, detail: str) -> None:
        super().__init__(f"{path}: {detail}" if path else detail)


class _UnsetVariable(_SubstitutionError):
    pass


@dataclass(frozen=True, slots=True)
class Prepared:
    """Configuration data ready for validation, and what was left out on the way."""

    data: dict[str, Any]
    skipped: dict[str, str] = field(default_factory=dict)
    # The file's index of each provider kept, so error paths point into the file as written.
    provider_index: list[int] = field(default_factory=list)


def read_text(path: Path) -> str:
    """The text of the configuration file at ``path``."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigurationError(f"{path}: the configuration is not UTF-8 text") from None
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ConfigurationError(f"{path}: cannot read the configuration: {reason}") from None


def prepare(text: str, *, source: str, env: Mapping[str, str], base_dir: Path | None) -> Prepared:
    """Parse TOML and substitute variables; optional providers with an unset variable are dropped.

    A relative ``api_key_file``, ``url_file``, ``database`` or ``directory`` is taken relative
    to ``base_dir`` (the file's directory).
    """
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigurationError(f"{source}: invalid TOML: {exc}") from None
    providers = raw.pop("providers", None)
    try:
        data: dict[str, Any] = _substitute(raw, (), env)
        if "state" in data:
            data["state"] = _key_file_from(data["state"], base_dir, "url_file")
        if "tenants" in data:
            data["tenants"] = _key_file_from(data["tenants"], base_dir, "database")
        if "batches" in data:
            data["batches"] = _key_file_from(data["batches"], base_dir, "directory")
        if not isinstance(providers, list):
            if providers is not None:
                data["providers"] = _substitute(providers, ("providers",), env)
            return Prepared(data)
        kept: list[Any] = []
        skipped: dict[str, str] = {}
        index: list[int] = []
        for i, table in enumerate(providers):
            try:
                kept.append(_key_file_from(_substitute(table, ("providers", i), env), base_dir))
            except _UnsetVariable as exc:
                name = table.get("name") if isinstance(table, dict) else None
                if not isinstance(name, str) or table.get("optional") is not True:
                    raise
                skipped[name] = str(exc)
                continue
            index.append(i)
    except _SubstitutionError as exc:
        raise ConfigurationError(f"{source}: {exc}") from None
    data["providers"] = kept
    return Prepared(data, skipped, index)


def _substitute(value: Any, path: tuple[str | int, ...], env: Mapping[str, str]) -> Any:
    if isinstance(value, str):
        return _expand(value, path, env)
    if isinstance(value, dict):
        return {k: _substitute(v, (*path, k), env) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, (*path, i), env) for i, v in enumerate(value)]
    return value


def _expand(text: str, path: tuple[str | int, ...], env: Mapping[str, str]) -> str:
    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$${":
            return "${"
        reference = match.group(1)
        where = key_path(path)
        if reference is None:
            raise _SubstitutionError(where, "unterminated ${ (write $${ for a literal ${)")
        parsed = _VARIABLE.fullmatch(reference)
        if parsed is None or "${" in (parsed.group(2) or ""):
            raise _SubstitutionError(
                where, "malformed ${...}: expected ${NAME} or ${NAME:-default}"
            )
        name, default = parsed.group(1), parsed.group(2)
        value = env.get(name)
        if default is not None:
            return value or default
        if value is None:
            raise _UnsetVariable(where, f"variable {name} is not set")
        return value

    return _REFERENCE.sub(replace, text)


def _key_file_from(table: Any, base_dir: Path | None, key: str = "api_key_file") -> Any:
    if not isinstance(table, dict) or not isinstance(table.get(key), str):
        return table
    path = Path(table[key]).expanduser()
    if base_dir is not None and not path.is_absolute():
        path = base_dir / path
    return {**table, key: str(path)}


def key_path(loc: Sequence[str | int]) -> str:
    """``("providers", 1, "timeout")`` as ``providers[1].timeout``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else part
    return out


def format_errors(
    exc: ValidationError, *, source: str = "", provider_index: Sequence[int] = ()
) -> str:
    """One ``source: key.path: what was expected`` line per error, never echoing an input."""
    lines = []
    for error in exc.errors(include_url=False, include_context=False, include_input=False):
        loc = list(error["loc"])
        index = loc[1] if len(loc) > 1 and loc[0] == "providers" else None
        if isinstance(index, int) and index < len(provider_index):
            loc[1] = provider_index[index]
        message = error["msg"].removeprefix("Value error, ")
        lines.append(": ".join(part for part in (source, key_path(loc), message) if part))
    return "\n".join(lines)
