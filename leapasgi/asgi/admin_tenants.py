"""The admin API of tenancy, behind the admin key: virtual keys (``/v1/keys``) and usage
(``/v1/usage``).

The checks of a key's fields (``create_key``, ``update_key``) and of a usage query
(``usage_query``) are plain functions, so ``leapasgi keys`` and ``leapasgi usage`` check what
they are given the same way. A key's secret is in the create response and nowhere else.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..config import PolicyConfig
from ..exceptions import InvalidRequestError, LeapError
from ..outcome import CLIENT_CLOSED
from ..tenants.base import UsageRow, VirtualKey
from ..tenants.keys import missing, new_key
from ..tenants.policy import TenantPolicy
from ..tenants.usage import GROUP_FIELDS, group_fields, totals
from ._http import ClientGone, read_body
from .routes import error_response

if TYPE_CHECKING:
    from ..gateway import GatewayCore

__all__ = [
    "UsageQuery",
    "create_key",
    "tenant_routes",
    "update_key",
    "usage_body",
    "usage_query",
]

MAX_TENANT = 128
MAX_NAME = 200
MAX_MODELS = 256
MAX_MODEL_NAME = 200
MAX_TAGS = 16
MAX_TAG = 64
MAX_METADATA = 32
MAX_METADATA_KEY = 64
MAX_METADATA_BYTES = 4096
MAX_METADATA_DEPTH = 16
# Days a usage report covers when the query gives no ``since``.
USAGE_DAYS = 30
DEFAULT_GROUPS = ("day", "tenant", "model")

_POLICY = (
    "models",
    "rpm",
    "tpm",
    "max_in_flight",
    "budget",
    "hedge",
    "priority",
    "max_priority",
)
_UPDATABLE = frozenset({"name", *_POLICY, "expires_at", "expires_in", "tags", "metadata"})
_CREATABLE = _UPDATABLE | {"tenant"}
_DAY = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_NAMES = frozenset(GROUP_FIELDS)


def _invalid(param: str, message: str) -> InvalidRequestError:
    return InvalidRequestError(f"{param}: {message}", param=param)


def _fields(body: object, allowed: frozenset[str]) -> Mapping[str, Any]:
    if not isinstance(body, dict):
        raise InvalidRequestError("The body must be a JSON object")
    for name in body:
        if name not in allowed:
            if name in _CREATABLE:
                raise _invalid(name, "is fixed when a key is made")
            # Named as repr shows it: a lone surrogate could not be sent back as UTF-8.
            shown = name if name.isprintable() else repr(name)[1:-1]
            raise _invalid(shown[:64], "unknown field")
    return body


def _text(value: object, param: str, *, limit: int, empty: bool = True) -> str:
    if not isinstance(value, str):
        raise _invalid(param, "must be a string")
    if len(value) > limit or (not empty and not value) or not value.isprintable():
        size = f"{0 if empty else 1} to {limit}"
        raise _invalid(param, f"must be {size} printable characters")
    return value


def _name(value: object) -> str:
    return "" if value is None else _text(value, "name", limit=MAX_NAME)


def _policy(body: Mapping[str, Any], base: TenantPolicy | None) -> TenantPolicy:
    """``base`` with the policy fields ``body`` sets (null: no limit), checked as
    ``[tenants.policy]`` is."""
    changes = {name: body[name] for name in _POLICY if name in body}
    models = changes.get("models")
    if isinstance(models, list):
        if len(models) > MAX_MODELS:
            raise _invalid("models", f"at most {MAX_MODELS} names")
        for model in models:
            _text(model, "models", limit=MAX_MODEL_NAME, empty=False)
    merged = {**(base.to_json() if base is not None else {}), **changes}
    try:
        return PolicyConfig.model_validate(merged, strict=True).build()
    except ValidationError as exc:
        error = exc.errors()[0]
        param = ".".join(str(part) for part in error["loc"]) or "body"
        raise _invalid(param, error["msg"]) from None


def _seconds(value: object, param: str) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool):
        try:
            seconds = float(value)
        except OverflowError:  # an integer past a float's range
            pass
        else:
            if math.isfinite(seconds):
                return seconds
    raise _invalid(param, "must be a number of seconds")


def _expiry(body: Mapping[str, Any], now: float, current: float | None) -> float | None:
    if "expires_at" in body and "expires_in" in body:
        raise _invalid("expires_in", "send expires_at or expires_in, not both")
    for param in ("expires_at", "expires_in"):
        value = body.get(param)
        if value is None:
            continue
        seconds = _seconds(value, param)
        at = seconds if param == "expires_at" else now + seconds
        if at <= now:
            raise _invalid(param, "must be in the future")
        return at
    return None if "expires_at" in body or "expires_in" in body else current


def _tags(value: object) -> tuple[str, ...]:
    if not isinstance(value, list) or len(value) > MAX_TAGS:
        raise _invalid("tags", f"must be a list of at most {MAX_TAGS} strings")
    tags = [_text(tag, "tags", limit=MAX_TAG, empty=False) for tag in value]
    return tuple(dict.fromkeys(tags))


def _depth(value: object) -> int:
    """How deeply ``value`` nests, walked without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        deepest = max(deepest, depth)
        if depth > MAX_METADATA_DEPTH:
            break
        children = (
            item.values() if isinstance(item, dict) else item if isinstance(item, list) else ()
        )
        stack.extend((child, depth + 1) for child in children)
    return deepest


