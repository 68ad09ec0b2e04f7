"""A real OAuth 2.1 / OpenID Connect issuer on 127.0.0.1 for tests: the discovery documents,
the JWKS, key rotation and tokens.

    async with OAuthIssuer() as issuer:
        validator = TokenValidator(issuer.config())
        token = issuer.token(sub="alice", scope="chat")          # RS256, the current RSA key
        token = issuer.token(alg="ES256", kid=None, exp=None)     # no kid header, no exp claim

Tokens are minted on ``clock`` (``time()``): give the issuer the clock the validator uses.
Every request is counted by path (``fetches``); ``jwks_fetches`` and ``discovery_fetches``
are the usual questions.
"""

from __future__ import annotations

import asyncio
import enum
import json
import secrets
from collections import Counter
from collections.abc import Iterable
from typing import Any

import jwt
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from leapasgi.clock import Clock, SystemClock
from leapasgi.config import OAuthConfig

__all__ = [
    "AUDIENCE",
    "AUTO",
    "JWKS_PATH",
    "OIDC_PATH",
    "RFC8414_PATH",
    "OAuthIssuer",
    "SigningKey",
    "hand_made",
]

AUDIENCE = "https://gateway.test"
OIDC_PATH = "/.well-known/openid-configuration"
RFC8414_PATH = "/.well-known/oauth-authorization-server"
JWKS_PATH = "/jwks.json"


class _Auto(enum.Enum):
    AUTO = enum.auto()


AUTO = _Auto.AUTO  # token(kid=AUTO): the kid of the key that signs


class SigningKey:
    """A private key of the issuer and its kid; ``jwk`` is the public half as published."""

    def __init__(self, kid: str, private: Any) -> None:
        self.kid = kid
        self.private = private
        self.jwk: dict[str, Any] = {
            **_public_jwk(private),
            "kid": kid,
            "use": "sig",
        }

    @classmethod
    def rsa(cls, kid: str, *, bits: int = 2048) -> SigningKey:
        return cls(kid, rsa.generate_private_key(public_exponent=65537, key_size=bits))

    @classmethod
    def ec(cls, kid: str, curve: ec.EllipticCurve | None = None) -> SigningKey:
        return cls(kid, ec.generate_private_key(curve or ec.SECP256R1()))

    @classmethod
    def ed25519(cls, kid: str) -> SigningKey:
        return cls(kid, ed25519.Ed25519PrivateKey.generate())

    def public_pem(self) -> bytes:
        return bytes(
            self.private.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )


def _public_jwk(private: Any) -> dict[str, Any]:
    public = private.public_key()
    if isinstance(private, rsa.RSAPrivateKey):
        return jwt.algorithms.RSAAlgorithm.to_jwk(public, as_dict=True)
    if isinstance(private, ec.EllipticCurvePrivateKey):
        return jwt.algorithms.ECAlgorithm.to_jwk(public, as_dict=True)
    return jwt.algorithms.OKPAlgorithm.to_jwk(public, as_dict=True)


