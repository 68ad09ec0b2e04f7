"""Claude Code and Codex CLI as the npm packages in tests/agents install them, run as
subprocesses with a clean environment: a temporary HOME, only the variables that point them at
the gateway and switch off their telemetry, updates and other traffic, and every proxy set to
the gateway's proxy trap so nothing can leave loopback unnoticed."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

__all__ = [
    "CLAUDE_VERSION",
    "CODEX_VERSION",
    "RUN_TIMEOUT",
    "Run",
    "base_env",
    "claude_binary",
    "claude_env",
    "codex_binary",
    "codex_config",
    "run_cli",
]

PACKAGES = Path(__file__).parent / "node_modules"
CLAUDE_VERSION = "2.1.332"
CODEX_VERSION = "0.171.0"
# One CLI run; each answers in a second or two against the gateway.
RUN_TIMEOUT = 45.0
PROVISION = "run `bash tests/provision.sh` (it runs `npm ci` in tests/agents)"

_ARCH = {"x86_64": "x64", "amd64": "x64", "aarch64": "arm64", "arm64": "arm64"}
_CODEX_TRIPLE = {"x64": "x86_64-unknown-linux-musl", "arm64": "aarch64-unknown-linux-musl"}


@dataclass
class Run:
    """One finished CLI run."""

    args: list[str]
    returncode: int
    stdout: str
    stderr: str
    seconds: float

    def events(self) -> list[dict[str, Any]]:
        """The JSON lines the CLI printed (its ``stream-json`` or ``--json`` events)."""
        return [json.loads(line) for line in self.stdout.splitlines() if line.startswith("{")]

    def describe(self) -> str:
        return (
            f"$ {' '.join(self.args[:3])} ... exited {self.returncode} in {self.seconds:.1f}s\n"
            f"stdout:\n{self.stdout[-6000:]}\nstderr:\n{self.stderr[-6000:]}"
        )


def _native(path: Path, name: str, version: str, package: str) -> Path:
    """The CLI's native binary (an optional dependency), checked to run offline and to be the
    pinned version; a missing or broken one fails the test with what to run."""
    if not path.is_file() or not os.access(path, os.X_OK):
        pytest.fail(f"{name} {version} ({package}) is not installed at {path}: {PROVISION}")
    try:
        with tempfile.TemporaryDirectory() as scratch:
            out = subprocess.run(
                [str(path), "--version"],
                capture_output=True,
                text=True,
                timeout=20,
                env={"PATH": "/usr/bin:/bin", "HOME": scratch},
                check=False,
            )
    except OSError as exc:
        pytest.fail(f"{name} at {path} does not run ({exc}): {PROVISION}")
    if version not in out.stdout:
        pytest.fail(f"{name} at {path} is not {version} ({out.stdout!r}): {PROVISION}")
    return path


def _arch() -> str:
    machine = platform.machine().lower()
    if platform.system() != "Linux" or machine not in _ARCH:
        pytest.fail(f"the agent tests run on Linux x64 or arm64, not {platform.platform()}")
    return _ARCH[machine]


def claude_binary() -> Path:
    """Claude Code's native binary from ``@anthropic-ai/claude-code-linux-<arch>``."""
    package = f"@anthropic-ai/claude-code-linux-{_arch()}"
    return _native(PACKAGES / package / "claude", "Claude Code", CLAUDE_VERSION, package)


def codex_binary() -> Path:
    """Codex CLI's native binary from ``@openai/codex-linux-<arch>``."""
    arch = _arch()
    package = f"@openai/codex-linux-{arch}"
    path = PACKAGES / package / "vendor" / _CODEX_TRIPLE[arch] / "bin" / "codex"
    return _native(path, "Codex CLI", CODEX_VERSION, package)


def base_env(home: Path, proxy: str) -> dict[str, str]:
    """What every CLI run gets: nothing inherited, a temporary HOME, and every proxy variable
    pointing at ``proxy`` except for loopback."""
    env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": str(home),
        "SHELL": "/bin/bash",
        "LANG": "C.UTF-8",
        "TERM": "dumb",
        "NO_COLOR": "1",
        "TMPDIR": str(home),
        "XDG_CONFIG_HOME": str(home / ".config"),
        "XDG_CACHE_HOME": str(home / ".cache"),
        "XDG_DATA_HOME": str(home / ".local" / "share"),
        "XDG_STATE_HOME": str(home / ".local" / "state"),
    }
    for name in ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY"):
        env[name] = env[name.lower()] = proxy
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    return env


