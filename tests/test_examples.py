from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def test_the_quickstart_answers_through_the_mock_provider_without_keys() -> None:
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
    env.pop("LEAP_PRESET", None)
    out = subprocess.run(
        [sys.executable, str(EXAMPLES / "quickstart.py")],
        capture_output=True,
        text=True,
        check=True,
        env=env,
        timeout=60,
    )
    assert "chat: You said: What is an LLM gateway?" in out.stdout
    assert "stream: You said: Stream me a short answer." in out.stdout
    assert "tool call: get_weather({'city':" in out.stdout
    assert out.stderr == ""