def _metadata(value: object) -> dict[str, Any]:
    if not isinstance(value, dict) or len(value) > MAX_METADATA:
        raise _invalid("metadata", f"must be an object of at most {MAX_METADATA} entries")
    for name in value:
        _text(name, "metadata", limit=MAX_METADATA_KEY, empty=False)
    if _depth(value) > MAX_METADATA_DEPTH:
        raise _invalid("metadata", f"nests more than {MAX_METADATA_DEPTH} levels deep")
    try:
        size = len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode())
    except UnicodeEncodeError:
        raise _invalid("metadata", "holds a lone surrogate, which is not text") from None
    if size > MAX_METADATA_BYTES:
        raise _invalid("metadata", f"is {size} bytes of JSON; at most {MAX_METADATA_BYTES}")
    return value


def create_key(body: object, *, now: float) -> tuple[VirtualKey, str]:
    """A new key (and its secret) from a create request's fields; InvalidRequestError naming
    the field that is wrong."""
    fields = _fields(body, _CREATABLE)
    tenant = fields.get("tenant")
    return new_key(
        tenant=None if tenant is None else _text(tenant, "tenant", limit=MAX_TENANT, empty=False),
        name=_name(fields.get("name")),
        policy=_policy(fields, None),
        expires_at=_expiry(fields, now, None),
        tags=_tags(fields["tags"]) if fields.get("tags") is not None else (),
        metadata=_metadata(fields["metadata"]) if fields.get("metadata") is not None else None,
        now=now,
    )


def update_key(key: VirtualKey, body: object, *, now: float) -> VirtualKey:
    """``key`` with the fields an update request sets; null clears a limit, the budget, the
    expiry, the tags or the metadata."""
    fields = _fields(body, _UPDATABLE)
    changes: dict[str, Any] = {}
    if "name" in fields:
        changes["name"] = _name(fields["name"])
    if any(name in fields for name in _POLICY):
        changes["policy"] = _policy(fields, key.policy)
    if "expires_at" in fields or "expires_in" in fields:
        changes["expires_at"] = _expiry(fields, now, key.expires_at)
    if "tags" in fields:
        changes["tags"] = _tags(fields["tags"]) if fields["tags"] is not None else ()
    if "metadata" in fields:
        metadata = _metadata(fields["metadata"]) if fields["metadata"] is not None else {}
        changes["metadata"] = MappingProxyType(dict(metadata))
    return replace(key, **changes) if changes else key


@dataclass(frozen=True, slots=True)
class UsageQuery:
    """What a usage report covers: days ``since`` to ``until`` (both included), one tenant
    or all, summed by ``group_by``."""

    since: str
    until: str
    tenant: str | None
    group_by: tuple[str, ...]


def _day(value: str | None, param: str, default: dt.date) -> dt.date:
    if value is None:
        return default
    if not _DAY.fullmatch(value):
        raise _invalid(param, "must be a date, YYYY-MM-DD")
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise _invalid(param, "must be a date, YYYY-MM-DD") from None


def usage_query(
    *,
    since: str | None,
    until: str | None,
    tenant: str | None,
    group_by: str | None,
    now: float,
) -> UsageQuery:
    """A usage report's query from its parameters (strings, as a URL or a command line gives
    them); by default the last 30 days (UTC), by day, tenant and model."""
    today = dt.datetime.fromtimestamp(now, dt.UTC).date()
    last = _day(until, "until", today)
    # Never before 0001-01-01, where the calendar of dt.date begins.
    first = _day(since, "since", dt.date.fromordinal(max(1, last.toordinal() - USAGE_DAYS)))
    if first > last:
        raise _invalid("since", "must not be after until")
    groups: tuple[str, ...] = DEFAULT_GROUPS
    if group_by is not None:
        try:
            groups = group_fields([name.strip() for name in group_by.split(",") if name.strip()])
        except ValueError:
            raise _invalid("group_by", f"names some of {', '.join(GROUP_FIELDS)}") from None
    if tenant is not None:
        tenant = _text(tenant, "tenant", limit=MAX_TENANT, empty=False)
    return UsageQuery(first.isoformat(), last.isoformat(), tenant, groups)


