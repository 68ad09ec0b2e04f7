"""``POST /v1/embeddings``: routed by model like chat, with failover, to the providers that
serve embeddings; the answer passes through as the upstream gave it."""

from __future__ import annotations

from starlette.types import Receive, Scope, Send

from ..native import NativeCall, NativeReply, ProtocolRequest, WireProtocol
from ..outcome import Outcome
from ..types.embeddings import parse_embedding_request
from ._endpoint import ProtocolEndpoint
from ._http import outcome_headers, send_response
from .relay import guarded

__all__ = ["EmbeddingsEndpoint"]


class EmbeddingsEndpoint(ProtocolEndpoint):
    """The embeddings endpoint of one gateway."""

    operation = api = "embeddings"

    async def handle(
        self, scope: Scope, receive: Receive, send: Send, body: bytes, outcome: Outcome
    ) -> None:
        request = parse_embedding_request(body)
        call = NativeCall(
            WireProtocol.EMBEDDINGS, request.model_dump(mode="json", exclude_unset=True)
        )
        answer = await guarded(
            self.manager.exchange(ProtocolRequest(call), outcome=outcome), receive, outcome
        )
        if answer is None:
            return
        assert isinstance(answer, NativeReply)  # embeddings are never translated
        await send_response(send, 200, answer.raw, headers=outcome_headers(outcome))
        outcome.sent = True
