"""``leapasgi keys`` and ``leapasgi usage``: virtual keys and usage reports, straight from the
stores a config names (no running gateway needed).

Fields are checked as the admin API checks them (``asgi/admin_tenants.py``); a key's secret is
printed once, by ``keys create``, and never again.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import re
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from .asgi.admin_tenants import create_key, update_key, usage_body, usage_query
from .clock import SystemClock
from .exceptions import InvalidRequestError
from .tenants.base import UsageRow, VirtualKey
from .tenants.keys import missing
from .tenants.stores import TenantStores, open_stores

__all__ = ["add_commands", "run"]

_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhd]?)")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
_COUNTS = ("requests", "errors", "prompt_tokens", "completion_tokens", "cached_tokens")


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def _key_options(parser: argparse.ArgumentParser, *, update: bool) -> None:
    replaces = " (replaces the key's)" if update else ""
    parser.add_argument("--name")
    parser.add_argument("--models", help="the models and aliases it may use, comma-separated")
    parser.add_argument("--rpm", type=int, help="requests per minute")
    parser.add_argument("--tpm", type=int, help="tokens per minute")
    parser.add_argument("--max-in-flight", type=int, help="requests at once")
    parser.add_argument("--budget", type=float, metavar="USD")
    parser.add_argument("--period", choices=("day", "month", "total"))
    parser.add_argument("--alert-at", type=float, help="a fraction of the budget, e.g. 0.8")
    parser.add_argument("--expires-in", metavar="DURATION", help="30d, 12h, 90m or 3600s")
    parser.add_argument("--tag", action="append", help=f"repeatable{replaces}")
    parser.add_argument("--meta", action="append", metavar="K=V", help=f"repeatable{replaces}")
    if update:
        parser.add_argument("--no-budget", action="store_true", help="remove the budget")
        parser.add_argument("--no-expiry", action="store_true", help="never expire")


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``keys`` and ``usage`` to the ``leapasgi`` command."""
    keys = commands.add_parser("keys", help="create, list, change and revoke virtual keys")
    actions = keys.add_subparsers(dest="keys_action", metavar="ACTION", required=True)
    create = actions.add_parser("create", help="a new key; its secret is printed once")
    _common(create)
    create.add_argument("--tenant", help="whose it is in usage reports (default: its id)")
    _key_options(create, update=False)
    listing = actions.add_parser("list", help="the keys in use")
    _common(listing)
    listing.add_argument("--tenant")
    listing.add_argument("--all", action="store_true", help="revoked and expired keys too")
    for name, text in (("show", "one key"), ("revoke", "refuse a key from now on")):
        action = actions.add_parser(name, help=text)
        _common(action)
        action.add_argument("id")
    update = actions.add_parser("update", help="change a key's limits, budget, expiry...")
    _common(update)
    update.add_argument("id")
    _key_options(update, update=True)
    usage = commands.add_parser("usage", help="requests, tokens and cost per day, tenant, model")
    _common(usage)
    usage.add_argument("--since", metavar="YYYY-MM-DD", help="default: 30 days before --until")
    usage.add_argument("--until", metavar="YYYY-MM-DD", help="default: today (UTC)")
    usage.add_argument("--tenant")
    usage.add_argument("--by", help="any of day, tenant, model, provider (default: the first 3)")


def run(args: argparse.Namespace) -> int | None:
    """Run a ``keys`` or ``usage`` command; None when ``args`` names another command."""
    if args.command == "keys":
        action = _ACTIONS[args.keys_action]
    elif args.command == "usage":
        action = _usage
    else:
        return None
    return asyncio.run(_with_stores(args, action))


async def _with_stores(
    args: argparse.Namespace,
    action: Callable[[TenantStores, argparse.Namespace, float], Awaitable[int]],
) -> int:
    from .config import load_config

    async with open_stores(load_config(args.config)) as stores:
        return await action(stores, args, SystemClock().time())


def _seconds(text: str) -> float:
    match = _DURATION.fullmatch(text.strip())
    if match is None:
        raise InvalidRequestError(f"--expires-in: {text[:40]!r} is not a duration (30d, 12h)")
    return float(match[1]) * _UNITS[match[2]]