class OAuthIssuer:
    """An aiohttp.web issuer on 127.0.0.1; an async context manager.

    ``openid``: serve OpenID Connect's discovery document (else only RFC 8414's).
    ``discovery_issuer``: the issuer its discovery documents name (None: its own URL).
    ``status``: answer every request with this status instead (an issuer in trouble).
    ``jwks_body``: serve these bytes as the JWKS. ``extra_jwks``: more JWKs to publish.
    ``gate``: when set, requests wait for it (to hold a fetch in flight).
    """

    def __init__(self, *, clock: Clock | None = None, audience: str = AUDIENCE) -> None:
        self.clock: Clock = clock or SystemClock()
        self.audience = audience
        self.keys: list[SigningKey] = []
        self.openid = True
        self.discovery_issuer: str | None = None
        self.status: int | None = None
        self.jwks_body: bytes | None = None
        self.extra_jwks: list[dict[str, Any]] = []
        self.gate: asyncio.Event | None = None
        self.requested = asyncio.Event()  # set at each request
        self.fetches: Counter[str] = Counter()
        self._generation = 0
        self._runner: web.AppRunner | None = None
        self.port = 0
        self.rotate()

    @property
    def url(self) -> str:
        """The issuer identifier, as ``iss`` and the discovery documents carry it."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def jwks_url(self) -> str:
        return self.url + JWKS_PATH

    @property
    def jwks_fetches(self) -> int:
        return self.fetches[JWKS_PATH]

    @property
    def discovery_fetches(self) -> int:
        return self.fetches[OIDC_PATH] + self.fetches[RFC8414_PATH]

    def config(self, **overrides: Any) -> OAuthConfig:
        """An OAuthConfig trusting this issuer (audience: ``audience``)."""
        settings: dict[str, Any] = {"issuer": self.url, "audience": [self.audience]}
        settings.update(overrides)
        return OAuthConfig.model_validate(settings)

    def rotate(self, *, keep: bool = False) -> None:
        """New RSA, EC P-256 and Ed25519 keys with new kids ("rsa-2", "ec-2", "ed-2"...);
        the old ones stay published only with ``keep``."""
        self._generation += 1
        fresh = [
            SigningKey.rsa(f"rsa-{self._generation}"),
            SigningKey.ec(f"ec-{self._generation}"),
            SigningKey.ed25519(f"ed-{self._generation}"),
        ]
        self.keys = [*fresh, *self.keys] if keep else fresh

    def key_for(self, alg: str) -> SigningKey:
        """The current key that signs ``alg``."""
        kind = {"R": rsa.RSAPrivateKey, "P": rsa.RSAPrivateKey, "E": ec.EllipticCurvePrivateKey}
        wanted = ed25519.Ed25519PrivateKey if alg == "EdDSA" else kind[alg[0]]
        return next(key for key in self.keys if isinstance(key.private, wanted))

    def claims(self, *, lifetime: float = 300.0, **overrides: Any) -> dict[str, Any]:
        """A token's claims: iss, aud, sub "alice", iat, nbf and exp (``lifetime`` seconds
        on ``clock``), with ``overrides``; an override of None leaves the claim out."""
        now = int(self.clock.time())
        claims: dict[str, Any] = {
            "iss": self.url,
            "aud": self.audience,
            "sub": "alice",
            "iat": now,
            "nbf": now,
            "exp": now + int(lifetime),
            "jti": secrets.token_hex(8),
        }
        claims.update(overrides)
        return {name: value for name, value in claims.items() if value is not None}

    def token(
        self,
        *,
        alg: str = "RS256",
        kid: str | _Auto | None = AUTO,
        key: SigningKey | None = None,
        headers: dict[str, Any] | None = None,
        lifetime: float = 300.0,
        **claims: Any,
    ) -> str:
        """A signed access token: ``alg`` with the current key for it (or ``key``), its kid
        in the header (``kid`` names another; None: no kid), ``headers`` added."""
        signer = key or self.key_for(alg)
        header = dict(headers or {})
        header["typ"] = header.get("typ", "at+jwt")
        if kid is AUTO:
            header["kid"] = signer.kid
        elif kid is not None:
            header["kid"] = kid
        return jwt.encode(
            self.claims(lifetime=lifetime, **claims), signer.private, algorithm=alg, headers=header
        )

    def jwks(self) -> dict[str, Any]:
        return {"keys": [key.jwk for key in self.keys] + list(self.extra_jwks)}

    def discovery(self) -> dict[str, Any]:
        return {
            "issuer": self.discovery_issuer or self.url,
            "jwks_uri": self.jwks_url,
            "authorization_endpoint": self.url + "/authorize",
            "token_endpoint": self.url + "/token",
            "response_types_supported": ["code"],
            "code_challenge_methods_supported": ["S256"],
        }

    async def __aenter__(self) -> OAuthIssuer:
        await self.start()
        return self

    async def start(self) -> None:
        """Serve; after aclose(), on the same port again (the issuer is back)."""
        app = web.Application()
        app.router.add_get("/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop serving: the issuer becomes unreachable (connections are refused)."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _handle(self, request: web.Request) -> web.Response:
        path = request.path
        self.fetches[path] += 1
        self.requested.set()
        if self.gate is not None:
            await self.gate.wait()
        if self.status is not None:
            return web.json_response({"error": "unavailable"}, status=self.status)
        if path == JWKS_PATH:
            if self.jwks_body is not None:
                return web.Response(body=self.jwks_body, content_type="application/json")
            return web.json_response(self.jwks())
        if path == RFC8414_PATH or (path == OIDC_PATH and self.openid):
            return web.json_response(self.discovery())
        return web.json_response({"error": "not_found"}, status=404)


def hand_made(header: dict[str, Any], claims: dict[str, Any], signature: bytes = b"") -> str:
    """A compact JWS put together by hand (for tokens no library would make)."""
    parts: Iterable[bytes] = (
        jwt.utils.base64url_encode(json.dumps(header).encode()),
        jwt.utils.base64url_encode(json.dumps(claims).encode()),
        jwt.utils.base64url_encode(signature),
    )
    return b".".join(parts).decode()
