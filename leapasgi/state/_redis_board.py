"""Breaker events shared between replicas through one Redis hash (provider -> its newest
event as JSON). Publishing only queues an event; RedisState's sync loop calls ``exchange``
to write the queue (``_lua.BOARD_PUBLISH`` keeps the newer of two events) and read back
what other replicas wrote.
"""

from __future__ import annotations

import dataclasses
import json
import logging

from . import _lua
from ._redis_link import Link
from ._resp import Script
from .base import BreakerEvent

__all__ = ["MAX_QUEUED_EVENTS", "RedisBoard"]

logger = logging.getLogger("leapasgi.state")

# Providers whose breaker events wait for the next sync.
MAX_QUEUED_EVENTS = 1024

_PUBLISH = Script(_lua.BOARD_PUBLISH)


class RedisBoard:
    """Breaker events in one hash, written and read back by each replica's sync loop."""

    def __init__(self, link: Link, prefix: str, *, origin: str) -> None:
        self.origin = origin
        self._link = link
        self._key = f"{prefix}:breakers"
        self._queued: dict[str, BreakerEvent] = {}
        self._applied: dict[str, float] = {}  # provider -> the newest event known here
        self._seen: dict[bytes, bytes] = {}  # hash field -> the value last read

    def publish(self, event: BreakerEvent) -> None:
        if not event.origin:
            event = dataclasses.replace(event, origin=self.origin)
        queued = self._queued.get(event.provider)
        if queued is None and len(self._queued) >= MAX_QUEUED_EVENTS:
            logger.warning("state: too many breaker events queued; one was dropped")
            return
        if queued is None or queued.at <= event.at:
            self._queued[event.provider] = event
        # An older event of another replica must not undo this one here.
        self._applied[event.provider] = max(event.at, self._applied.get(event.provider, 0.0))

    async def exchange(self) -> list[BreakerEvent]:
        """Write the queued events, read everyone's back: those to apply here. The caller
        bounds the wait."""
        client = self._link.client
        if self._queued:
            batch, self._queued = self._queued, {}
            args: list[str] = []
            for event in batch.values():
                args += (event.provider, repr(event.at), json.dumps(dataclasses.asdict(event)))
            try:
                await client.run(_PUBLISH, (self._key,), args)
            except BaseException:
                for event in batch.values():
                    queued = self._queued.get(event.provider)
                    if queued is None or queued.at < event.at:
                        self._queued[event.provider] = event
                raise
        raw: list[bytes] = await client.execute(b"HGETALL", self._key)
        events = []
        for name, data in zip(raw[::2], raw[1::2], strict=True):
            if self._seen.get(name) == data:
                continue
            self._seen[name] = data
            got = _event_of(data)
            if got is None or got.origin == self.origin:
                continue
            if got.at > self._applied.get(got.provider, float("-inf")):
                self._applied[got.provider] = got.at
                events.append(got)
        return events


def _event_of(data: bytes) -> BreakerEvent | None:
    """The event in ``data``, or None if it is not one (another version wrote it)."""
    try:
        fields = json.loads(data)
        return BreakerEvent(
            provider=str(fields["provider"]),
            at=float(fields["at"]),
            open_until=None if fields.get("open_until") is None else float(fields["open_until"]),
            hold_until=None if fields.get("hold_until") is None else float(fields["hold_until"]),
            rate_limited=bool(fields.get("rate_limited", False)),
            times_ejected=int(fields.get("times_ejected", 0)),
            origin=str(fields.get("origin", "")),
        )
    except (ValueError, KeyError, TypeError):
        return None
