"""Claude Code's own Messages requests, as recorded (its headers, ``?beta=true``, tools,
system reminders and parallel tool results), streamed through the gateway over the mock and a
translated chat upstream."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from tests.asgi.live_server import CLIENT_TIMEOUT, LiveGateway, Serve
from tests.asgi.messages_support import translated
from tests.asgi.sdk_wire import sse_events
from tests.fake_upstream import Behavior, FakeUpstream, text_stream

pytestmark = pytest.mark.anyio

CLAUDE_CODE_HEADERS = {
    "anthropic-version": "2023-06-01",
    "anthropic-beta": (
        "claude-code-20250219,interleaved-thinking-2025-05-14,unknown-beta-2099-12-31"
    ),
    "anthropic-dangerous-direct-browser-access": "true",
    "x-app": "cli",
    "X-Claude-Code-Session-Id": "9f1c2d3e-0000-4000-8000-000000000001",
    "X-Stainless-Lang": "js",
    "X-Stainless-Retry-Count": "0",
    "Accept-Encoding": "gzip, deflate, br, zstd",
    "Authorization": "Bearer cc-token",
}
TOOL_NAMES = ["Bash", "Glob", "Grep", "Read", "Edit", "Write", "WebFetch", "TodoWrite"]


def claude_code_tools() -> list[dict[str, Any]]:
    tools: list[dict[str, Any]] = [
        {
            "name": name,
            "description": f"The {name} tool",
            "input_schema": {
                "type": "object",
                "properties": {"argument": {"type": "string", "description": "what to do"}},
                "required": ["argument"],
                "additionalProperties": False,
                "$schema": "http://json-schema.org/draft-07/schema#",
            },
        }
        for name in TOOL_NAMES
    ]
    tools[6]["defer_loading"] = True
    return tools


def claude_code_body(messages: list[dict[str, Any]], model: str) -> dict[str, Any]:
    return {
        "model": model,
        "max_tokens": 128000,
        "stream": True,
        "system": [
            {"type": "text", "text": "You are Claude Code, Anthropic's official CLI."},
            {
                "type": "text",
                "text": "You are an interactive CLI tool that helps with software tasks.",
                "cache_control": {"type": "ephemeral"},
            },
        ],
        "messages": messages,
        "tools": claude_code_tools(),
        "metadata": {
            "user_id": json.dumps(
                {"device_id": "d" * 64, "account_uuid": "", "session_id": "9f1c2d3e"}
            )
        },
        "thinking": {"type": "adaptive"},
        "context_management": {"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]},
        "output_config": {"effort": "medium"},
    }


REMINDER = {"role": "system", "content": "<system-reminder>Stay on task.</system-reminder>"}


def claude_code_turn(prompt: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": [{"type": "text", "text": prompt}]}, REMINDER]


def claude_code_tool_loop(prompt: str) -> list[dict[str, Any]]:
    """The turn after 8 parallel tool calls: the calls as they came, then their results."""
    calls = [
        {"type": "tool_use", "id": f"toolu_{i:02d}", "name": name, "input": {"argument": str(i)}}
        for i, name in enumerate(TOOL_NAMES)
    ]
    results: list[dict[str, Any]] = [
        {"type": "tool_result", "tool_use_id": f"toolu_{i:02d}", "content": f"result {i}"}
        for i in range(len(TOOL_NAMES))
    ]
    results[3]["is_error"] = True
    results[-1]["cache_control"] = {"type": "ephemeral"}
    return [
        *claude_code_turn(prompt),
        {"role": "assistant", "content": [{"type": "text", "text": "Looking."}, *calls]},
        {"role": "user", "content": results},
    ]


async def claude_code_request(
    live: LiveGateway, messages: list[dict[str, Any]], *, model: str = "m1"
) -> tuple[httpx.Response, list[tuple[str | None, Any]]]:
    """One Claude Code turn: its headers, ``?beta=true``, streamed; the response and events."""
    async with (
        httpx.AsyncClient(base_url=live.origin, timeout=CLIENT_TIMEOUT) as http,
        http.stream(
            "POST",
            "/v1/messages",
            params={"beta": "true"},
            json=claude_code_body(messages, model),
            headers=CLAUDE_CODE_HEADERS,
        ) as response,
    ):
        lines = [line async for line in response.aiter_lines()]
    return response, sse_events(lines)


def assert_message_stream(events: list[tuple[str | None, Any]]) -> str:
    """The Messages event sequence Claude Code needs; the stop reason it ended with."""
    names = [name for name, _ in events]
    assert all(name == data["type"] for name, data in events)
    assert names[0] == "message_start"
    assert names[-2:] == ["message_delta", "message_stop"]
    assert names.count("message_start") == names.count("message_stop") == 1
    open_blocks: set[int] = set()
    for name, data in events:
        if name == "content_block_start":
            assert data["index"] not in open_blocks
            open_blocks.add(data["index"])
        elif name == "content_block_delta":
            assert data["index"] in open_blocks
        elif name == "content_block_stop":
            open_blocks.remove(data["index"])
    assert not open_blocks
    reason = events[-2][1]["delta"]["stop_reason"]
    assert isinstance(reason, str)
    return reason


async def test_claude_code_over_the_mock(serve: Serve) -> None:
    live = serve()
    prompt = "Read main.py, then fix it"
    first, events = await claude_code_request(live, claude_code_turn(prompt), model="mock-chat")
    loop, loop_events = await claude_code_request(
        live, claude_code_tool_loop(prompt), model="mock-chat"
    )
    assert first.status_code == loop.status_code == 200
    assert first.headers["content-type"].startswith("text/event-stream")
    assert assert_message_stream(events) == "tool_use"
    [call] = [d["content_block"] for n, d in events if n == "content_block_start"]
    assert call["type"] == "tool_use"
    assert call["name"] == "Read"
    partial = "".join(d["delta"]["partial_json"] for n, d in events if n == "content_block_delta")
    assert set(json.loads(partial)) == {"argument"}
    assert assert_message_stream(loop_events) == "end_turn"
    text = "".join(d["delta"].get("text", "") for n, d in loop_events if n == "content_block_delta")
    assert text == "The tool returned: result 7"
    turn, tool_loop = live.mock().requests
    assert [m.role for m in turn.messages] == ["system", "user", "system"]
    assert [m.role for m in tool_loop.messages] == [
        "system",
        "user",
        "system",
        "assistant",
        *["tool"] * 8,
    ]
    assert tool_loop.max_completion_tokens == 128000


async def test_claude_code_over_a_translated_upstream(serve: Serve) -> None:
    fake = FakeUpstream(default=Behavior(events=text_stream(["Do", "ne"])))
    live = serve(lambda ups: [translated("up", ups[0])], upstreams=[fake])
    response, events = await claude_code_request(live, claude_code_turn("Fix the bug"))
    loop, loop_events = await claude_code_request(live, claude_code_tool_loop("Fix the bug"))
    assert response.status_code == loop.status_code == 200
    for stream in (events, loop_events):
        assert assert_message_stream(stream) == "end_turn"
    turn, tool_loop = (seen.json for seen in fake.chat_requests)
    system, user, reminder = turn["messages"]
    assert system["role"] == "system"
    assert "Claude Code" in system["content"]
    assert user == {"role": "user", "content": "Fix the bug"}
    # The reminder keeps its meaning: a system message after the user's, not a user turn.
    assert reminder == {"role": "system", "content": REMINDER["content"]}
    roles = [m["role"] for m in tool_loop["messages"]]
    assert roles == ["system", "user", "system", "assistant", *["tool"] * 8]
    assistant = tool_loop["messages"][3]
    assert [c["id"] for c in assistant["tool_calls"]] == [f"toolu_{i:02d}" for i in range(8)]
    tools = tool_loop["messages"][4:]
    assert [t["tool_call_id"] for t in tools] == [f"toolu_{i:02d}" for i in range(8)]
    assert tools[3]["content"] == "Error: result 3"
    assert [t["function"]["name"] for t in tool_loop["tools"]] == TOOL_NAMES
    assert tool_loop["stream"] is True
    for seen in fake.chat_requests:
        headers = {name.lower() for name in seen.headers}
        assert not headers & {"x-app", "x-claude-code-session-id", "anthropic-beta"}
        assert seen.headers["Authorization"] == "Bearer up-key"
