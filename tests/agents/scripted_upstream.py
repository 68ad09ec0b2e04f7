"""An OpenAI-compatible chat upstream on 127.0.0.1 that plays one tool loop for a coding agent.

Each chat request is answered from what it carries: a conversation ending in tool results
gets the final text ``done: <tool outputs>``; one offering a shell tool this upstream knows
(Claude Code's ``Bash``, Codex CLI's ``exec_command`` or ``shell``) gets one call to it per
command, all in one message (parallel calls when there are several); anything else (a side
request without tools) gets plain text. Answers stream as chat chunks when asked to, and every
request is recorded.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from tests.fake_upstream import chunk, completion, model_list, sse

__all__ = [
    "FINAL_PREFIX",
    "SIDE_REPLY",
    "TOOL_CALL_ID",
    "ScriptedUpstream",
    "ToolLoopSeen",
    "call_id",
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


class ScriptedUpstream:
    """An aiohttp server answering chat completions for a tool loop; an async context."""

    def __init__(self, *commands: str, model: str = MODEL) -> None:
        self.commands = commands
        self.model = model
        self.seen: list[ToolLoopSeen] = []
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def __aenter__(self) -> ScriptedUpstream:
        app = web.Application()
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/v1/chat/completions", self._chat)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()

    async def _models(self, request: web.Request) -> web.Response:
        return web.json_response(model_list([self.model]))

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        delta, finish = self._answer(body)
        self.seen.append(ToolLoopSeen(request.path, dict(request.headers), body, json.dumps(delta)))
        if not body.get("stream"):
            return web.json_response(_completion(delta, finish, body["model"]))
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for event in _chunks(delta, finish, body):
            await response.write(event)
        await response.write_eof()
        return response

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
