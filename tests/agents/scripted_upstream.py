"""An OpenAI-compatible chat upstream on 127.0.0.1 that plays one tool loop for a coding agent:
a ``FakeUpstream`` that answers each chat request from what it carries.

A conversation ending in tool results gets the final text ``done: <tool outputs>``; one
offering a shell tool this upstream knows (Claude Code's ``Bash``, Codex CLI's
``exec_command`` or ``shell``) gets one call to it per command, all in one message (parallel
calls when there are several); anything else (a side request without tools) gets plain text.
Answers stream as chat chunks when asked to, and every chat request is recorded with its
answer.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tests.fake_upstream import Behavior, FakeUpstream, Seen, chunk, completion, sse

__all__ = [
    "FINAL_PREFIX",
    "SIDE_REPLY",
    "TOOL_CALL_ID",
    "ScriptedUpstream",
    "ToolLoopSeen",
    "call_id",
    "marker_loop",
]

FINAL_PREFIX = "done: "
SIDE_REPLY = "ok"
TOOL_CALL_ID = "call_leap_1"
MODEL = "agent-model"

# The arguments each known shell tool takes, for a shell command line.
_SHELL_TOOLS: dict[str, Callable[[str], dict[str, Any]]] = {
    "Bash": lambda command: {"command": command, "description": "Write the marker file"},
    "exec_command": lambda command: {"cmd": command},
    "shell": lambda command: {"command": ["bash", "-lc", command]},
}


@dataclass
class ToolLoopSeen:
    """One chat request as the upstream saw it, and what it answered."""

    path: str
    headers: dict[str, str]
    body: dict[str, Any]
    answer: str

    @property
    def tool_names(self) -> list[str]:
        return [tool["function"]["name"] for tool in self.body.get("tools") or ()]

    @property
    def tool_results(self) -> list[dict[str, Any]]:
        return [m for m in self.body.get("messages") or () if m.get("role") == "tool"]


class ScriptedUpstream(FakeUpstream):
    """A fake upstream answering chat completions for a tool loop; an async context."""

    def __init__(self, *commands: str, model: str = MODEL) -> None:
        super().__init__(models=[model])
        self.commands = commands
        self.model = model
        self.chats: list[ToolLoopSeen] = []

    def behavior_for(self, seen: Seen) -> Behavior:
        if not seen.path.endswith("/chat/completions"):
            return super().behavior_for(seen)
        body = seen.json
        delta, finish = self._answer(body)
        self.chats.append(ToolLoopSeen(seen.path, seen.headers, body, json.dumps(delta)))
        if not body.get("stream"):
            return Behavior(json_body=_completion(delta, finish, body["model"]))
        return Behavior(events=_chunks(delta, finish, body))

    def tool_turns(self, tool: str) -> list[ToolLoopSeen]:
        """The chat requests that offered ``tool``."""
        return [seen for seen in self.chats if tool in seen.tool_names]

    def assert_output_returned(self, tool: str, output: str, report: str) -> list[ToolLoopSeen]:
        """The loop took two turns offering ``tool``: none with a tool result in the first,
        the call's output (holding ``output``) the only one in the second; returns both."""
        turns = self.tool_turns(tool)
        assert len(turns) == 2, report
        assert turns[0].tool_results == [], report
        (result,) = turns[1].tool_results
        assert result["tool_call_id"] == TOOL_CALL_ID, report
        assert output in json.dumps(result["content"]), report
        return turns

    def _answer(self, body: dict[str, Any]) -> tuple[dict[str, Any], str]:
        """The assistant delta (the whole message) and finish reason for a chat request."""
        messages = list(body.get("messages") or ())
        results: list[str] = []
        while messages and messages[-1].get("role") == "tool":
            results.insert(0, _text(messages.pop()))
        if results:
            return {"role": "assistant", "content": FINAL_PREFIX + " | ".join(results)}, "stop"
        offered = {tool["function"]["name"] for tool in body.get("tools") or ()}
        for name, arguments in _SHELL_TOOLS.items():
            if name in offered:
                calls = [
                    {
                        "index": i,
                        "id": call_id(i),
                        "type": "function",
                        "function": {"name": name, "arguments": json.dumps(arguments(command))},
                    }
                    for i, command in enumerate(self.commands)
                ]
                return {"role": "assistant", "content": None, "tool_calls": calls}, "tool_calls"
        return {"role": "assistant", "content": SIDE_REPLY}, "stop"


def marker_loop() -> tuple[str, ScriptedUpstream]:
    """A fresh marker, and an upstream whose one tool call writes it to ``marker.txt`` in the
    working directory and reads it back."""
    marker = f"LEAP_MARKER_{secrets.token_hex(4)}"
    return marker, ScriptedUpstream(f"echo {marker} > marker.txt && cat marker.txt")


def call_id(index: int) -> str:
    """The id of the upstream's ``index``-th call in its message (``TOOL_CALL_ID`` first)."""
    return f"call_leap_{index + 1}"


def _text(message: dict[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return str(content or "").strip()


def _completion(delta: dict[str, Any], finish: str, model: str) -> Any:
    message = {k: v for k, v in delta.items() if k != "role"}
    for call in message.get("tool_calls") or ():
        call.pop("index", None)
    body = completion(message.pop("content"), model=model, message_extra=message)
    body["choices"][0]["finish_reason"] = finish
    return body


def _chunks(delta: dict[str, Any], finish: str, body: dict[str, Any]) -> list[bytes]:
    """The answer as a model streams it: role, the content or the call's head then its
    arguments, the finish reason, and usage when the request asked for it."""
    model = body["model"]
    payloads: list[Any] = []
    calls = delta.get("tool_calls")
    if calls:
        payloads.append(chunk({"role": "assistant", "content": None}, model=model))
        for call in calls:
            function = call["function"]
            head = {**call, "function": {"name": function["name"], "arguments": ""}}
            payloads.append(chunk({"tool_calls": [head]}, model=model))
            half = len(function["arguments"]) // 2
            for piece in (function["arguments"][:half], function["arguments"][half:]):
                fragment = {"index": call["index"], "function": {"arguments": piece}}
                payloads.append(chunk({"tool_calls": [fragment]}, model=model))
    else:
        payloads.append(chunk({"role": "assistant", "content": ""}, model=model))
        payloads.append(chunk({"content": delta["content"]}, model=model))
    payloads.append(chunk({}, finish=finish, model=model))
    if (body.get("stream_options") or {}).get("include_usage"):
        usage = {"prompt_tokens": 50, "completion_tokens": 10, "total_tokens": 60}
        payloads.append(chunk(model=model, usage=usage) | {"choices": []})
    return sse(*payloads)
