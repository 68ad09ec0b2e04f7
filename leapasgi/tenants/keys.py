"""Virtual keys: making one (``new_key``), their JSON form (one place, for every store), and
``SqliteKeyStore``, the key store of one host.

A key's secret is shown once, when it is made, and never kept: stores hold its digest
(``key_digest``) and its first characters (the hint).
"""

from __future__ import annotations

import json
import secrets
import sqlite3
from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Any

from ..exceptions import ConflictError, NotFoundError, StoreUnavailableError
from ._sqlite import SqliteFile
from .base import KEY_PREFIX, VirtualKey, key_digest
from .policy import Budget, Period, TenantPolicy

__all__ = [
    "SqliteKeyStore",
    "key_from_json",
    "key_to_json",
    "new_key",
    "policy_from_json",
]

# Random bytes in a secret (43 url-safe characters) and in a key id (16 hex digits).
SECRET_BYTES = 32
ID_BYTES = 8
# Characters of the secret kept to tell keys apart: "lk-" and four more.
HINT_LENGTH = 7


def new_key(
    *,
    tenant: str | None,
    name: str = "",
    policy: TenantPolicy,
    expires_at: float | None,
    tags: Iterable[str] | None = None,
    metadata: Mapping[str, Any] | None = None,
    now: float,
) -> tuple[VirtualKey, str]:
    """A new key and its secret (shown once, never kept); the tenant is the key's own id
    unless one is given."""
    secret = KEY_PREFIX + secrets.token_urlsafe(SECRET_BYTES)
    key_id = "key_" + secrets.token_hex(ID_BYTES)
    key = VirtualKey(
        id=key_id,
        digest=key_digest(secret),
        hint=secret[:HINT_LENGTH],
        tenant=tenant if tenant is not None else key_id,
        name=name,
        policy=policy,
        created_at=now,
        expires_at=expires_at,
        tags=tuple(tags or ()),
        metadata=MappingProxyType(dict(metadata or {})),
    )
    return key, secret


def _int(body: Mapping[str, Any], name: str) -> int | None:
    value = body.get(name)
    if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
        raise ValueError(f"{name} is not an integer")
    return value


def _number(body: Mapping[str, Any], name: str) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise ValueError(f"{name} is not a number")
    return float(value)


def policy_from_json(body: Mapping[str, Any]) -> TenantPolicy:
    """The policy ``TenantPolicy.to_json`` made (missing fields: no limit); ValueError when it is
    not one. A client's fields are validated before they get here (``PolicyConfig``)."""
    models = body.get("models")
    if models is not None and (
        not isinstance(models, list) or not all(isinstance(m, str) for m in models)
    ):
        raise ValueError("models is not a list of names")
    raw_budget = body.get("budget")
    budget = None
    if raw_budget is not None:
        if not isinstance(raw_budget, Mapping):
            raise ValueError("budget is not an object")
        usd = _number(raw_budget, "usd")
        if usd is None:
            raise ValueError("budget.usd is missing")
        period = Period(raw_budget.get("period", "month"))
        budget = Budget(usd, period, _number(raw_budget, "alert_at"))
    return TenantPolicy(
        models=frozenset(models) if models is not None else None,
        rpm=_int(body, "rpm"),
        tpm=_int(body, "tpm"),
        max_in_flight=_int(body, "max_in_flight"),
        budget=budget,
        hedge=body.get("hedge", True) is not False,
        priority=_int(body, "priority") or 0,
        max_priority=_int(body, "max_priority"),
    )


def key_to_json(key: VirtualKey) -> str:
    """A key as the stores keep it (compact JSON, with its digest, never a secret)."""
    record = {
        "id": key.id,
        "digest": key.digest,
        "hint": key.hint,
        "tenant": key.tenant,
        "name": key.name,
        "policy": key.policy.to_json(),
        "created_at": key.created_at,
        "expires_at": key.expires_at,
        "revoked_at": key.revoked_at,
        "tags": list(key.tags),
        "metadata": dict(key.metadata),
    }
    return json.dumps(record, separators=(",", ":"))


