"""Scrubbing secrets out of text that may leave the process (error messages, logs)."""

from __future__ import annotations

import base64
import urllib.parse
from collections.abc import Iterable

__all__ = ["REDACTED", "Redactor", "credential_name", "public_url"]

REDACTED = "[redacted]"
# Secrets shorter than this are not scrubbed: replacing "a" everywhere would wreck every text.
_MIN_SECRET_LENGTH = 6
# Parts of a header or query parameter name that say its value is a credential.
_CREDENTIAL_WORDS = (
    "auth",
    "cookie",
    "credential",
    "key",
    "passw",
    "secret",
    "session",
    "sig",
    "token",
)


def _variants(secret: str) -> set[str]:
    raw = secret.encode()
    found = {secret, urllib.parse.quote(secret, safe=""), urllib.parse.quote_plus(secret)}
    # quote() keeps "/" by default, and so do most URL builders.
    found |= {urllib.parse.quote(secret), urllib.parse.quote_plus(secret, safe="/")}
    # base64 of the secret at each of the three byte alignments it can have inside a longer
    # encoded string; the stable middle of each encoding is what would appear.
    for pad in range(3):
        encoded = base64.b64encode(b"\0" * pad + raw).decode()
        # Only the characters made entirely of the secret's bits.
        found.add(encoded[(8 * pad + 5) // 6 : 8 * (pad + len(raw)) // 6])
    return {v for v in found if len(v) >= _MIN_SECRET_LENGTH}


class Redactor:
    """Replaces every known secret, raw, URL-encoded or base64, with ``[redacted]``."""

    __slots__ = ("_needles",)

    def __init__(self, secrets: Iterable[str]) -> None:
        needles: set[str] = set()
        for secret in secrets:
            if secret and len(secret) >= _MIN_SECRET_LENGTH:
                needles |= _variants(secret)
        self._needles = sorted(needles, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for needle in self._needles:
            if needle in text:
                text = text.replace(needle, REDACTED)
        return text

    def __repr__(self) -> str:
        return f"Redactor({len(self._needles)} patterns)"


def public_url(url: str) -> str:
    """``url`` without what may hold a key: its query, fragment and user info."""
    parts = urllib.parse.urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return parts._replace(netloc=host, query="", fragment="").geturl()


def credential_name(name: str) -> bool:
    """True when a header or query parameter called ``name`` carries a credential (``key``,
    ``x-api-key``, ``access_token``, ``sig``...); ``api-version`` or ``project`` do not."""
    lowered = name.lower()
    return any(word in lowered for word in _CREDENTIAL_WORDS)
