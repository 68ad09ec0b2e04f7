"""Codex CLI 0.171.0 (the npm package, its native binary) completing prompts through the
gateway's Responses front door, over HTTP (SSE) and in WebSocket mode: a plain prompt over the
mock provider, and a tool loop (``exec_command``) translated to a scripted OpenAI-compatible
chat upstream."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.agents.clis import Run, codex_binary, codex_config, run_cli
from tests.agents.clis import base_env as cli_env
from tests.agents.harness import (
    GATEWAY_KEY,
    AgentGateway,
    agent_gateway,
    mock_provider,
    scripted_provider,
)
from tests.agents.scripted_upstream import FINAL_PREFIX, ScriptedUpstream, call_id, marker_loop

ENV_KEY = "LEAP_GATEWAY_KEY"


def codex(
    live: AgentGateway,
    prompt: str,
    *,
    home: Path,
    work: Path,
    model: str,
    websockets: bool = False,
    key: str = GATEWAY_KEY,
) -> Run:
    """``codex exec`` against the gateway as provider ``leap``: JSONL events out, commands run
    in the workspace-write sandbox without asking, nothing kept after the run."""
    codex_home = home / ".codex"
    codex_home.mkdir(exist_ok=True)
    config = codex_config(
        base_url=f"{live.origin}/v1", model=model, env_key=ENV_KEY, websockets=websockets
    )
    (codex_home / "config.toml").write_text(config)
    env = cli_env(home, live.trap.url)
    env["CODEX_HOME"] = str(codex_home)
    env[ENV_KEY] = key
    args = [
        str(codex_binary()),
        "exec",
        "--strict-config",
        "--skip-git-repo-check",
        "--ephemeral",
        "--json",
        "--sandbox",
        "workspace-write",
        "--cd",
        str(work),
        prompt,
    ]
    return run_cli(args, env=env, cwd=work)


def items(run: Run, kind: str) -> list[dict[str, Any]]:
    """The completed items of one type (``agent_message``, ``command_execution``...)."""
    return [
        event["item"]
        for event in run.events()
        if event.get("type") == "item.completed" and event["item"].get("type") == kind
    ]


def text_of(content: Any) -> str:
    """The text of a message's content, a string or a list of text parts."""
    if isinstance(content, str):
        return content
    return "".join(part.get("text", "") for part in content)


def assert_sent_responses(live: AgentGateway) -> list[dict[str, Any]]:
    """Every request was ``POST /v1/responses`` with the gateway's key as a bearer token,
    streamed and not stored, and the gateway answered each with 200 and a completed stream;
    returns the bodies Codex sent."""
    bodies = []
    for record in live.assert_requests("http", "POST", "/v1/responses", 200):
        assert record.headers.get("authorization") == f"Bearer {GATEWAY_KEY}"
        assert record.headers.get("originator") == "codex_exec"
        body = json.loads(record.body)
        assert (body["stream"], body["store"]) == (True, False)
        assert "previous_response_id" not in body
        assert b"event: response.completed" in record.answer, live.report()
        bodies.append(body)
    assert live.trap.attempts == [], live.trap.attempts
    # Codex closes each stream right after response.completed: still counted as answered.
    assert live.recorded(len(bodies)) == ({"200": len(bodies)}, {}), live.report()
    return bodies


MARKER_PROMPT = "Write the marker file with a shell command, then report."


def assert_marker_written(run: Run, marker: str, work: Path, report: str) -> None:
    """Codex ran the upstream's one command, which wrote ``marker`` in the working directory,
    and reported its output."""
    (command,) = items(run, "command_execution")
    assert marker in command["aggregated_output"], report
    assert command["exit_code"] == 0, report
    (message,) = items(run, "agent_message")
    assert message["text"].startswith(FINAL_PREFIX), report
    assert marker in message["text"], report
    # The tool really ran, in the working directory.
    assert (work / "marker.txt").read_text().strip() == marker


def test_plain_prompt_over_the_mock(home: Path, work: Path) -> None:
    with agent_gateway(mock_provider) as live:
        run = codex(live, "hello leap gateway", home=home, work=work, model="mock-chat")
        assert run.returncode == 0, live.report(run)
        (message,) = items(run, "agent_message")
        assert message["text"] == "You said: hello leap gateway"
        assert_sent_responses(live)


def test_tool_loop_through_a_translated_upstream(home: Path, work: Path) -> None:
    marker, upstream = marker_loop()
    with agent_gateway(scripted_provider, upstreams=[upstream]) as live:
        run = codex(live, MARKER_PROMPT, home=home, work=work, model=upstream.model)
        report = live.report(run)
        assert run.returncode == 0, report
        assert_marker_written(run, marker, work, report)
        # The call and its output went through the gateway and back upstream.
        upstream.assert_output_returned("exec_command", marker, report)
        # Over HTTP, the whole history every turn: the call and its output came back last.
        first, second = assert_sent_responses(live)
        assert second["input"][: len(first["input"])] == first["input"], report
        kinds = [item.get("type") for item in second["input"][len(first["input"]) :]]
        assert kinds == ["function_call", "function_call_output"], report


def frames(live: AgentGateway, direction: str) -> list[dict[str, Any]]:
    """The frames Codex sent over its WebSockets (``in``: its ``response.create`` frames and
    any other) or the gateway sent back (``out``)."""
    return [
        json.loads(text)
        for record in live.records
        for way, text in record.frames
        if way == direction
    ]


