"""Native Responses API answers for a fake upstream: Response objects and their SSE event
streams, shaped as OpenAI's API sends them (fields the openai SDK's types read included).

``response_body`` is a whole answer for ``Behavior(json_body=...)`` (or ``raw_body`` with
``encode``); ``ResponseEvents`` numbers the events of one stream for ``Behavior(events=...)``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

__all__ = [
    "ResponseEvents",
    "encode",
    "failed_stream",
    "message_item",
    "output_text",
    "reasoning_item",
    "response_body",
    "response_object",
    "text_stream",
    "usage",
]

CREATED_AT = 1_765_000_000


def encode(body: Any) -> bytes:
    """JSON as the upstream writes it (compact), for ``raw_body`` and byte comparisons."""
    return json.dumps(body, separators=(",", ":")).encode()


def usage(input_tokens: int = 12, output_tokens: int = 3) -> dict[str, Any]:
    """A Response's ``usage``."""
    return {
        "input_tokens": input_tokens,
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens": output_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": input_tokens + output_tokens,
    }


def output_text(text: str) -> dict[str, Any]:
    """An ``output_text`` content part."""
    return {"type": "output_text", "annotations": [], "logprobs": [], "text": text}


def message_item(
    text: str | None, *, item_id: str = "msg_up_1", status: str = "completed"
) -> dict[str, Any]:
    """An assistant message output item (``text`` None: no content yet)."""
    return {
        "id": item_id,
        "type": "message",
        "status": status,
        "content": [] if text is None else [output_text(text)],
        "role": "assistant",
    }


def reasoning_item(item_id: str = "rs_up_1") -> dict[str, Any]:
    """A reasoning item with encrypted content, as ``include: ["reasoning.encrypted_content"]``
    returns it."""
    return {
        "id": item_id,
        "type": "reasoning",
        "encrypted_content": "gAAAAABpZ3-opaque-reasoning-state==",
        "summary": [],
    }