def key_from_json(text: str | bytes) -> VirtualKey:
    """The key ``key_to_json`` wrote; ValueError when ``text`` is not one."""
    try:
        record = json.loads(text)
        metadata = record.get("metadata") or {}
        if not isinstance(metadata, dict):
            raise ValueError("metadata is not an object")
        return VirtualKey(
            id=str(record["id"]),
            digest=str(record["digest"]),
            hint=str(record["hint"]),
            tenant=str(record["tenant"]),
            name=str(record.get("name") or ""),
            policy=policy_from_json(record.get("policy") or {}),
            created_at=float(record.get("created_at") or 0.0),
            expires_at=_time(record.get("expires_at")),
            revoked_at=_time(record.get("revoked_at")),
            tags=tuple(str(tag) for tag in record.get("tags") or ()),
            metadata=MappingProxyType(metadata),
        )
    except (KeyError, TypeError, AttributeError, RecursionError) as exc:
        raise ValueError(f"not a stored virtual key ({type(exc).__name__})") from exc


def _time(value: Any) -> float | None:
    return None if value is None else float(value)


def unreadable(key_id: str) -> StoreUnavailableError:
    """The error for a stored key that is not a key's JSON (the store was written by
    something else, or damaged)."""
    return StoreUnavailableError(f"The stored virtual key {key_id[:40]!r} is unreadable")


def _read(key_id: str, text: str | bytes) -> VirtualKey:
    try:
        return key_from_json(text)
    except ValueError:
        raise unreadable(key_id) from None


def missing(key_id: str) -> NotFoundError:
    """The error for a key id no store knows."""
    return NotFoundError(f"No virtual key {key_id[:40]!r}", param="id", code="key_not_found")


_SCHEMA = """
CREATE TABLE IF NOT EXISTS virtual_keys (
    id TEXT PRIMARY KEY,
    digest TEXT NOT NULL UNIQUE,
    created_at REAL NOT NULL,
    record TEXT NOT NULL
);
"""


class SqliteKeyStore:
    """Virtual keys in a SQLite table: by id, and by digest (a unique index)."""

    def __init__(self, database: SqliteFile) -> None:
        self._db = database
        database.ensure(_SCHEMA)

    async def add(self, key: VirtualKey) -> None:
        def insert(c: sqlite3.Connection) -> bool:
            try:
                c.execute(
                    "INSERT INTO virtual_keys (id, digest, created_at, record) VALUES (?, ?, ?, ?)",
                    (key.id, key.digest, key.created_at, key_to_json(key)),
                )
            except sqlite3.IntegrityError:
                return False
            return True

        if not await self._db.run(insert):
            raise ConflictError(f"A virtual key with the id {key.id!r} or its digest exists")

    async def find(self, digest: str) -> VirtualKey | None:
        rows = await self._db.query(
            "SELECT id, record FROM virtual_keys WHERE digest = ?", (digest,)
        )
        return _read(*rows[0]) if rows else None

    async def get(self, key_id: str) -> VirtualKey | None:
        rows = await self._db.query("SELECT id, record FROM virtual_keys WHERE id = ?", (key_id,))
        return _read(*rows[0]) if rows else None

    async def list(self) -> list[VirtualKey]:
        rows = await self._db.query("SELECT id, record FROM virtual_keys ORDER BY created_at, id")
        return [_read(*row) for row in rows]

    async def put(self, key: VirtualKey) -> None:
        """Replace the key with ``key.id`` (its digest never changes); NotFoundError when
        there is none."""
        replaced = await self._db.run(
            lambda c: (
                c.execute(
                    "UPDATE virtual_keys SET record = ? WHERE id = ? AND digest = ?",
                    (key_to_json(key), key.id, key.digest),
                ).rowcount
            )
        )
        if not replaced:
            raise missing(key.id)

    async def aclose(self) -> None:
        """Nothing to do: the database is closed by its owner (``TenantStores``)."""