def claude_env(
    home: Path, proxy: str, *, origin: str, model: str, auth_token: str = "", api_key: str = ""
) -> dict[str, str]:
    """Claude Code pointed at the gateway at ``origin``, every model it might pick mapped to
    ``model``, no retries, with its telemetry, error reports, updates and nonessential traffic
    off."""
    env = base_env(home, proxy)
    env["ANTHROPIC_BASE_URL"] = origin
    if auth_token:
        env["ANTHROPIC_AUTH_TOKEN"] = auth_token
    if api_key:
        env["ANTHROPIC_API_KEY"] = api_key
    # A failed request fails the run at once, with the gateway's error, instead of retrying
    # for minutes.
    env["CLAUDE_CODE_MAX_RETRIES"] = "0"
    for name in (
        "ANTHROPIC_MODEL",
        "ANTHROPIC_SMALL_FAST_MODEL",
        "ANTHROPIC_DEFAULT_HAIKU_MODEL",
        "ANTHROPIC_DEFAULT_SONNET_MODEL",
        "ANTHROPIC_DEFAULT_OPUS_MODEL",
    ):
        env[name] = model
    for name in (
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC",
        "DISABLE_TELEMETRY",
        "DISABLE_ERROR_REPORTING",
        "DISABLE_AUTOUPDATER",
        "DISABLE_UPDATES",
        "DISABLE_BUG_COMMAND",
        "DISABLE_FEEDBACK_COMMAND",
        "DISABLE_GROWTHBOOK",
        "DISABLE_INSTALLATION_CHECKS",
        "CLAUDE_CODE_DISABLE_FEEDBACK_SURVEY",
        "CLAUDE_CODE_DISABLE_FEATURE_FLAGS",
        "CLAUDE_CODE_DISABLE_TERMINAL_TITLE",
    ):
        env[name] = "1"
    return env


def codex_config(*, base_url: str, model: str, env_key: str, websockets: bool = False) -> str:
    """A Codex ``config.toml``: the gateway as provider ``leap`` (Responses wire API, no
    retries) and the analytics, feedback, update check, OpenTelemetry export and plugin
    features switched off (``--strict-config`` checks every key)."""
    provider: dict[str, Any] = {
        "name": "leap",
        "base_url": base_url,
        "wire_api": "responses",
        "env_key": env_key,
        "request_max_retries": 0,
        "stream_max_retries": 0,
    }
    if websockets:
        provider["supports_websockets"] = True
    lines = [
        f"model = {json.dumps(model)}",
        'model_provider = "leap"',
        "check_for_update_on_startup = false",
        "",
        "[model_providers.leap]",
        *(f"{key} = {json.dumps(value)}" for key, value in provider.items()),
        "",
        "[analytics]",
        "enabled = false",
        "",
        "[feedback]",
        "enabled = false",
        "",
        "[otel]",
        'exporter = "none"',
        'trace_exporter = "none"',
        "log_user_prompt = false",
        "",
        "[features]",
        *(
            f"{feature} = false"
            for feature in ("plugins", "remote_plugin", "plugin_sharing", "apps", "tool_suggest")
        ),
    ]
    return "\n".join(lines) + "\n"


def run_cli(args: list[str], *, env: dict[str, str], cwd: Path) -> Run:
    """Run a CLI to its end (no stdin), within ``RUN_TIMEOUT``; a hang fails the test with its
    output so far."""
    started = time.monotonic()
    try:
        done = subprocess.run(
            args,
            env=env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else exc.stdout or ""
        err = exc.stderr.decode() if isinstance(exc.stderr, bytes) else exc.stderr or ""
        pytest.fail(f"{args[0]} did not finish in {RUN_TIMEOUT}s\nstdout:\n{out}\nstderr:\n{err}")
    return Run(args, done.returncode, done.stdout, done.stderr, time.monotonic() - started)
