"""Claude Code 2.1.332 (the npm package, its native binary) completing prompts through the
gateway's Messages front door: a plain prompt over the mock provider, and a tool loop (Bash)
translated to a scripted OpenAI-compatible chat upstream, with either auth header."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.agents.clis import Run, claude_binary, claude_env, run_cli
from tests.agents.harness import (
    GATEWAY_KEY,
    AgentGateway,
    agent_gateway,
    mock_provider,
    scripted_provider,
)
from tests.agents.scripted_upstream import (
    FINAL_PREFIX,
    TOOL_CALL_ID,
    ScriptedUpstream,
    call_id,
    marker_loop,
)

AUTHS = ("auth_token", "api_key")


def claude(
    live: AgentGateway,
    prompt: str,
    *,
    home: Path,
    work: Path,
    auth: str = "auth_token",
    model: str = "mock-chat",
    key: str = GATEWAY_KEY,
) -> Run:
    """``claude -p`` against the gateway, streaming JSON out, Bash allowed without asking."""
    credentials = {"auth_token": key} if auth == "auth_token" else {"api_key": key}
    env = claude_env(home, live.trap.url, origin=live.origin, model=model, **credentials)
    args = [
        str(claude_binary()),
        "-p",
        prompt,
        "--model",
        model,
        "--output-format",
        "stream-json",
        "--verbose",
        "--allowedTools",
        "Bash",
        "--no-session-persistence",
    ]
    return run_cli(args, env=env, cwd=work)


def result_of(run: Run) -> dict[str, Any]:
    results = [event for event in run.events() if event.get("type") == "result"]
    assert results, run.describe()
    return results[-1]


def assert_sent_messages(live: AgentGateway, auth: str) -> None:
    """Every request went to ``POST /v1/messages?beta=true`` with the auth header ``auth``
    makes, and the gateway answered each with 200 and an SSE stream."""
    for record in live.assert_requests("http", "POST", "/v1/messages", 200):
        assert record.query == "beta=true", live.report()
        assert record.headers.get("anthropic-version") == "2023-06-01"
        assert record.headers.get("x-app") == "cli"
        assert json.loads(record.body)["stream"] is True
        assert record.answer.startswith(b"event: message_start"), live.report()
        assert b"event: message_stop" in record.answer, live.report()
        if auth == "auth_token":
            assert record.headers.get("authorization") == f"Bearer {GATEWAY_KEY}"
            assert "x-api-key" not in record.headers
        else:
            assert record.headers.get("x-api-key") == GATEWAY_KEY
            assert "authorization" not in record.headers
    assert live.trap.attempts == [], live.trap.attempts
    # Counted once each, as answered: no error, no client gone (499).
    answered = len(live.records)
    assert live.recorded(answered) == ({"200": answered}, {}), live.report()


@pytest.mark.parametrize("auth", AUTHS)
def test_plain_prompt_over_the_mock(auth: str, home: Path, work: Path) -> None:
    with agent_gateway(mock_provider) as live:
        run = claude(live, "hello leap gateway", home=home, work=work, auth=auth)
        assert run.returncode == 0, live.report(run)
        result = result_of(run)
        assert result["subtype"] == "success"
        assert result["is_error"] is False
        assert result["result"].startswith("You said:")
        assert "hello leap gateway" in result["result"]
        assert_sent_messages(live, auth)


@pytest.mark.parametrize("auth", AUTHS)
def test_tool_loop_through_a_translated_upstream(auth: str, home: Path, work: Path) -> None:
    marker, upstream = marker_loop()
    with agent_gateway(scripted_provider, upstreams=[upstream]) as live:
        prompt = "Write the marker file with Bash, then report."
        run = claude(live, prompt, home=home, work=work, auth=auth, model=upstream.model)
        report = live.report(run)
        assert run.returncode == 0, report
        result = result_of(run)
        assert result["is_error"] is False, report
        assert result["result"] == f"{FINAL_PREFIX}{marker}", report
        assert result["num_turns"] == 2, report
        # The tool really ran, in the working directory.
        assert (work / "marker.txt").read_text().strip() == marker
        # The model's call and the tool's output went through the gateway and back upstream.
        calls = [
            block
            for event in run.events()
            if event.get("type") == "assistant"
            for block in event["message"]["content"]
            if block.get("type") == "tool_use"
        ]
        assert [(c["name"], c["id"]) for c in calls] == [("Bash", TOOL_CALL_ID)], report
        upstream.assert_output_returned("Bash", marker, report)
        assert_sent_messages(live, auth)


def test_a_wrong_key_is_refused(home: Path, work: Path) -> None:
    with agent_gateway(mock_provider) as live:
        run = claude(live, "hello", home=home, work=work, auth="api_key", key="wrong")
        assert run.returncode != 0, run.describe()
        result = result_of(run)
        assert result["is_error"] is True
        assert (result["api_error_status"], result["api_error_type"]) == (
            401,
            "authentication_error",
        ), run.describe()
        assert live.records, live.report()
        assert {record.status for record in live.records} == {401}, live.report()
        assert live.mock().requests == []


def test_parallel_tool_calls(home: Path, work: Path) -> None:
    """Two Bash calls in one assistant message: both run, both results go back in order."""
    upstream = ScriptedUpstream("echo ONE > one.txt && cat one.txt", "echo TWO > two.txt")
    with agent_gateway(scripted_provider, upstreams=[upstream]) as live:
        prompt = "Write both files with Bash, then report."
        run = claude(live, prompt, home=home, work=work, auth="auth_token", model=upstream.model)
        report = live.report(run)
        assert run.returncode == 0, report
        assert result_of(run)["result"].startswith(f"{FINAL_PREFIX}ONE | "), report
        assert (work / "one.txt").read_text() == "ONE\n"
        assert (work / "two.txt").read_text() == "TWO\n"
        turns = upstream.tool_turns("Bash")
        assert len(turns) == 2, report
        ids = [result["tool_call_id"] for result in turns[1].tool_results]
        assert ids == [call_id(0), call_id(1)], report
        assert_sent_messages(live, "auth_token")
