"""Tenancy as the gateway uses it: who a request's caller is, whether it may go, and what it
cost.

    identity          the caller (identity.py): host hook, virtual key, static key, OAuth2
                      token, or nobody
    admit(...)        its policy before the dispatcher's loop: model allowed, RPM/TPM, requests
                      in flight, budget (a reservation, settled when the request ends)
    account(outcome)  when the request ends: its cost (the price table x the provider's usage),
                      its usage row, its reservation settled with the real cost

Everything a request does here is in memory and synchronous except a key or token seen for the
first time (looked up, then cached for ``key_cache_ttl``), an OAuth2 key refresh, and a
reservation on a shared (Redis) ledger.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from typing import TYPE_CHECKING

from ..clock import Clock
from ..exceptions import (
    BudgetExceededError,
    LeapError,
    PermissionDeniedError,
    RateLimitError,
    StoreUnavailableError,
)
from ..native import ProtocolRequest
from ..state import Bucket, RateLimiter, Reservation
from ..tokens import estimate_prompt_tokens
from ..types import ChatCompletionRequest
from .base import UsageRow
from .identity import Authenticate, Identifier
from .ledger import Held, Ledger, MemoryLedger, Refused, Ticket
from .policy import Budget, Tenant, TenantPolicy
from .pricing import PriceTable
from .pricing import cost as cost_of
from .stores import TenantStores, build_stores
from .usage import UsageBuffer

if TYPE_CHECKING:
    from ..config import GatewayConfig
    from ..outcome import Outcome
    from ..routing import RouteTable
    from ..state import StateBackend

__all__ = ["Tenancy"]

logger = logging.getLogger("leapasgi.tenants")

# Seconds a request waits, at most, between looks at a budget held by requests in flight.
HELD_WAIT = 1.0


class Tenancy:
    """One gateway's tenancy: identification, admission, accounting and their stores."""

    def __init__(
        self,
        config: GatewayConfig,
        state: StateBackend,
        *,
        clock: Clock,
        routes: RouteTable,
        authenticate: Authenticate | None = None,
        stores: TenantStores | None = None,
    ) -> None:
        self.config = config
        self.clock = clock
        tenants = config.tenants
        self._routes = routes
        self.stores = stores or build_stores(config, state)
        self.keys = self.stores.keys
        self.usage = self.stores.usage
        self.prices = PriceTable.shipped().with_overrides(config.prices)
        self.buffer = UsageBuffer()
        self._limiter: RateLimiter = state.limiter
        self.ledger: Ledger
        self._memory_ledger: MemoryLedger | None = None
        if state.kind == "redis":
            from ..state.redis import RedisState
            from ._redis_ledger import RedisLedger

            assert isinstance(state, RedisState)
            self.ledger = RedisLedger(
                state.link,
                state.prefix,
                clock=clock,
                replicas=config.state.replicas,
                spawn=state.spawn,
                on_alert=self._alerted,
            )
        else:
            self._memory_ledger = MemoryLedger(clock=clock, on_alert=self._alerted)
            self.ledger = self._memory_ledger
        # Who calls: the same keys store, the host app's hook, OAuth2.
        self.identity = Identifier(config, self.keys, clock=clock, authenticate=authenticate)
        self._completion_estimate = tenants.completion_estimate
        self._flush_interval = tenants.flush_interval
        self._retention_days = tenants.retention_days
        self._task: asyncio.Task[None] | None = None
        self._loaded = False
        self._closed = False
        self.alerts = 0

    # -- admission ------------------------------------------------------------------------

    async def admit(
        self,
        tenant: Tenant,
        request: ChatCompletionRequest | ProtocolRequest,
        model: str,
        outcome: Outcome,
        *,
        within: float,
    ) -> None:
        """Check ``tenant``'s policy for a request of ``model``; reserve what it limits. The
        reservation is the outcome's until ``account`` settles it."""
        policy = tenant.policy
        if not policy.allows(model):
            raise PermissionDeniedError(
                f"This key may not use the model {model!r}", param="model", code="model_not_allowed"
            )
        if not policy.limited:
            return
        if not self._loaded:
            await self._ready()
        subject = tenant.subject
        rate: Reservation | None = None
        if policy.rpm is not None or policy.tpm is not None:
            tokens = self._estimate_tokens(request) if policy.tpm is not None else 0
            granted = await self._limiter.reserve(
                (Bucket(f"t:{subject}", policy.rpm, policy.tpm),), tokens
            )
            if not isinstance(granted, Reservation):
                raise RateLimitError(
                    "This key is over its rate limit",
                    retry_after=max(1.0, math.ceil(granted)),
                    code="tenant_rate_limit_exceeded",
                    retryable=False,
                )
            rate = granted
        budget = policy.budget
        ticket: Ticket | None = None
        if budget is not None or policy.max_in_flight is not None:
            try:
                ticket = await self._reserve(subject, policy, request, model, within)
            except BaseException:
                if rate is not None:
                    self._limiter.settle(rate, None)
                raise
        outcome.tenancy = (ticket, rate)

    async def _reserve(
        self,
        subject: str,
        policy: TenantPolicy,
        request: ChatCompletionRequest | ProtocolRequest,
        model: str,
        within: float,
    ) -> Ticket:
        budget = policy.budget
        usd = self._estimate_cost(request, model) if budget is not None else 0.0
        clock = self.clock
        until = clock.monotonic() + within
        while True:
            got = await self.ledger.reserve(
                subject,
                usd=usd,
                budget=budget,
                max_in_flight=policy.max_in_flight,
                lease=within,
            )
            if isinstance(got, Ticket):
                return got
            if isinstance(got, Refused):
                raise self._refusal(got, budget)
            assert isinstance(got, Held)
            left = until - clock.monotonic()
            if left <= 0:
                raise BudgetExceededError(
                    "The rest of this key's budget is held by its requests in flight; "
                    "try again when they end",
                    retry_after=1.0,
                    code="budget_held",
                )
            await self.ledger.wait(subject, min(left, HELD_WAIT))

    @staticmethod
    def _refusal(refused: Refused, budget: Budget | None) -> LeapError:
        if refused.reason == "in_flight":
            return RateLimitError(
                "This key has as many requests in flight as it may",
                retry_after=1.0,
                code="tenant_concurrency_exceeded",
                retryable=False,
            )
        assert budget is not None
        when = (
            "for good (a total budget)"
            if refused.retry_after is None
            else f"until its {budget.period} ends"
        )
        retry_after = None if refused.retry_after is None else math.ceil(refused.retry_after)
        return BudgetExceededError(
            f"This key's budget of {budget.usd:g} USD per {budget.period} is spent "
            f"({refused.spent:.4f} USD); requests are refused {when}",
            retry_after=retry_after,
        )

    def _estimate_tokens(self, request: ChatCompletionRequest | ProtocolRequest) -> int:
        prompt, completion = estimate_prompt_tokens(request, self._completion_estimate)
        return prompt + completion

    def _estimate_cost(self, request: ChatCompletionRequest | ProtocolRequest, model: str) -> float:
        """The most the request may cost: its prompt estimate and completion limit at the
        dearest price among the models it may be routed to."""
        prompt, completion = estimate_prompt_tokens(request, self._completion_estimate)
        dearest = 0.0
        for provider, target in self._targets(model):
            price = self.prices.price_of(target, provider)
            if price is not None:
                dearest = max(dearest, cost_of(price, prompt, completion, 0))
        return dearest

    def _targets(self, model: str) -> list[tuple[str, str]]:
        try:
            routes = self._routes.targets(model)
        except LeapError:
            return [("", model)]
        return [(route.provider, route.model) for route in routes] or [("", model)]

    # -- accounting -----------------------------------------------------------------------

    async def answered_elsewhere(self, outcome: Outcome) -> None:
        """Ready ``outcome``, a request a provider answered outside the dispatcher (a line of
        a batch handed over to its batch API), to be accounted: its cost is added to its
        tenant's spend even past a budget, as the provider has charged it already."""
        tenant = outcome.tenant
        if tenant is None or tenant.policy.budget is None:
            return
        if not self._loaded:
            await self._ready()
        got = await self.ledger.reserve(tenant.subject, usd=0.0, budget=None, max_in_flight=None)
        if isinstance(got, Ticket):
            outcome.tenancy = (got, None)

    def price(self, outcome: Outcome) -> float | None:
        """The request's cost from its usage (None: no price for its model)."""
        served = outcome.trail.served_by
        if served is None:
            return None
        price = self.prices.price_of(served.model, served.provider)
        if price is None:
            return None
        return cost_of(
            price, outcome.prompt_tokens, outcome.completion_tokens, outcome.cached_tokens
        )

    def account(self, outcome: Outcome) -> None:
        """Count a finished request: usage and cost to its tenant, its reservation settled."""
        tenant = outcome.tenant
        if tenant is None:
            return
        if self._task is None:
            self._flushing()
        served = outcome.trail.served_by
        if served is not None and not (outcome.prompt_tokens or outcome.completion_tokens):
            self._estimate_usage(outcome)
        cost = outcome.cost_usd
        if cost is None and served is not None:
            cost = outcome.cost_usd = self.price(outcome)
        held = outcome.tenancy
        if held is not None:
            outcome.tenancy = None
            ticket, rate = held
            if ticket is not None:
                self.ledger.settle(ticket, cost or 0.0)
            if rate is not None:
                used = outcome.prompt_tokens + outcome.completion_tokens
                self._limiter.settle(rate, used if served is not None else None)
        hit = outcome.cache == "hit"
        if served is None and outcome.error is None and not hit:
            return  # never reached a provider (the client left first): nothing to count
        model = served.model if served is not None else (outcome.model or "")
        provider = (
            served.provider if served is not None else "cache" if hit else outcome.provider or ""
        )
        self.buffer.record(
            wall=self.clock.time(),
            tenant=tenant.id,
            model=model,
            provider=provider,
            error=outcome.error is not None or (served is None and not hit),
            prompt_tokens=outcome.prompt_tokens,
            completion_tokens=outcome.completion_tokens,
            cached_tokens=outcome.cached_tokens,
            cost_usd=cost or 0.0,
            estimated=outcome.usage_estimated,
        )

    @staticmethod
    def _estimate_usage(outcome: Outcome) -> None:
        """No usage was reported (a stream cut short, an upstream that sends none): the prompt
        is estimated from the request, and the usage marked as an estimate."""
        request = outcome.request
        if request is None:
            return
        outcome.prompt_tokens, _ = estimate_prompt_tokens(request, 0)
        outcome.usage_estimated = True
        outcome.cost_usd = None

    def _alerted(self, subject: str, budget: Budget, period: str) -> None:
        self.alerts += 1
        logger.warning(
            "budget alert: %s has spent %.0f%% of its %s budget (%s)",
            subject,
            100 * (budget.alert_at or 1.0),
            budget.period,
            period,
        )

    # -- lifetime -------------------------------------------------------------------------

    async def start(self) -> None:
        """Load spend kept by an earlier run (one host), and start writing usage out; safe to
        call twice (a mounted gateway gets here on its first request instead)."""
        await self._ready()
        self._flushing()

    async def _ready(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        if self._memory_ledger is not None and self.stores.database is not None:
            self._memory_ledger.load(await self._load_spend())

    def _flushing(self) -> None:
        if self._task is None and not self._closed:
            self._task = asyncio.get_running_loop().create_task(
                self._flush_loop(), name="leapasgi-usage"
            )

    async def _load_spend(self) -> list[tuple[str, str, float]]:
        from .spend import load_spend

        assert self.stores.database is not None
        return await load_spend(self.stores.database, self.clock.time())

    async def flush_usage(self) -> None:
        """Write the usage (and, in one host, the spend) counted so far."""
        await self.buffer.flush(self.usage)
        memory = self._memory_ledger
        if memory is not None and self.stores.database is not None:
            from .spend import save_spend

            spend = memory.take_spend()
            if spend:
                try:
                    await save_spend(self.stores.database, spend)
                except StoreUnavailableError:
                    memory.unsaved(spend)  # kept, and saved with the next flush
                    raise

    async def _flush_loop(self) -> None:
        pruned = ""
        failing = False
        while True:
            await asyncio.sleep(self._flush_interval)
            try:
                await self.flush_usage()
                today = UsageRow.day_of(self.clock.time())
                if today != pruned:  # once a day (and at start): usage past its retention goes
                    await self.prune()
                    pruned = today
            except StoreUnavailableError as error:
                if not failing:  # once per outage; the usage is kept and written after it
                    logger.warning(
                        "tenants: usage kept in memory until the store is back: %s", error.message
                    )
                failing = True
            except Exception:
                logger.exception("tenants: writing usage failed; it is kept and tried again")
            else:
                if failing:
                    logger.warning("tenants: the store is back; usage is written again")
                failing = False

    async def prune(self) -> None:
        """Forget usage (and, in one host, spend) older than ``retention_days``."""
        cutoff = UsageRow.day_of(self.clock.time() - self._retention_days * 86_400)
        await self.usage.prune(cutoff)
        if self._memory_ledger is not None and self.stores.database is not None:
            from .spend import prune_spend

            await prune_spend(self.stores.database, cutoff)

    async def aclose(self) -> None:
        self._closed = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        try:
            with contextlib.suppress(Exception):
                await self.flush_usage()
        finally:
            await self.identity.aclose()
            await self.stores.aclose()
