"""Row 24, soak (CI variant): 10 s at a steady rate through ``leapasgi serve``, 70% plain and
30% streaming; the full 60 s run is ``python benchmarks/soak.py``."""

from __future__ import annotations

from benchmarks.soak import MAX_RSS_DRIFT_MB, run_soak
from tests.reliability.harness import Figures

ROW = "24"
SECONDS = 10.0
RATE = 50.0
# The 60 s run measures drift after 10 s; in 10 s the warm-up is the first 3.
WARMUP = 3.0


def test_soak_ten_seconds_leaves_no_error_drift_fd_or_task_behind(figures: Figures) -> None:
    result = run_soak(seconds=SECONDS, rate=RATE, warmup=WARMUP)
    before, after = result.fds_before, result.fds_after
    assert before is not None
    assert after is not None
    label = f"CI {SECONDS:g} s at {RATE:g}/s"
    figures.record(
        ROW,
        f"{label}: errors",
        f"{result.errors} of {result.requests} ({result.streams} streaming)",
        passed=result.errors == 0,
        target="0",
    )
    figures.record(
        ROW,
        f"{label}: RSS drift after {WARMUP:g} s (MB)",
        round(result.rss_drift_mb, 2),
        passed=result.rss_drift_mb <= MAX_RSS_DRIFT_MB,
        target=f"<= {MAX_RSS_DRIFT_MB:g} MB",
    )
    figures.record(
        ROW,
        f"{label}: fds before -> after (idle upstream keep-alive aside)",
        f"{before.own} -> {after.own}",
        passed=after.own <= before.own and after.clients == 0,
        target="back to baseline",
    )
    figures.record(
        ROW,
        f"{label}: asyncio tasks before -> after (peak)",
        f"{result.tasks_before} -> {result.tasks_after} ({result.tasks_peak})",
        passed=result.tasks_after <= result.tasks_before,
        target="back to baseline",
    )
    assert result.passed, [c for c in result.checks if not c.passed]
