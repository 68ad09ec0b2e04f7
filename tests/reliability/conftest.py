"""Fixtures of the reliability suite: the figures each scenario measured.

Every scenario records what it measured with ``figures.record(row, name, value, passed)``. The
session writes them all to ``build/reliability-figures.json`` when it ends (``LEAP_FIGURES=path``
picks another file), and ``python -m tests.reliability.report`` turns them into RELIABILITY.md.
"""

from __future__ import annotations

import gc
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import pytest

from tests.reliability.harness import Figures

_FIGURES = Figures()
DEFAULT_FIGURES = Path(__file__).resolve().parents[2] / "build" / "reliability-figures.json"


@pytest.fixture
def figures() -> Figures:
    return _FIGURES


@pytest.fixture(autouse=True)
def _short_gc_pauses() -> None:
    """The live rows run client, gateway and upstreams in this one process, and time them. By
    the time they run, the whole suite's leftovers sit in its heap; a full collection walking
    them stalls every server thread at once (a least-latency router then sees its fast
    upstreams slow down together). Collected and frozen first, they are never walked again."""
    gc.collect()
    gc.freeze()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if not _FIGURES.rows:
        return
    path = Path(os.environ.get("LEAP_FIGURES") or DEFAULT_FIGURES)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}",
        "rows": _FIGURES.rows,
    }
    path.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
