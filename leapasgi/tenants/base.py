"""What tenancy keeps, behind interfaces: virtual keys, usage records, and the ledger of spend.

    KeyStore      virtual keys by id and by the digest of their secret (never the secret)
    UsageStore    usage per day, tenant, model and provider: requests, errors, tokens, cost
    Ledger        budgets and per-tenant concurrency: reserve before a request, settle after

In one process (the memory state backend) they live in a SQLite file (``[tenants] database``)
or, without one, in memory. With the Redis backend, keys, reservations and counters are shared
by every replica, and usage is appended to a Redis stream every host can read.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any, Protocol

from ..access import key_digest
from .policy import OPEN, Tenant, TenantPolicy

__all__ = [
    "KEY_PREFIX",
    "KeyStore",
    "UsageRow",
    "UsageStore",
    "VirtualKey",
    "key_digest",
]

# Every virtual key's secret starts with this, so the gateway knows where to look it up.
KEY_PREFIX = "lk-"


@dataclass(frozen=True, slots=True)
class VirtualKey:
    """A virtual key as stored: never its secret, only the secret's digest and first letters.

    ``tenant`` is whose it is in usage reports (several keys may share a tenant); its limits and
    budget are its own. Times are wall clock (``time.time()``).
    """

    id: str  # "key_" + 16 hex digits
    digest: str  # key_digest(secret)
    hint: str  # the secret's first characters ("lk-3fA9"), to tell keys apart in lists
    tenant: str
    name: str = ""
    policy: TenantPolicy = OPEN
    created_at: float = 0.0
    expires_at: float | None = None
    revoked_at: float | None = None
    tags: tuple[str, ...] = ()
    metadata: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))

    def active(self, now: float) -> bool:
        """Neither revoked nor expired at wall time ``now``."""
        if self.revoked_at is not None:
            return False
        return self.expires_at is None or now < self.expires_at

    def as_tenant(self) -> Tenant:
        """The caller a request with this key is: its tenant, under the key's own policy."""
        return Tenant(
            self.tenant,
            self.policy,
            source="virtual_key",
            key_id=self.id,
            tags=self.tags,
            metadata=self.metadata,
        )

    def revoked(self, now: float) -> VirtualKey:
        return self if self.revoked_at is not None else replace(self, revoked_at=now)

    def public(self) -> dict[str, Any]:
        """The key as the admin API and CLI show it (no digest, no secret)."""
        return {
            "id": self.id,
            "object": "virtual_key",
            "hint": self.hint,
            "tenant": self.tenant,
            "name": self.name,
            **self.policy.to_json(),
            "created_at": self.created_at,
            "expires_at": self.expires_at,
            "revoked_at": self.revoked_at,
            "tags": list(self.tags),
            "metadata": dict(self.metadata),
        }


class KeyStore(Protocol):
    """Virtual keys. Every method may raise ``StoreUnavailableError`` when the store cannot
    be reached (the caller answers 503)."""

    async def add(self, key: VirtualKey) -> None:
        """Keep a new key (its id and digest are new)."""
        ...

    async def find(self, digest: str) -> VirtualKey | None:
        """The key whose secret has ``digest`` (revoked and expired ones too), else None."""
        ...

    async def get(self, key_id: str) -> VirtualKey | None: ...

    async def list(self) -> list[VirtualKey]:
        """Every key, oldest first."""
        ...

    async def put(self, key: VirtualKey) -> None:
        """Replace the stored key with the same id (an update or a revocation)."""
        ...

    async def aclose(self) -> None: ...


@dataclass(frozen=True, slots=True)
class UsageRow:
    """Usage of one tenant and model at one provider on one UTC day (or, in a report, summed
    over what the report does not group by: those fields are "")."""

    day: str  # "2026-12-06"
    tenant: str
    model: str
    provider: str
    requests: int = 0
    errors: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    cost_usd: float = 0.0
    # Requests whose tokens are the gateway's estimate (the upstream reported none).
    estimated: int = 0

    @staticmethod
    def day_of(wall: float) -> str:
        return dt.datetime.fromtimestamp(wall, dt.UTC).strftime("%Y-%m-%d")


class UsageStore(Protocol):
    """Usage records, summed per (day, tenant, model, provider)."""

    async def add(self, rows: list[UsageRow]) -> None:
        """Add these rows' counts to what is kept (rows with the same four names sum)."""
        ...

    async def report(
        self,
        *,
        since: str,
        until: str,
        tenant: str | None = None,
        group_by: tuple[str, ...] = ("day", "tenant", "model"),
    ) -> list[UsageRow]:
        """Usage from day ``since`` to day ``until`` (both included, "YYYY-MM-DD"), of one
        tenant or all, summed by ``group_by`` (any of "day", "tenant", "model", "provider"),
        sorted by those fields."""
        ...

    async def prune(self, before: str) -> int:
        """Forget days before ``before``; returns how many rows went."""
        ...

    async def aclose(self) -> None: ...
