"""``POST /v1/chat/completions``: JSON, or SSE when the body says ``"stream": true``.

A plain ASGI callable, because this is the hot path: the body is read with a size cap, parsed
once, and handed to the manager; a client that goes away cancels the upstream call at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING

from starlette.types import Receive, Scope, Send

from ..exceptions import LeapError
from ..outcome import Outcome
from ..types import ChatCompletionRequest, parse_chat_request
from ._http import ClientGone, outcome_headers, read_body, send_error, send_response
from .relay import CHAT_ENCODER, DisconnectGuard, SSERelay

if TYPE_CHECKING:
    from ..gateway import GatewayCore

__all__ = ["ChatEndpoint"]

logger = logging.getLogger("leapasgi.access")


class ChatEndpoint:
    """The chat completions endpoint of one gateway. Each request's ``Outcome`` is recorded
    once, when the ``with`` block around it ends, whichever way it ended."""

    def __init__(self, gateway: GatewayCore) -> None:
        self._recorder = gateway.recorder
        self._manager = gateway.manager
        self._access = gateway.access
        self._max_body = gateway.config.server.max_body_bytes
        self._keepalive = gateway.config.server.keepalive_interval

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        with Outcome(sink=self._recorder) as outcome:
            try:
                await self._serve(scope, receive, send, outcome)
            except Exception:
                # Outside Starlette's middleware, so never a traceback to the client from here.
                logger.exception("unhandled error in the chat endpoint")
                # If the response had already begun, the server refuses a second start:
                # nothing more can be said to this client then.
                error = LeapError("The gateway failed unexpectedly", code="internal_error")
                outcome.failed(error)
                with contextlib.suppress(RuntimeError, OSError):
                    await send_error(send, error, outcome)

    async def _serve(self, scope: Scope, receive: Receive, send: Send, outcome: Outcome) -> None:
        refused = self._access.refusal(scope)
        if refused is not None:
            await send_error(send, refused, outcome)
            return
        try:
            body = await read_body(receive, scope, self._max_body)
            request = parse_chat_request(body)
        except ClientGone:
            outcome.gone = True
            return
        except LeapError as error:
            await send_error(send, error, outcome)
            return
        if request.stream:
            stream = self._manager.stream(request, outcome=outcome)
            await SSERelay(stream, self._keepalive, receive, send, CHAT_ENCODER).run()
        else:
            await self._complete(request, outcome, receive, send)

    async def _complete(
        self, request: ChatCompletionRequest, outcome: Outcome, receive: Receive, send: Send
    ) -> None:
        guard = DisconnectGuard(receive)
        try:
            completion = await self._manager.chat(request, outcome=outcome)
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
