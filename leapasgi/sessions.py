"""What makes requests one session, for sticky routing: a provider's prompt cache only pays
off when a conversation's turns reach the same provider.

In order: a session header (``x-session-id``, Claude Code's ``X-Claude-Code-Session-Id``), the
``user`` field (Anthropic's ``metadata.user_id``), else a digest of the system prompt and the
first turn, which every later turn of the conversation repeats (a Responses chain rebuilt from
``previous_response_id`` included). Every session key is a digest: a client's text never
becomes a key in a shared store as it is.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

from .native import ProtocolRequest, WireProtocol
from .types import ChatCompletionRequest

__all__ = ["request_session", "session_header"]

# The most of a header's value that counts; session ids are short.
_MAX_HEADER = 256


def _digest(kind: str, value: str | bytes) -> str:
    data = value.encode("utf-8", "surrogatepass") if isinstance(value, str) else value
    return kind + hashlib.blake2b(data, digest_size=16).hexdigest()


def session_header(scope: Mapping[str, Any], names: Sequence[bytes]) -> str | None:
    """The session a request's headers name (the first of ``names`` present), as a digest."""
    for name, value in scope["headers"]:
        if name in names and value:
            return _digest("h", bytes(value)[:_MAX_HEADER])
    return None


def request_session(request: ChatCompletionRequest | ProtocolRequest) -> str | None:
    """The session a request's body implies: its user, else its system prompt and first
    turn; None when it has neither (an embedding, an empty conversation)."""
    if isinstance(request, ChatCompletionRequest):
        if request.user:
            return _digest("u", request.user)
        system = [m.content for m in request.messages if m.role in ("system", "developer")]
        first = next((m.content for m in request.messages if m.role == "user"), None)
        if first is None:
            return None
        return _digest("p", _canonical([system, first]))
    body = request.native.body
    protocol = request.native.protocol
    if protocol is WireProtocol.MESSAGES:
        metadata = body.get("metadata")
        user = metadata.get("user_id") if isinstance(metadata, dict) else None
        if isinstance(user, str) and user:
            return _digest("u", user)
        messages = body.get("messages")
        first = messages[0] if isinstance(messages, list) and messages else None
        return None if first is None else _digest("p", _canonical([body.get("system"), first]))
    if protocol is WireProtocol.RESPONSES:
        user = body.get("user") or body.get("safety_identifier")
        if isinstance(user, str) and user:
            return _digest("u", user)
        items = body.get("input")
        first = items[0] if isinstance(items, list) and items else items
        if first is None:
            return None
        return _digest("p", _canonical([body.get("instructions"), first]))
    return None


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=_plain)


def _plain(value: Any) -> Any:
    dump = getattr(value, "model_dump", None)
    return dump(mode="json") if dump is not None else str(value)
