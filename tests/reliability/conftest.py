"""Fixtures of the reliability suite: the figures each scenario measured.

Every scenario records what it measured with ``figures.record(row, name, value, passed)``. With
``LEAP_FIGURES=path`` set, the session writes them all to that JSON file when it ends, and
``python -m tests.reliability.report path`` turns them into RELIABILITY.md.
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import pytest

from tests.reliability.harness import Figures

_FIGURES = Figures()


@pytest.fixture
def figures() -> Figures:
    return _FIGURES


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    path = os.environ.get("LEAP_FIGURES")
    if not path or not _FIGURES.rows:
        return
    payload: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}",
        "rows": _FIGURES.rows,
    }
    Path(path).write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
