from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """The CLI's HOME, empty."""
    path = tmp_path / "home"
    path.mkdir()
    return path


@pytest.fixture
def work(tmp_path: Path) -> Path:
    """The directory the CLI runs in, where its tools write."""
    path = tmp_path / "work"
    path.mkdir()
    return path
