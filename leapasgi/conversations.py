"""The Responses API's conversation state: each stored response with the input items of its
turn and a link to the response before it, so ``previous_response_id`` rebuilds the whole
history at once, whichever provider served each turn.

``ResponseStore`` is the interface a shared backend (Redis) implements; ``MemoryResponseStore``
is the default: bounded in entries and bytes, with a time to live, oldest evicted first.
Responses are kept per owner (the client's key), and only their owner can read them.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Protocol

from .clock import Clock, SystemClock
from .exceptions import InvalidRequestError, NotFoundError

__all__ = [
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_ENTRIES",
    "DEFAULT_TTL",
    "MAX_CHAIN",
    "MemoryResponseStore",
    "ResponseStore",
    "StoredResponse",
    "history_of",
]

DEFAULT_TTL = 24 * 3600.0
DEFAULT_MAX_ENTRIES = 10_000
DEFAULT_MAX_BYTES = 256 * 1024 * 1024
# The most turns one history is rebuilt from; a longer chain is refused, not walked forever.
MAX_CHAIN = 10_000


@dataclass(frozen=True, slots=True)
class StoredResponse:
    """One response as kept: the Response object returned, its turn's input items, the
    response it followed, and its owner (a digest of the client's key; None with no keys)."""

    id: str
    response: dict[str, Any]
    input: tuple[dict[str, Any], ...]
    previous: str | None = None
    owner: str | None = None
    # Its size in bytes when the caller knows it already (the bytes the request and the
    # answer came in), so keeping it costs no encoding; else ``size()`` measures it.
    nbytes: int | None = None

    @property
    def output(self) -> list[dict[str, Any]]:
        """The response's output items, as the next turn's history needs them."""
        output = self.response.get("output")
        return (
            [item for item in output if isinstance(item, dict)] if isinstance(output, list) else []
        )

    def size(self) -> int:
        """Roughly its bytes, for the store's bound."""
        if self.nbytes is not None:
            return self.nbytes
        return len(json.dumps([self.response, self.input], separators=(",", ":")))


class ResponseStore(Protocol):
    """Where responses are kept between turns."""

    async def get(self, response_id: str, *, owner: str | None) -> StoredResponse | None:
        """The response, if it is kept and belongs to ``owner``."""
        ...

    async def put(self, stored: StoredResponse) -> None:
        """Keep ``stored`` (within the store's bounds)."""
        ...

    async def delete(self, response_id: str, *, owner: str | None) -> bool:
        """Forget the response; False if there was none of ``owner``'s."""
        ...


class MemoryResponseStore:
    """Responses in this process's memory, bounded in entries and bytes, each for ``ttl``."""

    def __init__(
        self,
        *,
        ttl: float = DEFAULT_TTL,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        max_bytes: int = DEFAULT_MAX_BYTES,
        clock: Clock | None = None,
    ) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._clock = clock or SystemClock()
        # Oldest first: (stored, expires_at, size).
        self._entries: OrderedDict[str, tuple[StoredResponse, float, int]] = OrderedDict()
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def bytes(self) -> int:
        """The bytes kept now."""
        return self._bytes

    async def get(self, response_id: str, *, owner: str | None) -> StoredResponse | None:
        entry = self._entries.get(response_id)
        if entry is None:
            return None
        stored, expires_at, _ = entry
        if expires_at <= self._clock.monotonic():
            self._drop(response_id)
            return None
        return stored if stored.owner == owner else None

    async def put(self, stored: StoredResponse) -> None:
        size = stored.size()
        if size > self.max_bytes:
            return  # larger than the whole store: never kept
        if stored.id in self._entries:
            self._drop(stored.id)
        self._entries[stored.id] = (stored, self._clock.monotonic() + self.ttl, size)
        self._bytes += size
        self._evict()

    async def delete(self, response_id: str, *, owner: str | None) -> bool:
        entry = self._entries.get(response_id)
        if entry is None or entry[0].owner != owner:
            return False
        self._drop(response_id)
        return True

    def _evict(self) -> None:
        entries = self._entries
        now = self._clock.monotonic()
        while entries and (
            len(entries) > self.max_entries
            or self._bytes > self.max_bytes
            or next(iter(entries.values()))[1] <= now
        ):
            self._drop(next(iter(entries)))

    def _drop(self, response_id: str) -> None:
        _, _, size = self._entries.pop(response_id)
        self._bytes -= size


async def history_of(
    previous_id: str, stores: list[ResponseStore], *, owner: str | None
) -> list[dict[str, Any]]:
    """Every input and output item of the chain ending at ``previous_id``, oldest first; a
    response not found (never stored, expired, or another owner's) is a 404."""
    turns: list[StoredResponse] = []
    next_id: str | None = previous_id
    while next_id is not None:
        if len(turns) >= MAX_CHAIN:
            raise InvalidRequestError(
                f"The conversation is longer than {MAX_CHAIN} responses",
                param="previous_response_id",
            )
        stored = None
        for store in stores:
            stored = await store.get(next_id, owner=owner)
            if stored is not None:
                break
        if stored is None:
            raise NotFoundError(
                f"Previous response with id '{next_id}' not found.",
                param="previous_response_id",
                code="previous_response_not_found",
            )
        turns.append(stored)
        next_id = stored.previous
    items: list[dict[str, Any]] = []
    for stored in reversed(turns):
        items.extend(stored.input)
        items.extend(stored.output)
    return items
