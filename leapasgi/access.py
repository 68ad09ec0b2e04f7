"""Who may call what: one access check for every route, mounted or not, HTTP and MCP.

Keys are kept only as SHA-256 digests and compared in constant time. A request presents its key
as ``Authorization: Bearer <key>``; the check reads it from the ASGI scope and answers with the
caller's role, or the error a refused caller gets (401, 403, or 404 for admin routes of a
gateway without an admin key).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Mapping
from enum import IntEnum
from typing import Any

from pydantic import SecretStr

from .exceptions import AuthenticationError, LeapError, NotFoundError, PermissionDeniedError

__all__ = [
    "TENANT_KEY",
    "AccessPolicy",
    "KeyDigests",
    "Role",
    "bearer_token",
    "key_digest",
    "owner_of",
]


class Role(IntEnum):
    """What a caller may do, in increasing order."""

    NONE = 0  # no valid key
    API = 1  # one of the API keys, or any caller when no API key is configured
    ADMIN = 2  # the admin key


def bearer_token(scope: Mapping[str, Any]) -> bytes | None:
    """The client's key: the token of an ``Authorization: Bearer ...`` header, else the
    ``x-api-key`` header's value (how Anthropic's SDKs and Claude Code send a key)."""
    api_key = None
    for name, value in scope["headers"]:
        if name == b"authorization":
            scheme, _, token = bytes(value).partition(b" ")
            if scheme.lower() == b"bearer" and token.strip():
                return token.strip()
            return None
        if name == b"x-api-key":
            api_key = bytes(value).strip() or None
    return api_key


# Where the caller a request was identified as (a ``Tenant``) is kept in its ASGI scope.
TENANT_KEY = "leapasgi.tenant"


def owner_of(scope: Mapping[str, Any]) -> str | None:
    """Whose a request is (its stored responses, its cache entries): a digest of the tenant it
    was identified as (a virtual key, an OAuth2 subject, a host-app user, a static key), else of
    the client's key; None when it sent none."""
    state = scope.get("state")
    tenant = state.get(TENANT_KEY) if isinstance(state, dict) else None
    if tenant is not None and tenant.source != "anonymous":
        return hashlib.sha256(tenant.subject.encode()).hexdigest()[:32]
    token = bearer_token(scope)
    return hashlib.sha256(token).hexdigest()[:32] if token else None


def key_digest(secret: str | bytes) -> str:
    """How a key is kept and looked up: its SHA-256, in hex. Gateway and virtual keys are
    long random strings, so a fast hash is enough (nothing to brute-force)."""
    raw = secret.encode() if isinstance(secret, str) else secret
    return hashlib.sha256(raw).hexdigest()


class KeyDigests:
    """Keys kept as digests only; a presented key or digest is compared with every one."""

    __slots__ = ("_digests",)

    def __init__(self, keys: Iterable[SecretStr]) -> None:
        self._digests = [key_digest(key.get_secret_value()) for key in keys]

    def __bool__(self) -> bool:
        return bool(self._digests)

    def match(self, token: bytes | None) -> bool:
        """Whether ``token`` is one of the keys."""
        if token is None or not self._digests:
            return False
        return self.match_digest(key_digest(token))

    def match_digest(self, digest: str) -> bool:
        """Whether ``digest`` (``key_digest`` of a key) is one of the keys'."""
        # Compare against every key, without stopping early, so timing tells nothing.
        found = False
        for known in self._digests:
            found |= hmac.compare_digest(digest, known)
        return found


class AccessPolicy:
    """The gateway's keys: API keys for its API routes (none configured: open to all), and an
    admin key for the admin routes (none configured: no admin routes). The admin key is also
    accepted wherever an API key is."""

    __slots__ = ("_admin", "_api")

    def __init__(
        self, api_keys: Iterable[SecretStr] = (), admin_key: SecretStr | None = None
    ) -> None:
        self._api = KeyDigests(api_keys)
        self._admin = KeyDigests([admin_key] if admin_key is not None else [])

    @property
    def keys_required(self) -> bool:
        """True when API routes need a key."""
        return bool(self._api)

    @property
    def has_admin(self) -> bool:
        """True when an admin key is configured (the admin routes exist)."""
        return bool(self._admin)

    def role(self, scope: Mapping[str, Any]) -> Role:
        """The role of the caller of an ASGI request."""
        token = bearer_token(scope)
        if self._admin.match(token):
            return Role.ADMIN
        if not self._api or self._api.match(token):
            return Role.API
        return Role.NONE

    def refusal(self, scope: Mapping[str, Any], *, admin: bool = False) -> LeapError | None:
        """None when the caller may go on; else the error to answer with: 401 without a
        valid key, 403 for an API key on an admin route, 404 for an admin route when no admin
        key is configured."""
        if not admin:
            if not self._api:
                return None  # no API keys: open to every caller
        elif not self._admin:
            return NotFoundError("Not found", code="not_found")
        role = self.role(scope)
        if role is Role.ADMIN or (role is Role.API and not admin):
            return None
        if role is Role.API and self._api:
            return PermissionDeniedError("This route needs the admin key")
        which = "admin key" if admin else "API key"
        return AuthenticationError(f"Invalid or missing {which}")

    def __repr__(self) -> str:
        return f"AccessPolicy(api_keys={self.keys_required}, admin={self.has_admin})"