def _metadata(pairs: Sequence[str]) -> dict[str, str]:
    metadata = {}
    for pair in pairs:
        name, equals, value = pair.partition("=")
        if not equals or not name:
            raise InvalidRequestError(f"--meta: {pair[:40]!r} is not KEY=VALUE")
        metadata[name] = value
    return metadata


def _budget(args: argparse.Namespace, key: VirtualKey | None) -> dict[str, Any] | None:
    base = key.policy.budget if key is not None else None
    usd = args.budget if args.budget is not None else base.usd if base is not None else None
    if usd is None:
        raise InvalidRequestError("--period and --alert-at need a budget: --budget USD")
    period = args.period or (str(base.period) if base is not None else "month")
    alert_at = args.alert_at
    if alert_at is None and base is not None:
        alert_at = base.alert_at
    return {"usd": usd, "period": period, "alert_at": alert_at}


def _body(args: argparse.Namespace, key: VirtualKey | None = None) -> dict[str, Any]:
    """The admin API's body for the options given (an update sets only those)."""
    body: dict[str, Any] = {}
    if key is None and args.tenant is not None:
        body["tenant"] = args.tenant
    if args.name is not None:
        body["name"] = args.name
    if args.models is not None:
        body["models"] = [m.strip() for m in args.models.split(",") if m.strip()]
    for name in ("rpm", "tpm", "max_in_flight"):
        if getattr(args, name) is not None:
            body[name] = getattr(args, name)
    if getattr(args, "no_budget", False):
        if args.budget is not None or args.period or args.alert_at is not None:
            raise InvalidRequestError("--no-budget goes with no other budget option")
        body["budget"] = None
    elif args.budget is not None or args.period or args.alert_at is not None:
        body["budget"] = _budget(args, key)
    if getattr(args, "no_expiry", False):
        if args.expires_in is not None:
            raise InvalidRequestError("--no-expiry goes without --expires-in")
        body["expires_at"] = None
    elif args.expires_in is not None:
        body["expires_in"] = _seconds(args.expires_in)
    if args.tag is not None:
        body["tags"] = args.tag
    if args.meta is not None:
        body["metadata"] = _metadata(args.meta)
    return body


def _when(wall: float | None) -> str:
    if wall is None:
        return "-"
    return dt.datetime.fromtimestamp(wall, dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _status(key: VirtualKey, now: float) -> str:
    if key.revoked_at is not None:
        return "revoked"
    return "active" if key.active(now) else "expired"


def _limits(key: VirtualKey) -> str:
    policy = key.policy
    parts = [
        f"{value} {unit}"
        for value, unit in (
            (policy.rpm, "rpm"),
            (policy.tpm, "tpm"),
            (policy.max_in_flight, "at once"),
        )
        if value is not None
    ]
    return ", ".join(parts) or "-"


def _budget_text(key: VirtualKey) -> str:
    budget = key.policy.budget
    if budget is None:
        return "-"
    alert = f", alert at {budget.alert_at:g}" if budget.alert_at is not None else ""
    return f"${budget.usd:g}/{budget.period}{alert}"


def _models(key: VirtualKey) -> str:
    models = key.policy.models
    return "all" if models is None else ",".join(sorted(models)) or "none"


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [
        max(len(str(cell)) for cell in column) for column in zip(headers, *rows, strict=False)
    ]
    for row in (headers, *rows):
        print(
            "  ".join(
                str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)
            ).rstrip()
        )


def _show(key: VirtualKey, now: float) -> None:
    lines = {
        "id": key.id,
        "hint": key.hint,
        "tenant": key.tenant,
        "name": key.name or "-",
        "status": _status(key, now),
        "models": _models(key),
        "limits": _limits(key),
        "budget": _budget_text(key),
        "created": _when(key.created_at),
        "expires": _when(key.expires_at),
        "revoked": _when(key.revoked_at),
        "tags": ", ".join(key.tags) or "-",
        "metadata": json.dumps(dict(key.metadata)) if key.metadata else "-",
    }
    for name, value in lines.items():
        print(f"{name + ':':<10}{value}")


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2))


