"""``POST /v1/chat/completions``: JSON, or SSE when the body says ``"stream": true``.

A plain ASGI callable, because this is the hot path: the body is read with a size cap, parsed
once, and handed to the manager; a client that goes away cancels the upstream call at once.
"""

from __future__ import annotations

import asyncio
import logging

from starlette.types import Receive, Scope, Send

from ..exceptions import LeapError
from ..outcome import Outcome
from ..types import ChatCompletionRequest, parse_chat_request
from ._endpoint import ProtocolEndpoint
from ._http import outcome_headers, send_error, send_response
from .relay import CHAT_ENCODER, DisconnectGuard, SSERelay

__all__ = ["ChatEndpoint"]

logger = logging.getLogger("leapasgi.access")


class ChatEndpoint(ProtocolEndpoint):
    """The chat completions endpoint of one gateway: ``ProtocolEndpoint``'s access check,
    body, cache step, outcome and errors; the body is parsed once, straight into the
    request model."""

    async def handle(
        self, scope: Scope, receive: Receive, send: Send, body: bytes, outcome: Outcome
    ) -> None:
        """Parse the body and answer it: JSON, or SSE."""
        request = parse_chat_request(body)
        if request.stream:
            stream = self.manager.stream(request, outcome=outcome)
            await SSERelay(stream, self.keepalive, receive, send, CHAT_ENCODER).run()
        else:
            await self._complete(request, outcome, receive, send)

    async def _complete(
        self, request: ChatCompletionRequest, outcome: Outcome, receive: Receive, send: Send
    ) -> None:
        guard = DisconnectGuard(receive)
        try:
            completion = await self.manager.chat(request, outcome=outcome)
        except LeapError as error:
            guard.close()
            await send_error(send, error, outcome)
            return
        except asyncio.CancelledError:
            if not guard.absorb():
                raise
            outcome.gone = True
            return
        finally:
            guard.close()
        await send_response(send, 200, completion.to_wire_json(), headers=outcome_headers(outcome))
        outcome.sent = True