def response_object(
    output: list[dict[str, Any]],
    *,
    response_id: str = "resp_up_1",
    model: str = "m1",
    status: str = "completed",
    error: dict[str, Any] | None = None,
    answer_usage: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A Response object as OpenAI returns it (in progress: no usage, no completion time)."""
    finished = status not in ("in_progress", "queued")
    return {
        "id": response_id,
        "object": "response",
        "created_at": CREATED_AT,
        "status": status,
        "background": False,
        "billing": {"payer": "developer"},
        "completed_at": CREATED_AT + 1 if status == "completed" else None,
        "error": error,
        "incomplete_details": None,
        "instructions": None,
        "max_output_tokens": None,
        "max_tool_calls": None,
        "model": model,
        "output": output,
        "parallel_tool_calls": True,
        "previous_response_id": None,
        "prompt_cache_key": None,
        "prompt_cache_retention": None,
        "reasoning": {"effort": "medium", "summary": None},
        "safety_identifier": None,
        "service_tier": "default",
        "store": True,
        "temperature": 1.0,
        "text": {"format": {"type": "text"}, "verbosity": "medium"},
        "tool_choice": "auto",
        "tools": [],
        "top_logprobs": 0,
        "top_p": 1.0,
        "truncation": "disabled",
        "usage": (answer_usage or usage()) if finished and status != "failed" else None,
        "user": None,
        "metadata": {},
    }


def response_body(
    text: str, *, response_id: str = "resp_up_1", model: str = "m1", reasoning: bool = False
) -> dict[str, Any]:
    """A completed Response answering ``text`` (after a reasoning item, if asked)."""
    output = [reasoning_item()] if reasoning else []
    output.append(message_item(text))
    return response_object(output, response_id=response_id, model=model)


class ResponseEvents:
    """The events of one Responses stream, numbered from 0, each as an SSE frame
    (``event:`` and ``data:`` lines, as OpenAI writes them)."""

    def __init__(self, *, response_id: str = "resp_up_1", model: str = "m1") -> None:
        self.response_id = response_id
        self.model = model
        self.frames: list[bytes] = []
        self._output: list[dict[str, Any]] = []

    def add(self, kind: str, **fields: Any) -> ResponseEvents:
        """One event of type ``kind``."""
        data = {"type": kind, "sequence_number": len(self.frames), **fields}
        self.frames.append(f"event: {kind}\ndata: ".encode() + encode(data) + b"\n\n")
        return self

    def response(self, status: str, **options: Any) -> dict[str, Any]:
        """The Response object as it stands, with ``status``."""
        output = list(self._output) if status != "in_progress" else []
        return response_object(
            output, response_id=self.response_id, model=self.model, status=status, **options
        )

    def preamble(self) -> ResponseEvents:
        """``response.created`` and ``response.in_progress``."""
        started = self.response("in_progress")
        self.add("response.created", response=started)
        return self.add("response.in_progress", response=started)

    def reasoning(self, item_id: str = "rs_up_1") -> ResponseEvents:
        """A whole reasoning item (added and done)."""
        index = len(self._output)
        item = reasoning_item(item_id)
        self.add("response.output_item.added", output_index=index, item=item)
        self._output.append(item)
        return self.add("response.output_item.done", output_index=index, item=item)

    def text_open(self, pieces: Iterable[str], *, item_id: str = "msg_up_1") -> ResponseEvents:
        """A message item opened and its text deltas, left unfinished."""
        index = len(self._output)
        self.add(
            "response.output_item.added",
            output_index=index,
            item=message_item(None, item_id=item_id, status="in_progress"),
        )
        place = {"item_id": item_id, "output_index": index, "content_index": 0}
        self.add("response.content_part.added", **place, part=output_text(""))
        for piece in pieces:
            self.add("response.output_text.delta", **place, delta=piece, logprobs=[])
        return self

    def text(self, pieces: Iterable[str], *, item_id: str = "msg_up_1") -> ResponseEvents:
        """A whole message item: added, its part, the deltas, then everything done."""
        pieces = list(pieces)
        text = "".join(pieces)
        index = len(self._output)
        self.text_open(pieces, item_id=item_id)
        place = {"item_id": item_id, "output_index": index, "content_index": 0}
        self.add("response.output_text.done", **place, text=text, logprobs=[])
        self.add("response.content_part.done", **place, part=output_text(text))
        item = message_item(text, item_id=item_id)
        self._output.append(item)
        return self.add("response.output_item.done", output_index=index, item=item)

    def completed(self, **options: Any) -> ResponseEvents:
        """``response.completed`` with the whole output and usage."""
        return self.add("response.completed", response=self.response("completed", **options))

    def failed(self, code: str, message: str) -> ResponseEvents:
        """``response.failed``: the response ended with ``error``."""
        error = {"code": code, "message": message}
        return self.add("response.failed", response=self.response("failed", error=error))

    def error(self, code: str, message: str, *, nested: bool = False) -> ResponseEvents:
        """An ``error`` event: the API reference's flat fields, or nested in ``error`` as the
        live API sends them."""
        if nested:
            inner = {"type": "insufficient_quota", "code": code, "message": message, "param": None}
            return self.add("error", error=inner)
        return self.add("error", code=code, message=message, param=None)


def text_stream(
    pieces: Iterable[str],
    *,
    response_id: str = "resp_up_1",
    model: str = "m1",
    reasoning: bool = False,
) -> list[bytes]:
    """A whole, well-formed Responses stream answering ``pieces``."""
    events = ResponseEvents(response_id=response_id, model=model).preamble()
    if reasoning:
        events.reasoning()
    return events.text(pieces).completed().frames


def failed_stream(kind: str, *, response_id: str = "resp_up_failed") -> list[bytes]:
    """A stream that fails on quota before any content: ``response.created``,
    ``response.in_progress`` then ``kind`` ("error", "error-nested" or "response.failed")."""
    events = ResponseEvents(response_id=response_id).preamble()
    message = "You exceeded your current quota, please check your plan and billing details."
    if kind == "response.failed":
        return events.failed("insufficient_quota", message).frames
    return events.error("insufficient_quota", message, nested=kind == "error-nested").frames
