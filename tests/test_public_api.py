from __future__ import annotations

import importlib
import subprocess
import sys
from types import ModuleType

import pytest

import leapasgi
import leapmcp

MODULES = [
    "leapasgi",
    "leapasgi.asgi",
    "leapasgi.exceptions",
    "leapasgi.providers",
    "leapasgi.types",
    "leapmcp",
]


@pytest.mark.parametrize("name", MODULES)
def test_all_is_sorted_and_lists_exactly_the_public_names(name: str) -> None:
    module = importlib.import_module(name)
    exported = list(module.__all__)
    for public in exported:
        getattr(module, public)  # leapasgi imports its names on first use
    # isort-style order, as ruff keeps it: constants first, then classes, then functions.
    assert exported == sorted(exported, key=lambda n: (not n.isupper(), n[:1].islower(), n))
    public = {
        n
        for n, value in vars(module).items()
        if not n.startswith("_")
        and not isinstance(value, ModuleType)
        and n not in {"annotations", "TYPE_CHECKING"}
        and getattr(value, "__module__", name).startswith(name.split(".")[0])
    }
    assert public - {"__version__"} <= set(exported)
    assert set(exported) - {"__version__"} <= set(vars(module))


def test_every_exported_name_resolves() -> None:
    for name in leapasgi.__all__:
        assert getattr(leapasgi, name) is not None


def test_the_version_is_the_package_version() -> None:
    from importlib.metadata import version

    assert leapasgi.__version__ == version("leapasgi")


def test_the_console_scripts_run() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "leapasgi", "presets"], capture_output=True, text=True, check=True
    )
    assert "groq" in out.stdout
    assert "https://api.groq.com/openai/v1" in out.stdout
    # Each preset's parameter rules, by the models they hold for.
    reasoning = "params (o1*, o3*, o4*, gpt-5*): rename max_tokens -> max_completion_tokens"
    assert reasoning in out.stdout
    assert "params (every model): tool_choice as a string" in out.stdout
    out = subprocess.run(
        [sys.executable, "-m", "leapmcp", "--help"], capture_output=True, text=True, check=True
    )
    assert "--http" in out.stdout
    assert "build_server" in leapmcp.__all__


def test_importing_the_package_loads_nothing_heavy() -> None:
    heavy = "('aiohttp', 'starlette', 'pydantic')"
    code = f"import sys, leapasgi; print(sorted(m for m in {heavy} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
