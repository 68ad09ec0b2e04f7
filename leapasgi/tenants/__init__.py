"""Tenants: who calls, what each may use, and what each has spent (see ``tenants/base.py``)."""

from __future__ import annotations

from .policy import ANONYMOUS, OPEN, Budget, Period, Tenant, TenantPolicy, period_key

__all__ = ["ANONYMOUS", "OPEN", "Budget", "Period", "Tenant", "TenantPolicy", "period_key"]
