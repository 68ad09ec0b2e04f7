"""Codex CLI's Responses requests as recorded (0.171.0): its base instructions, every tool
kind it sends, its headers, and one turn's body carrying the whole history, nothing stored."""

from __future__ import annotations

from typing import Any

from tests.asgi.responses_support import user

__all__ = [
    "CODEX_HEADERS",
    "CODEX_INSTRUCTIONS",
    "CODEX_TOOLS",
    "PLAN_TOOL",
    "SEARCH_TOOL",
    "SESSION",
    "SHELL_TOOL",
    "codex_body",
]

CODEX_INSTRUCTIONS = "You are Codex, a coding agent running in a terminal.\n" + (
    "Follow the repository's conventions; keep changes small and explain them.\n" * 400
)
SHELL_TOOL: Any = {
    "type": "function",
    "name": "shell",
    "description": "Runs a shell command and returns its output.",
    "strict": False,
    "parameters": {
        "type": "object",
        "properties": {
            "command": {"type": "array", "items": {"type": "string"}},
            "workdir": {"type": "string"},
            "timeout_ms": {"type": "number"},
        },
        "required": ["command"],
        "additionalProperties": False,
    },
}
PLAN_TOOL: Any = {
    "type": "function",
    "name": "update_plan",
    "description": "Updates the task plan.",
    "strict": False,
    "parameters": {
        "type": "object",
        "properties": {"plan": {"type": "array", "items": {"type": "string"}}},
        "required": ["plan"],
        "additionalProperties": False,
    },
}
SEARCH_TOOL: Any = {
    "type": "function",
    "name": "search_docs",
    "description": "Searches the project documentation.",
    "strict": False,
    "parameters": {
        "type": "object",
        "properties": {"query": {"type": "string"}},
        "required": ["query"],
        "additionalProperties": False,
    },
}
CODEX_TOOLS: Any = [
    SHELL_TOOL,
    PLAN_TOOL,
    {
        "type": "namespace",
        "name": "mcp__docs",
        "description": "Tools of the docs MCP server.",
        "tools": [SEARCH_TOOL],
    },
    {"type": "web_search", "external_web_access": False},
]
SESSION = "0199c1d2-7a4e-7d31-9b2f-5c0e4a6f8b13"
CODEX_HEADERS = {
    "Accept": "text/event-stream",
    "Authorization": "Bearer codex-key",
    "originator": "codex_exec",
    "session-id": SESSION,
    "thread-id": SESSION,
    "x-client-request-id": SESSION,
    "x-codex-turn-metadata": '{"turn_id":"1"}',
    "User-Agent": "codex_exec/0.171.0 (Linux; x86_64)",
}


def codex_body(model: str, prompt: str) -> dict[str, Any]:
    """A Codex CLI turn: the whole history, every tool kind it sends, nothing stored."""
    return {
        "model": model,
        "input": [
            {
                "type": "message",
                "role": "developer",
                "content": [{"type": "input_text", "text": CODEX_INSTRUCTIONS}],
            },
            user("<environment_context><cwd>/work/app</cwd></environment_context>"),
            user("List the files."),
            {
                "type": "reasoning",
                "summary": [],
                "encrypted_content": "gAAAAABpZ3-earlier-reasoning==",
            },
            {
                "type": "function_call",
                "name": "shell",
                "arguments": '{"command":["ls"]}',
                "call_id": "call_ls_1",
            },
            {"type": "function_call_output", "call_id": "call_ls_1", "output": "README.md\nsrc"},
            {
                "type": "message",
                "role": "assistant",
                "content": [{"type": "output_text", "text": "Two entries: README.md, src."}],
            },
            user(prompt),
        ],
        "tools": CODEX_TOOLS,
        "tool_choice": "auto",
        "parallel_tool_calls": True,
        "reasoning": {"summary": "auto"},
        "store": False,
        "stream": True,
        "include": ["reasoning.encrypted_content"],
        "prompt_cache_key": SESSION,
        "client_metadata": {"session_id": SESSION},
    }
