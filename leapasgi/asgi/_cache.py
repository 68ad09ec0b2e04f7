"""The response cache in front of a model endpoint: a stored answer is replayed in one write
as it was first sent (a stream included: it is the stream's whole bytes), and a miss's answer
is recorded as it goes out, keep-alive pings left out, and kept, before its last bytes are
sent, when it ended well: a 200, no in-band error, every byte sent, not too large, and not
a hook's own answer."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from starlette.types import Message, Receive, Scope, Send

from ..cache import BYPASS, HIT, MISS, CachedAnswer, CacheTicket, Flight, ResponseCache
from ..outcome import Outcome
from ..protocols.messages_stream import PING as MESSAGES_PING
from ..sse import PING
from ._http import outcome_headers
from .relay import guarded

__all__ = ["KEY_HEADER", "PINGS", "Answer", "CacheStep"]

KEY_HEADER = b"x-leap-cache-key"
# The keep-alives SSERelay sends on a quiet stream: an SSE comment, and Anthropic's ping
# event. Never part of a stored answer.
PINGS = frozenset({PING, MESSAGES_PING})
_PING_SIZES = frozenset(len(ping) for ping in PINGS)
_MESSAGES = "/v1/messages"

# An endpoint's answer to a body: (scope, receive, send, body, outcome).
Answer = Callable[[Scope, Receive, Send, bytes, Outcome], Awaitable[None]]


class CacheStep:
    """The cache for one route: ``serve`` answers from it, or lets the endpoint answer and
    keeps what it sent. ``wait`` bounds a wait for an identical request's answer (the
    request timeout)."""

    __slots__ = ("_cache", "_route", "_wait")

    def __init__(self, cache: ResponseCache, route: str, wait: float) -> None:
        self._cache = cache
        self._route = route
        self._wait = wait

    async def serve(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        body: bytes,
        outcome: Outcome,
        answer: Answer,
    ) -> None:
        """Answer the request whose body was read: from the cache, or by ``answer``."""
        cache = self._cache
        ticket = cache.plan(self._route, scope, body)
        tenant = outcome.tenant
        if ticket is not None and tenant is not None and not tenant.policy.allows(ticket.model):
            ticket = None  # not for this caller: the dispatcher refuses it (403)
        if ticket is None:
            outcome.cache = BYPASS
            await answer(scope, receive, send, body, outcome)
            return
        flight: Flight | None = None
        if ticket.read:
            found = None if cache.coalescing else await cache.lookup(ticket)
            if cache.coalescing:
                joined = await guarded(cache.join(ticket, wait=self._wait), receive, outcome)
                if outcome.gone:
                    return
                if isinstance(joined, Flight):
                    flight = joined
                else:
                    found = joined
            if found is not None:
                await self._replay(ticket, found, send, outcome)
                return
        outcome.cache = MISS
        recording = _Recording(send, cache, ticket, flight, outcome)
        try:
            await answer(scope, receive, recording, body, outcome)
        finally:
            if flight is not None:
                await cache.end(flight)

    async def _replay(
        self, ticket: CacheTicket, found: CachedAnswer, send: Send, outcome: Outcome
    ) -> None:
        outcome.cache = HIT
        outcome.model = ticket.model
        outcome.stream = ticket.stream
        body = found.body
        headers = [
            (b"content-type", found.content_type),
            (b"content-length", str(len(body)).encode()),
            (b"age", str(found.age).encode()),
            (KEY_HEADER, ticket.key.encode()),
        ]
        if self._route == _MESSAGES:
            # The anthropic SDK reads the request id from ``request-id``.
            headers.append((b"request-id", outcome.request_id.encode()))
        headers.extend(outcome_headers(outcome))
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})
        outcome.sent = True


class _Recording:
    """The endpoint's ``send``, keeping a copy of a 200 answer's body (pings left out); its
    last message stores the answer first, when nothing went wrong."""

    __slots__ = ("_cache", "_flight", "_outcome", "_parts", "_send", "_size", "_ticket", "_type")

    def __init__(
        self,
        send: Send,
        cache: ResponseCache,
        ticket: CacheTicket,
        flight: Flight | None,
        outcome: Outcome,
    ) -> None:
        self._send = send
        self._cache = cache
        self._ticket = ticket
        self._flight = flight
        self._outcome = outcome
        # The body so far; None when not recording (not a 200, too large, or finished).
        self._parts: list[bytes] | None = None
        self._size = 0
        self._type = b""

    async def __call__(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.body":
            if self._parts is not None:
                await self._record(message)
        elif kind == "http.response.start" and message["status"] == 200:
            headers = list(message.get("headers", ()))
            for name, value in headers:
                if name == b"content-type":
                    self._type = bytes(value)
            if self._type:
                self._parts = []
                headers.append((KEY_HEADER, self._ticket.key.encode()))
                message = {**message, "headers": headers}
        await self._send(message)

    async def _record(self, message: Message) -> None:
        parts = self._parts
        assert parts is not None
        cache = self._cache
        chunk: bytes = message.get("body", b"")
        if chunk and not (len(chunk) in _PING_SIZES and chunk in PINGS):
            self._size += len(chunk)
            if self._size <= cache.max_entry_bytes:
                parts.append(chunk)
            elif parts:
                parts.clear()  # it will not be kept: stop holding it
        if message.get("more_body", False):
            return
        self._parts = None
        outcome = self._outcome
        if outcome.error is not None:
            return  # a stream that ended with an in-band error
        if outcome.answered_by is not None:
            return  # a hook's answer: the hook decides again next time
        if self._size > cache.max_entry_bytes:
            cache.too_large()
            return
        await cache.keep(self._ticket, self._flight, self._type, parts)
