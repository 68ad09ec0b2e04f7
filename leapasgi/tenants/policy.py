"""Who a caller is, and what it may use: ``Tenant`` and ``TenantPolicy``. Pure data, no I/O.

Every request is made by one tenant: a team or app with a virtual key, a user signed in with
OAuth2, a user of the host application (its ``authenticate`` hook), the holder of a static API
key, or nobody in particular (``ANONYMOUS``, when the gateway asks for no key). The tenant's
policy says which models it may call, its rate and concurrency limits and its budget.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import Any

__all__ = [
    "ANONYMOUS",
    "OPEN",
    "PRIORITY_MAX",
    "PRIORITY_MIN",
    "Budget",
    "Period",
    "Tenant",
    "TenantPolicy",
    "period_key",
]


# Request priorities in providers' queues (higher first); batches run at the lowest.
PRIORITY_MIN = -100
PRIORITY_MAX = 100


class Period(StrEnum):
    """What a budget is counted over: a UTC day, a UTC calendar month, or all time."""

    DAY = "day"
    MONTH = "month"
    TOTAL = "total"


def period_key(period: Period, wall: float) -> str:
    """The name of the period ``wall`` (``time.time()``) falls in: "2026-12-06", "2026-12" or
    "total"; spend is counted per (subject, period key)."""
    if period is Period.TOTAL:
        return "total"
    day = dt.datetime.fromtimestamp(wall, dt.UTC)
    return day.strftime("%Y-%m-%d" if period is Period.DAY else "%Y-%m")


@dataclass(frozen=True, slots=True)
class Budget:
    """At most ``usd`` per ``period``; past ``alert_at`` (a fraction of it) an alert is raised
    once per period, and requests go on."""

    usd: float
    period: Period = Period.MONTH
    alert_at: float | None = None

    def __post_init__(self) -> None:
        if not self.usd > 0:
            raise ValueError("a budget is more than 0 USD")
        if self.alert_at is not None and not 0 < self.alert_at < 1:
            raise ValueError("alert_at is a fraction of the budget, between 0 and 1")


@dataclass(frozen=True, slots=True)
class TenantPolicy:
    """What a tenant may use. ``models`` lists the model and alias names it may ask for (None:
    every one); limits of None are no limit."""

    models: frozenset[str] | None = None
    rpm: int | None = None
    tpm: int | None = None
    max_in_flight: int | None = None
    budget: Budget | None = None
    # Whether its requests may be hedged (sent twice when slow); False for requests that
    # must never be duplicated.
    hedge: bool = True
    # Its requests' place in a provider's queue (higher first), and the highest a request may
    # ask for with x-leap-priority (None: its own priority).
    priority: int = 0
    max_priority: int | None = None
    # Whether admission has anything to check (a model list or a limit): computed once.
    restricted: bool = field(init=False, repr=False, compare=False, default=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "restricted", self.models is not None or self.limited)

    def priority_for(self, asked: int | None) -> int:
        """The priority of a request that asked for ``asked`` (x-leap-priority): at most
        ``max_priority`` (else its own), at least ``PRIORITY_MIN``; its own when it asked
        for none."""
        if asked is None:
            return self.priority
        ceiling = self.max_priority if self.max_priority is not None else self.priority
        return max(PRIORITY_MIN, min(asked, ceiling))

    def allows(self, model: str) -> bool:
        """Whether the tenant may ask for ``model`` (a model, alias or provider/model name)."""
        models = self.models
        if models is None or model in models:
            return True
        # "provider/model" is allowed when its model is ("openai/gpt-4o" for "gpt-4o").
        _, slash, bare = model.partition("/")
        return bool(slash) and bare in models

    def to_json(self) -> dict[str, Any]:
        """The policy as JSON-ready data, in the shape of ``[tenants.policy]``
        (``PolicyConfig``): how keys are stored and shown."""
        budget = self.budget
        return {
            "models": sorted(self.models) if self.models is not None else None,
            "rpm": self.rpm,
            "tpm": self.tpm,
            "max_in_flight": self.max_in_flight,
            "budget": None
            if budget is None
            else {"usd": budget.usd, "period": str(budget.period), "alert_at": budget.alert_at},
            "hedge": self.hedge,
            "priority": self.priority,
            "max_priority": self.max_priority,
        }

    @property
    def limited(self) -> bool:
        """Whether anything here needs the ledger or the limiter (a request of an unlimited
        tenant skips both)."""
        return (
            self.rpm is not None
            or self.tpm is not None
            or self.max_in_flight is not None
            or self.budget is not None
        )


OPEN = TenantPolicy()


@dataclass(frozen=True, slots=True)
class Tenant:
    """One caller as the gateway accounts and limits it.

    ``id`` names it in usage reports ("team-a", "alice@example.com"); ``subject`` is what its
    limits and budget are counted under: the virtual key's id when it came with one (each key
    has its own budget), else the tenant id.
    """

    id: str
    policy: TenantPolicy = OPEN
    source: str = "anonymous"  # "anonymous", "key", "virtual_key", "oauth", "host"
    key_id: str | None = None
    tags: tuple[str, ...] = ()
    metadata: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))

    @property
    def subject(self) -> str:
        key_id = self.key_id
        return f"k:{key_id}" if key_id is not None else f"t:{self.id}"


ANONYMOUS = Tenant("anonymous")
