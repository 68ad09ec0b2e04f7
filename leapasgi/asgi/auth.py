"""Bearer-key checks in constant time; keys are kept only as digests."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable

from pydantic import SecretStr
from starlette.types import Scope

__all__ = ["KeyChecker", "bearer_token"]


def bearer_token(scope: Scope) -> bytes | None:
    """The token of an ``Authorization: Bearer ...`` header, if any."""
    for name, value in scope["headers"]:
        if name == b"authorization":
            scheme, _, token = bytes(value).partition(b" ")
            if scheme.lower() == b"bearer" and token.strip():
                return token.strip()
            return None
    return None


class KeyChecker:
    """Accepts a request that presents one of the configured keys."""

    __slots__ = ("_digests",)

    def __init__(self, keys: Iterable[SecretStr]) -> None:
        self._digests = [hashlib.sha256(key.get_secret_value().encode()).digest() for key in keys]

    @property
    def enabled(self) -> bool:
        """False when no key is configured: everyone is let in."""
        return bool(self._digests)

    def allows(self, scope: Scope) -> bool:
        """True when auth is off, or the request's bearer key is one of ours."""
        if not self._digests:
            return True
        token = bearer_token(scope)
        if token is None:
            return False
        presented = hashlib.sha256(token).digest()
        # Compare against every key, without stopping early, so timing tells nothing.
        found = False
        for digest in self._digests:
            found |= hmac.compare_digest(presented, digest)
        return found

    def __repr__(self) -> str:
        return f"KeyChecker({len(self._digests)} keys)"
