"""What every protocol endpoint besides chat shares: the outcome recorded once, the access
check, the size-capped body, a disconnect cancelling the request, and errors in the protocol's
own shape, never a traceback."""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

from starlette.types import Receive, Scope, Send

from ..config import CACHEABLE_ROUTES
from ..exceptions import InvalidRequestError, LeapError
from ..hedging import hedge_header
from ..outcome import Outcome
from ..sessions import session_header
from ._cache import CacheStep
from ._http import ClientGone, header_int, read_body, send_error

if TYPE_CHECKING:
    from ..gateway import GatewayCore

__all__ = ["ErrorSender", "ProtocolEndpoint", "json_object"]

logger = logging.getLogger("leapasgi.access")

_T = TypeVar("_T")
# Answers an error in a protocol's shape: (send, error, outcome).
ErrorSender = Callable[[Send, LeapError, Outcome], Awaitable[None]]


class ProtocolEndpoint:
    """An ASGI endpoint; subclasses implement ``handle`` for a request whose body was read."""

    send_error: ErrorSender = staticmethod(send_error)
    # The GenAI operation (``gen_ai.operation.name``) and the API it is asked through
    # (``leap.api``), for traces, metrics and the access log.
    operation = "chat"
    api = "chat_completions"

    def __init__(self, gateway: GatewayCore, *, route: str | None = None) -> None:
        self.gateway = gateway
        self.manager = gateway.manager
        self.recorder = gateway.recorder
        self.identity = gateway.tenancy.identity
        self.max_body = gateway.config.server.max_body_bytes
        self.keepalive = gateway.config.server.keepalive_interval
        # Headers naming a client's session, read only when sticky routing is on somewhere;
        # x-leap-hedge, read only when hedging is configured.
        self.session_headers = gateway.session_headers
        self.hedge_header = gateway.config.routing.hedge_after is not None
        # x-leap-priority, read only when some provider's requests can wait in line.
        self.priority_header = any(p.max_in_flight for p in gateway.config.providers)
        # The response cache before ``handle``, on a cacheable ``route`` (the path this
        # endpoint serves) while the cache is on; None costs nothing.
        cache = gateway.cache
        self.cache: CacheStep | None = None
        if cache is not None and route is not None and route in CACHEABLE_ROUTES:
            self.cache = CacheStep(cache, route, gateway.config.routing.request_timeout)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        with Outcome(self.operation, api=self.api, sink=self.recorder) as outcome:
            if self.recorder.tracing is not None:
                self.recorder.tracing.begin(outcome, scope)
            try:
                await self._serve(scope, receive, send, outcome)
            except Exception:
                logger.exception("unhandled error in the %s endpoint", type(self).__name__)
                error = LeapError("The gateway failed unexpectedly", code="internal_error")
                outcome.failed(error)
                # If the response had begun, nothing more can be said to this client.
                with contextlib.suppress(RuntimeError, OSError):
                    await self.send_error(send, error, outcome)

    async def _serve(self, scope: Scope, receive: Receive, send: Send, outcome: Outcome) -> None:
        identity = self.identity
        tenant = identity.quick(scope) if identity.open else None
        if tenant is None:
            try:
                tenant = await identity.identify(scope)
            except LeapError as refused:
                await self.send_error(send, refused, outcome)
                return
        outcome.tenant = tenant
        if self.session_headers:
            outcome.session = session_header(scope, self.session_headers)
        if self.hedge_header:
            outcome.hedge = hedge_header(scope)
        if self.priority_header:
            outcome.priority = tenant.policy.priority_for(header_int(scope, b"x-leap-priority"))
        try:
            body = await read_body(receive, scope, self.max_body)
        except ClientGone:
            outcome.gone = True
            return
        except LeapError as error:
            await self.send_error(send, error, outcome)
            return
        if self.cache is not None:
            await self.cache.serve(scope, receive, send, body, outcome, self.answer)
            return
        await self.answer(scope, receive, send, body, outcome)

    async def answer(
        self, scope: Scope, receive: Receive, send: Send, body: bytes, outcome: Outcome
    ) -> None:
        """``handle``, with a LeapError raised before the response began answered."""
        try:
            await self.handle(scope, receive, send, body, outcome)
        except LeapError as error:
            await self.send_error(send, error, outcome)

    async def handle(
        self, scope: Scope, receive: Receive, send: Send, body: bytes, outcome: Outcome
    ) -> None:
        """Serve one request; a LeapError raised before the response began is answered."""
        raise NotImplementedError


def json_object(body: bytes) -> dict[str, Any]:
    """The body as a JSON object; a 400 when it is not one."""
    try:
        data = json.loads(body)
    except ValueError:
        raise InvalidRequestError(
            "The request body is not valid JSON", code="invalid_json"
        ) from None
    if not isinstance(data, dict):
        raise InvalidRequestError("The request body must be a JSON object")
    return data
