"""Codex CLI's HTTP shape through the gateway's Responses front door, live: its recorded
request (the whole history, every tool kind, nothing stored) over the mock, a chat upstream and
a Responses upstream, hanging up right after ``response.completed`` as Codex does."""

from __future__ import annotations

import json
from typing import Any

import httpx
import openai
import pytest

from tests.asgi.codex_requests import (
    CODEX_HEADERS,
    CODEX_INSTRUCTIONS,
    CODEX_TOOLS,
    PLAN_TOOL,
    SEARCH_TOOL,
    SHELL_TOOL,
    codex_body,
)
from tests.asgi.live_server import LiveGateway, Serve
from tests.asgi.responses_support import (
    TERMINAL,
    assert_stream_rules,
    chat_upstreams,
    native_upstreams,
)
from tests.asgi.sdk_wire import iter_sse
from tests.fake_responses import text_stream as native_stream
from tests.fake_upstream import Behavior, FakeUpstream, chunk, sse

# The roles of the chat messages ``codex_body``'s input becomes.
CHAT_ROLES = ["developer", "user", "user", "assistant", "tool", "assistant", "user"]


def codex_turn(
    live: LiveGateway, body: dict[str, Any]
) -> tuple[list[tuple[str | None, dict[str, Any]]], httpx.Headers]:
    """One Codex turn over HTTP: read up to ``response.completed``, then hang up at once, as
    Codex does."""
    events: list[tuple[str | None, dict[str, Any]]] = []
    with (
        httpx.Client(base_url=live.base_url, timeout=10.0) as http,
        http.stream("POST", "/responses", json=body, headers=CODEX_HEADERS) as response,
    ):
        assert response.status_code == 200, response.read()
        headers = response.headers
        for name, data in iter_sse(response.iter_lines()):
            events.append((name, data))
            if name in TERMINAL:
                break
    return events, headers


def requests_recorded(live: LiveGateway, count: int) -> list[dict[str, str]]:
    """The requests /metrics counts, once ``count`` are; none counted as an error."""
    recorded = live.requests_recorded(count)
    assert live.errors_recorded() == []
    return recorded


def test_codex_over_the_mock(serve: Serve) -> None:
    live = serve()
    events, headers = codex_turn(live, codex_body("mock-chat", "Use search_docs for install"))
    assert headers["x-leap-provider"] == "mock"
    data = [event for _, event in events]
    assert_stream_rules(data)
    final = data[-1]["response"]
    assert final["status"] == "completed"
    assert final["store"] is False
    [call] = final["output"]
    assert call["type"] == "function_call"
    assert call["name"] == "search_docs"
    assert call["namespace"] == "mcp__docs"
    assert set(json.loads(call["arguments"])) == {"query"}
    request = live.mock().requests[-1].model_dump(exclude_none=True)
    assert [t["function"]["name"] for t in request["tools"]] == [
        "shell",
        "update_plan",
        "search_docs",
    ]
    assert [m["role"] for m in request["messages"]] == CHAT_ROLES
    assert request["messages"][0]["content"] == CODEX_INSTRUCTIONS
    [recorded] = requests_recorded(live, 1)
    assert recorded["status"] == "200"
    assert recorded["stream"] == "true"
    # Nothing is stored: Codex sends the whole history every turn.
    with live.client() as client, pytest.raises(openai.NotFoundError):
        client.responses.retrieve(final["id"])


def test_codex_over_a_chat_upstream(serve: Serve) -> None:
    call = chunk(
        {
            "role": "assistant",
            "tool_calls": [
                {
                    "index": 0,
                    "id": "call_up_1",
                    "type": "function",
                    "function": {"name": "search_docs", "arguments": ""},
                }
            ],
        }
    )
    arguments = chunk(
        {"tool_calls": [{"index": 0, "function": {"arguments": '{"query":"install"}'}}]}
    )
    fake = FakeUpstream(
        default=Behavior(events=sse(call, arguments, chunk({}, finish="tool_calls")))
    )
    live = serve(chat_upstreams, upstreams=[fake])
    events, _ = codex_turn(live, codex_body("m1", "How do I install it?"))
    data = [event for _, event in events]
    assert_stream_rules(data)
    final = data[-1]["response"]
    [item] = final["output"]
    assert item["type"] == "function_call"
    assert (item["name"], item["namespace"], item["call_id"]) == (
        "search_docs",
        "mcp__docs",
        "call_up_1",
    )
    assert item["arguments"] == '{"query":"install"}'
    [seen] = fake.chat_requests
    sent = seen.json
    assert [tool["type"] for tool in sent["tools"]] == ["function"] * 3
    assert [tool["function"] for tool in sent["tools"]] == [
        {key: tool[key] for key in ("name", "description", "parameters", "strict")}
        for tool in (SHELL_TOOL, PLAN_TOOL, SEARCH_TOOL)
    ]
    assert "web_search" not in json.dumps(sent["tools"])
    assert sent["tool_choice"] == "auto"
    assert sent["parallel_tool_calls"] is True
    assert sent["stream"] is True
    messages = sent["messages"]
    assert [m["role"] for m in messages] == CHAT_ROLES
    assert messages[3]["tool_calls"] == [
        {
            "id": "call_ls_1",
            "type": "function",
            "function": {"name": "shell", "arguments": '{"command":["ls"]}'},
        }
    ]
    assert messages[4] == {"role": "tool", "tool_call_id": "call_ls_1", "content": "README.md\nsrc"}
    assert seen.headers["Authorization"] == "Bearer up-key"
    [recorded] = requests_recorded(live, 1)
    assert (recorded["status"], recorded["provider"]) == ("200", "up0")


def test_codex_leaving_after_completed_is_not_an_error(serve: Serve) -> None:
    """The upstream keeps its connection open after ``response.completed``; Codex hangs up
    right after that event. The request counts as answered (200), not as a client gone (499),
    and a stored turn is still kept."""
    fake = FakeUpstream()
    fake.push(
        Behavior(events=native_stream(["Done."], response_id="resp_codex_1"), then="hang"),
        Behavior(events=native_stream(["Kept."], response_id="resp_codex_2"), then="hang"),
    )
    live = serve(native_upstreams, upstreams=[fake])
    body = codex_body("m1", "Summarize the README.")
    events, _ = codex_turn(live, body)
    stored_events, _ = codex_turn(live, {**body, "store": True})
    assert events[-1][0] == "response.completed"
    assert stored_events[-1][1]["response"]["id"] == "resp_codex_2"
    recorded = requests_recorded(live, 2)
    assert [(r["status"], r["stream"], r["provider"]) for r in recorded] == [
        ("200", "true", "up0")
    ] * 2
    sent = fake.seen[0].json
    assert sent == {**body, "model": "m1"}
    assert sent["tools"] == CODEX_TOOLS
    with live.client(api_key="codex-key") as client:
        assert client.responses.retrieve("resp_codex_2").output_text == "Kept."
        with pytest.raises(openai.NotFoundError):
            client.responses.retrieve("resp_codex_1")