def assert_websocket_mode(live: AgentGateway, run: Run) -> list[dict[str, Any]]:
    """Codex talked to the gateway only over ``GET /v1/responses`` upgraded to a WebSocket (no
    fallback to HTTP), authenticated, with its beta header; returns the frames it sent."""
    report = live.report(run)
    fallbacks = [e for e in items(run, "error") if "WebSocket" in e.get("message", "")]
    assert fallbacks == [], report
    for record in live.assert_requests("websocket", "GET", "/v1/responses", 101, report):
        assert record.headers.get("authorization") == f"Bearer {GATEWAY_KEY}"
        assert record.headers.get("openai-beta", "").startswith("responses_websockets=")
    sent = frames(live, "in")
    assert sent, report
    assert {frame["type"] for frame in sent} == {"response.create"}, report
    answered = frames(live, "out")
    completed = [e["response"]["id"] for e in answered if e["type"] == "response.completed"]
    assert len(completed) == len(sent), report
    # Each response.create after the first is chained to the response before it.
    chain = [frame.get("previous_response_id") for frame in sent]
    assert chain == [None, *completed[:-1]], report
    assert live.trap.attempts == [], live.trap.attempts
    # Each response.create is one request in the metrics, the warmup included.
    assert live.recorded(len(sent)) == ({"200": len(sent)}, {}), report
    return sent


def test_plain_prompt_over_the_mock_in_websocket_mode(home: Path, work: Path) -> None:
    with agent_gateway(mock_provider) as live:
        run = codex(
            live, "hello leap gateway", home=home, work=work, model="mock-chat", websockets=True
        )
        assert run.returncode == 0, live.report(run)
        sent = assert_websocket_mode(live, run)
        (message,) = items(run, "agent_message")
        assert message["text"] == "You said: hello leap gateway"
        # A warmup (generate: false) first, then the turn chained to it with only new items.
        warmup, turn = sent
        assert warmup.get("generate") is False, sent
        assert turn["previous_response_id"], sent
        assert [item.get("role") for item in turn["input"]][-1] == "user", sent


def test_tool_loop_in_websocket_mode(home: Path, work: Path) -> None:
    marker, upstream = marker_loop()
    with agent_gateway(scripted_provider, upstreams=[upstream]) as live:
        model = upstream.model
        run = codex(live, MARKER_PROMPT, home=home, work=work, model=model, websockets=True)
        report = live.report(run)
        assert run.returncode == 0, report
        sent = assert_websocket_mode(live, run)
        assert_marker_written(run, marker, work, report)
        # The tool's output came back as the only new item, chained to the call's response;
        # the gateway rebuilt the whole history for the translated upstream.
        last = sent[-1]
        assert last["previous_response_id"], report
        assert [item["type"] for item in last["input"]] == ["function_call_output"], report
        turns = upstream.assert_output_returned("exec_command", marker, report)
        # The warmup's input (the base instructions) reached the model on every turn.
        (instructions,) = sent[0]["input"]
        for seen in turns:
            first = seen.body["messages"][0]
            assert first["role"] == instructions["role"], report
            assert text_of(first["content"]) == text_of(instructions["content"]), report


@pytest.mark.parametrize("websockets", [False, True], ids=["http", "websocket"])
def test_parallel_tool_calls(websockets: bool, home: Path, work: Path) -> None:
    """Two exec_command calls in one response: both run, both outputs go back (over a
    WebSocket as the only new items of the next response.create)."""
    upstream = ScriptedUpstream("echo ONE > one.txt && cat one.txt", "echo TWO > two.txt")
    with agent_gateway(scripted_provider, upstreams=[upstream]) as live:
        run = codex(
            live,
            "Write both files with shell commands, then report.",
            home=home,
            work=work,
            model=upstream.model,
            websockets=websockets,
        )
        report = live.report(run)
        assert run.returncode == 0, report
        assert len(items(run, "command_execution")) == 2, report
        (message,) = items(run, "agent_message")
        assert message["text"].startswith(FINAL_PREFIX), report
        assert (work / "one.txt").read_text() == "ONE\n"
        assert (work / "two.txt").read_text() == "TWO\n"
        turns = upstream.tool_turns("exec_command")
        assert len(turns) == 2, report
        ids = sorted(result["tool_call_id"] for result in turns[1].tool_results)
        assert ids == [call_id(0), call_id(1)], report
        if websockets:
            last = assert_websocket_mode(live, run)[-1]
            assert [item["type"] for item in last["input"]] == ["function_call_output"] * 2
        else:
            assert_sent_responses(live)


@pytest.mark.parametrize("websockets", [False, True], ids=["http", "websocket"])
def test_a_wrong_key_is_refused(websockets: bool, home: Path, work: Path) -> None:
    with agent_gateway(mock_provider) as live:
        run = codex(
            live, "hello", home=home, work=work, model="mock-chat", websockets=websockets, key="no"
        )
        assert run.returncode != 0, run.describe()
        (failed,) = [event for event in run.events() if event.get("type") == "turn.failed"]
        assert "401" in failed["error"]["message"], run.describe()
        assert live.records, live.report()
        assert {record.status for record in live.records} == {401}, live.report()
        # Refused at the WebSocket handshake with the OpenAI error body, then over HTTP.
        kinds = {record.kind for record in live.records}
        assert kinds == ({"websocket", "http"} if websockets else {"http"}), live.report()
        for record in live.records:
            assert json.loads(record.answer)["error"]["code"] == "invalid_api_key"
        assert live.mock().requests == []
