"""A batch line answered as its endpoint answers an interactive request: the same parsing, the
same dispatcher call, the same answer bytes (a Responses line is kept for
``previous_response_id`` like any response). Used by the batch executor, which records the
answer instead of sending it."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from ..batches import LineHandler
from ..native import NativeCall, NativeReply, ProtocolRequest, WireProtocol
from ..outcome import Outcome
from ..protocols.responses import response_from_chat
from ..types import parse_chat_request
from ..types.embeddings import parse_embedding_request
from .responses import prepare_turn

if TYPE_CHECKING:
    from ..gateway import GatewayCore

__all__ = ["line_handlers"]


def line_handlers(gateway: GatewayCore) -> dict[str, LineHandler]:
    """The handler of each endpoint a batch may call."""
    manager = gateway.manager
    store = gateway.response_store

    async def chat(body: dict[str, Any], outcome: Outcome, owner: str | None) -> bytes:
        completion = await manager.chat(parse_chat_request(body), outcome=outcome)
        return completion.to_wire_json()

    async def embeddings(body: dict[str, Any], outcome: Outcome, owner: str | None) -> bytes:
        request = parse_embedding_request(body)
        call = NativeCall(
            WireProtocol.EMBEDDINGS, request.model_dump(mode="json", exclude_unset=True)
        )
        answer = await manager.exchange(ProtocolRequest(call), outcome=outcome)
        assert isinstance(answer, NativeReply)  # embeddings are never translated
        return answer.raw

    async def responses(body: dict[str, Any], outcome: Outcome, owner: str | None) -> bytes:
        turn = await prepare_turn(body, owner=owner, stores=[store], stream=False)
        answer = await manager.exchange(turn.exchange, outcome=outcome)
        if isinstance(answer, NativeReply):
            response, raw = answer.data, answer.raw
        else:
            response = response_from_chat(
                answer, turn.request, response_id=turn.response_id, created_at=turn.created_at
            )
            raw = json.dumps(response, separators=(",", ":")).encode()
        if turn.request.store is not False:
            await store.put(turn.stored(response, answer_bytes=len(raw)))
        return raw

    return {
        "/v1/chat/completions": chat,
        "/v1/responses": responses,
        "/v1/embeddings": embeddings,
    }
