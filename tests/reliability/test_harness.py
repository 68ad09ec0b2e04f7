"""The suite's setup works: U1-U3 behind a live gateway, and the figures report."""

from __future__ import annotations

import json
from pathlib import Path

from tests.fake_upstream import Behavior, completion
from tests.reliability.harness import Figures, reliability_gateway
from tests.reliability.report import ROWS, render


def test_three_upstreams_behind_a_live_gateway_with_their_own_keys() -> None:
    with reliability_gateway() as live:
        for fake in live.upstreams:
            fake.default = Behavior(json_body=completion("fine"))
        reply = live.client().chat.completions.create(
            model="m1", messages=[{"role": "user", "content": "hi"}]
        )
        seen = [s for fake in live.upstreams for s in fake.chat_requests]
    assert reply.choices[0].message.content == "fine"
    assert len(seen) == 1
    assert seen[0].headers["Authorization"].startswith("Bearer sk-rel-u")


def test_the_report_shows_every_row_and_what_was_measured(tmp_path: Path) -> None:
    figures = Figures()
    figures.record("1", "client errors", 0, passed=True)
    figures.record("3", "hangs", 1, passed=False)
    text = render({"date": "today", "machine": "here", "rows": figures.rows})
    assert all(f"| {row} |" in text for row in ROWS)
    assert "client errors: 0 | pass |" in text
    assert "hangs: 1 | FAIL |" in text
    assert "| not run | not run |" in text
    assert json.loads(json.dumps(figures.rows)) == figures.rows
