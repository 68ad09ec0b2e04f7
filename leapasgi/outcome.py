"""The outcome of one request: the one record its metrics, access log line and headers all
come from, whichever front door it came through.

A front door opens it (``with recorder.outcome(...) as outcome:``), the dispatcher fills it in
(trail, usage, time to first token, the upstream's request id), the front door notes how the
answer ended (sent, failed, client gone), and leaving the ``with`` block records it, once.
"""

from __future__ import annotations

import re
import time
from random import getrandbits
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol

from .exceptions import LeapError
from .trail import RoutingTrail

if TYPE_CHECKING:
    from .native import ProtocolRequest
    from .state import Reservation
    from .tenants.ledger import Ticket
    from .tenants.policy import Tenant
    from .types import ChatCompletionRequest

__all__ = ["CLIENT_CLOSED", "Outcome", "OutcomeSink"]

# Status recorded for a request whose client went away before the answer (nginx's convention).
CLIENT_CLOSED = 499
# An upstream's x-request-id is passed on only when it is a plain token: it reaches response
# headers and log lines, so nothing that could split or forge either.
_REQUEST_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")


class OutcomeSink(Protocol):
    """Where finished outcomes go (metrics and the access log)."""

    def record(self, outcome: Outcome) -> None: ...


class Outcome:
    """What happened to one request. Use it as a context manager: leaving records it once.
    An exception on the way out that nothing noted yet ends it too: a LeapError as that
    error, a cancellation as the client being gone, anything else as a 500.

    ``request_id`` is fixed the first time it is read: the upstream's valid ``x-request-id``
    when one arrived by then, else the gateway's own; headers, the access log line, the trail
    and MCP results all show that one id.
    """

    __slots__ = (
        "_id",
        "_sink",
        "answered_by",
        "api",
        "cache",
        "cached_tokens",
        "completion_tokens",
        "cost_usd",
        "error",
        "first_token_at",
        "gone",
        "hedge",
        "model",
        "operation",
        "priority",
        "prompt_tokens",
        "request",
        "sent",
        "session",
        "span",
        "started",
        "stream",
        "tenancy",
        "tenant",
        "trail",
        "upstream_request_id",
        "usage_estimated",
    )

    def __init__(
        self,
        operation: str = "chat",
        *,
        api: str | None = None,
        sink: OutcomeSink | None = None,
        started: float = 0.0,
    ) -> None:
        # The GenAI operation ("chat", "embeddings") and the API it came through
        # ("chat_completions", "responses", "messages"; None: not said).
        self.operation = operation
        self.api = api
        self.started = started or time.perf_counter()
        self.trail = RoutingTrail()
        self.model: str | None = None
        self.stream = False
        # perf_counter time of the first streamed chunk handed on.
        self.first_token_at: float | None = None
        self.prompt_tokens = 0
        self.completion_tokens = 0
        # Prompt tokens read from the provider's cache (part of prompt_tokens), the cost in
        # USD (None: not known yet, or no price), and whether the tokens are an estimate.
        self.cached_tokens = 0
        self.cost_usd: float | None = None
        self.usage_estimated = False
        # Who made the request (None: tenancy not involved), and what its admission holds
        # until the request is accounted: (budget ticket, rate reservation).
        self.tenant: Tenant | None = None
        self.tenancy: tuple[Ticket | None, Reservation | None] | None = None
        # The request as the dispatcher took it (for usage estimates when no report came).
        self.request: ChatCompletionRequest | ProtocolRequest | None = None
        self.upstream_request_id: str | None = None
        # The client's word on hedging (x-leap-hedge): True, False, or None (the config's);
        # and its priority in providers' queues (x-leap-priority within its policy's bounds).
        self.hedge: bool | None = None
        self.priority = 0
        # The client's session (a session header's value), for sticky routing.
        self.session: str | None = None
        # What the response cache did: "hit", "miss" or "bypass"; None without a cache.
        self.cache: str | None = None
        # The hook that answered the request itself (None: a provider or the cache did);
        # such an answer is never cached.
        self.answered_by: str | None = None
        # How it ended: the error answered, the client gone, or the answer sent whole.
        self.error: LeapError | None = None
        self.gone = False
        self.sent = False
        # The request's OpenTelemetry span while it runs (None: not traced).
        self.span: Any = None
        self._id: str | None = None
        self._sink = sink

    @property
    def request_id(self) -> str:
        """The id of this request, fixed on first read."""
        rid = self._id
        if rid is None:
            upstream = self.upstream_request_id
            if upstream is not None and _REQUEST_ID.fullmatch(upstream):
                rid = upstream
            else:
                rid = f"req_{getrandbits(96):024x}"
            self._id = self.trail.request_id = rid
        return rid

    def settle(self) -> None:
        """Fix the request id now; the trail carries it from here on."""
        if self._id is None:
            self.request_id  # noqa: B018 (fixes the id)

    @property
    def status(self) -> int:
        """The HTTP status the request ended with: 499 when the client left first, the
        error's status, 200 once answered; 0 while it is still going."""
        if self.gone:
            return CLIENT_CLOSED
        if self.error is not None:
            return self.error.http_status
        return 200 if self.sent else 0

    @property
    def provider(self) -> str | None:
        """The provider that served the request, else the one its error came from."""
        served = self.trail.served_by
        if served is not None:
            return served.provider
        return self.error.provider if self.error is not None else None

    def failed(self, error: LeapError) -> None:
        """The request ended with ``error`` (its trail, when the dispatcher gave it one, is
        the request's)."""
        self.error = error
        if error.trail is not None and error.trail is not self.trail:
            self.trail = error.trail
        if self.upstream_request_id is None:
            self.upstream_request_id = error.request_id

    def overhead(self) -> float:
        """Seconds spent in the gateway itself so far, upstream time excluded."""
        spent = time.perf_counter() - self.started
        return max(0.0, spent - self.trail.upstream_seconds)

    def __enter__(self) -> Outcome:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is not None and not self.sent and self.error is None and not self.gone:
            if isinstance(exc, LeapError):
                self.failed(exc)
            elif isinstance(exc, Exception):
                self.failed(LeapError("The gateway failed unexpectedly", code="internal_error"))
            else:
                self.gone = True
        sink, self._sink = self._sink, None
        if sink is not None:
            sink.record(self)

    def __repr__(self) -> str:
        return f"Outcome({self.operation}, status={self.status}, model={self.model!r})"