def usage_body(query: UsageQuery, rows: Sequence[UsageRow]) -> dict[str, Any]:
    """A usage report as the admin API answers it: the rows and their total."""
    total = {k: v for k, v in dataclasses.asdict(totals(rows)).items() if k not in _NAMES}
    return {
        "object": "list",
        "since": query.since,
        "until": query.until,
        "tenant": query.tenant,
        "group_by": list(query.group_by),
        "data": [dataclasses.asdict(row) for row in rows],
        "total": total,
    }


_Handler = Callable[[Request], Awaitable[Response]]


def _no_constants(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def _public(key: VirtualKey) -> JSONResponse:
    return JSONResponse(key.public())


class TenantAdmin:
    """The admin API's handlers, bound to one gateway."""

    def __init__(self, gateway: GatewayCore) -> None:
        self.gateway = gateway

    def routes(self) -> list[Route]:
        # One route per path: a 405's Allow then lists every method the path takes.
        return [
            self._route("/v1/keys", {"POST": self.create, "GET": self.list_keys}),
            self._route(
                "/v1/keys/{key_id}",
                {"GET": self.show, "PATCH": self.update, "DELETE": self.revoke},
            ),
            self._route("/v1/keys/{key_id}/revoke", {"POST": self.revoke}),
            self._route("/v1/usage", {"GET": self.usage}),
        ]

    def _route(self, path: str, handlers: Mapping[str, _Handler]) -> Route:
        """``path``'s handlers by method, behind the admin key, their LeapErrors answered as
        OpenAI error bodies."""

        async def endpoint(request: Request) -> Response:
            refused = self.gateway.access.refusal(request.scope, admin=True)
            if refused is not None:
                return error_response(refused)
            handler = handlers["GET" if request.method == "HEAD" else request.method]
            try:
                return await handler(request)
            except LeapError as error:
                return error_response(error)
            except ClientGone:
                return Response(status_code=CLIENT_CLOSED)

        return Route(path, endpoint, methods=list(handlers))

    async def _body(self, request: Request) -> object:
        limit = self.gateway.config.server.max_body_bytes
        raw = await read_body(request.receive, request.scope, limit)
        try:
            return json.loads(raw or b"{}", parse_constant=_no_constants)
        except (ValueError, RecursionError):
            raise InvalidRequestError("The body is not valid JSON") from None

    async def _key(self, request: Request) -> VirtualKey:
        key_id = request.path_params["key_id"]
        key = await self.gateway.tenancy.keys.get(key_id)
        if key is None:
            raise missing(key_id)
        return key

    async def _put(self, key: VirtualKey) -> None:
        tenancy = self.gateway.tenancy
        await tenancy.keys.put(key)
        tenancy.identity.forget(key)

    async def create(self, request: Request) -> Response:
        """``POST /v1/keys``: a new key; the only answer that shows its secret."""
        tenancy = self.gateway.tenancy
        key, secret = create_key(await self._body(request), now=tenancy.clock.time())
        await tenancy.keys.add(key)
        headers = {"cache-control": "no-store"}
        return JSONResponse({**key.public(), "secret": secret}, status_code=201, headers=headers)

    async def list_keys(self, request: Request) -> Response:
        """``GET /v1/keys``: every key (of one ``?tenant=``), oldest first."""
        tenant = request.query_params.get("tenant")
        keys = await self.gateway.tenancy.keys.list()
        data = [key.public() for key in keys if tenant is None or key.tenant == tenant]
        return JSONResponse({"object": "list", "data": data})

    async def show(self, request: Request) -> Response:
        """``GET /v1/keys/{id}``."""
        return _public(await self._key(request))

    async def update(self, request: Request) -> Response:
        """``PATCH /v1/keys/{id}``: change its name, limits, budget, expiry, tags, metadata."""
        key = await self._key(request)
        now = self.gateway.tenancy.clock.time()
        updated = update_key(key, await self._body(request), now=now)
        if updated != key:
            await self._put(updated)
        return _public(updated)

    async def revoke(self, request: Request) -> Response:
        """``DELETE /v1/keys/{id}``, ``POST /v1/keys/{id}/revoke``: refused from now on; the
        record stays, for the usage reports."""
        key = await self._key(request)
        revoked = key.revoked(self.gateway.tenancy.clock.time())
        if revoked is not key:
            await self._put(revoked)
        return _public(revoked)

    async def usage(self, request: Request) -> Response:
        """``GET /v1/usage?since=&until=&tenant=&group_by=``."""
        tenancy = self.gateway.tenancy
        params = request.query_params
        query = usage_query(
            since=params.get("since"),
            until=params.get("until"),
            tenant=params.get("tenant"),
            group_by=params.get("group_by"),
            now=tenancy.clock.time(),
        )
        await tenancy.flush_usage()
        rows = await tenancy.usage.report(
            since=query.since, until=query.until, tenant=query.tenant, group_by=query.group_by
        )
        return JSONResponse(usage_body(query, rows))


def tenant_routes(gateway: GatewayCore) -> list[Route]:
    """The admin API's routes of virtual keys and usage, for ``gateway``."""
    return TenantAdmin(gateway).routes()