def _present(key: VirtualKey, args: argparse.Namespace, now: float) -> int:
    if args.json:
        _print_json(key.public())
    else:
        _show(key, now)
    return 0


async def _find(stores: TenantStores, key_id: str) -> VirtualKey:
    key = await stores.keys.get(key_id)
    if key is None:
        raise missing(key_id)
    return key


async def _create(stores: TenantStores, args: argparse.Namespace, now: float) -> int:
    key, secret = create_key(_body(args), now=now)
    await stores.keys.add(key)
    if args.json:
        _print_json({**key.public(), "secret": secret})
        return 0
    _show(key, now)
    print(f"\nsecret:   {secret}")
    print("This secret will not be shown again: keep it now.")
    return 0


async def _list(stores: TenantStores, args: argparse.Namespace, now: float) -> int:
    keys = [
        key
        for key in await stores.keys.list()
        if (args.tenant is None or key.tenant == args.tenant) and (args.all or key.active(now))
    ]
    if args.json:
        _print_json({"object": "list", "data": [key.public() for key in keys]})
        return 0
    headers = ("ID", "HINT", "TENANT", "NAME", "STATUS", "MODELS", "LIMITS", "BUDGET", "EXPIRES")
    rows = [
        (
            k.id,
            k.hint,
            k.tenant,
            k.name or "-",
            _status(k, now),
            _models(k),
            _limits(k),
            _budget_text(k),
            _when(k.expires_at),
        )
        for k in keys
    ]
    _table(headers, rows)
    return 0


async def _show_one(stores: TenantStores, args: argparse.Namespace, now: float) -> int:
    key = await _find(stores, args.id)
    return _present(key, args, now)


async def _update(stores: TenantStores, args: argparse.Namespace, now: float) -> int:
    key = await _find(stores, args.id)
    updated = update_key(key, _body(args, key), now=now)
    if updated != key:
        await stores.keys.put(updated)
    return _present(updated, args, now)


async def _revoke(stores: TenantStores, args: argparse.Namespace, now: float) -> int:
    key = await _find(stores, args.id)
    revoked = key.revoked(now)
    if revoked is not key:
        await stores.keys.put(revoked)
    return _present(revoked, args, now)


_ACTIONS: dict[str, Callable[[TenantStores, argparse.Namespace, float], Awaitable[int]]] = {
    "create": _create,
    "list": _list,
    "show": _show_one,
    "update": _update,
    "revoke": _revoke,
}


def _usage_row(row: UsageRow, groups: Sequence[str]) -> list[str]:
    cells = [getattr(row, name) for name in groups]
    cells += [str(getattr(row, name)) for name in _COUNTS]
    return [*cells, f"{row.cost_usd:.6f}"]


async def _usage(stores: TenantStores, args: argparse.Namespace, now: float) -> int:
    query = usage_query(
        since=args.since, until=args.until, tenant=args.tenant, group_by=args.by, now=now
    )
    rows = await stores.usage.report(
        since=query.since, until=query.until, tenant=query.tenant, group_by=query.group_by
    )
    body = usage_body(query, rows)
    if args.json:
        _print_json(body)
        return 0
    print(
        f"usage from {query.since} to {query.until}"
        + (f" of {query.tenant}" if query.tenant else "")
    )
    headers = [name.upper() for name in query.group_by]
    headers += ["REQUESTS", "ERRORS", "PROMPT", "COMPLETION", "CACHED", "COST_USD"]
    _table(headers, [_usage_row(row, query.group_by) for row in rows])
    total = body["total"]
    print(
        f"total: {total['requests']} requests, {total['errors']} errors, "
        f"{total['prompt_tokens']} prompt tokens, {total['completion_tokens']} completion tokens, "
        f"{total['cached_tokens']} cached tokens, ${total['cost_usd']:.6f}"
        f" ({total['estimated']} estimated)"
    )
    return 0
