"""A real OAuth 2.1 / OpenID Connect issuer on 127.0.0.1 for tests: the discovery documents,
the JWKS, key rotation and tokens, and the authorization server an MCP client signs in with.

    async with OAuthIssuer() as issuer:
        validator = TokenValidator(issuer.config())
        token = issuer.token(sub="alice", scope="chat")          # RS256, the current RSA key
        token = issuer.token(alg="ES256", kid=None, exp=None)     # no kid header, no exp claim

Tokens are minted on ``clock`` (``time()``): give the issuer the clock the validator uses.
Every request is counted by path (``fetches``); ``jwks_fetches`` and ``discovery_fetches``
are the usual questions.

As an authorization server it has dynamic client registration (RFC 7591, ``/register``), the
authorization code grant with PKCE S256 only (``/authorize``, ``/token``; ``user`` is signed in
and consents at once) and refresh tokens. A token is only granted for a resource indicator
(RFC 8707) in ``resources``, which maps it to the audience its access tokens carry:

    issuer.resources[f"{gateway}/mcp"] = AUDIENCE                 # the gateway's audience

``IssuerThread`` serves an issuer from a thread of its own, for clients that block theirs.
"""

from __future__ import annotations

import asyncio
import base64
import enum
import hashlib
import json
import secrets
import threading
from collections import Counter
from collections.abc import Coroutine, Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlencode

import jwt
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from leapasgi.clock import Clock, SystemClock
from leapasgi.config import OAuthConfig

__all__ = [
    "AUDIENCE",
    "AUTHORIZE_PATH",
    "AUTO",
    "JWKS_PATH",
    "OIDC_PATH",
    "REGISTER_PATH",
    "RFC8414_PATH",
    "TOKEN_PATH",
    "IssuerThread",
    "OAuthIssuer",
    "SigningKey",
    "hand_made",
]

AUDIENCE = "https://gateway.test"
OIDC_PATH = "/.well-known/openid-configuration"
RFC8414_PATH = "/.well-known/oauth-authorization-server"
JWKS_PATH = "/jwks.json"
REGISTER_PATH = "/register"
AUTHORIZE_PATH = "/authorize"
TOKEN_PATH = "/token"
# How a registered client authenticates at the token endpoint (RFC 7591 §2); the first is
# RFC 7591's default when the client names none.
AUTH_METHODS = ("client_secret_basic", "client_secret_post", "none")
# Seconds the issuer's thread is given to start or stop serving.
THREAD_TIMEOUT = 10.0


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
    ``resources``: the resource indicators tokens are granted for, each with its audience.
    ``user``: who signs in at ``/authorize``. ``token_lifetime``: seconds the access tokens
    of ``/token`` last (and its ``expires_in``). ``clients``: the registered clients by id;
    ``grants``: the grant type of each token ``/token`` issued.
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
        self.resources: dict[str, str] = {}
        self.user = "alice"
        self.token_lifetime = 300
        self.clients: dict[str, dict[str, Any]] = {}
        self.grants: list[str] = []
        self._codes: dict[str, _Grant] = {}
        self._refresh_tokens: dict[str, _Grant] = {}
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
            "authorization_endpoint": self.url + AUTHORIZE_PATH,
            "token_endpoint": self.url + TOKEN_PATH,
            "registration_endpoint": self.url + REGISTER_PATH,
            "response_types_supported": ["code"],
            "grant_types_supported": ["authorization_code", "refresh_token"],
            "token_endpoint_auth_methods_supported": list(AUTH_METHODS),
            "code_challenge_methods_supported": ["S256"],
            "authorization_response_iss_parameter_supported": True,
        }

    async def __aenter__(self) -> OAuthIssuer:
        await self.start()
        return self

    async def start(self) -> None:
        """Serve; after aclose(), on the same port again (the issuer is back)."""
        app = web.Application()
        app.router.add_get("/{tail:.*}", self._handle)
        app.router.add_post("/{tail:.*}", self._handle)
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
        if request.method == "POST":
            if path == REGISTER_PATH:
                return await self._register(request)
            if path == TOKEN_PATH:
                return await self._token_endpoint(request)
            return web.json_response({"error": "not_found"}, status=404)
        if path == AUTHORIZE_PATH:
            return self._authorize(request)
        if path == JWKS_PATH:
            if self.jwks_body is not None:
                return web.Response(body=self.jwks_body, content_type="application/json")
            return web.json_response(self.jwks())
        if path == RFC8414_PATH or (path == OIDC_PATH and self.openid):
            return web.json_response(self.discovery())
        return web.json_response({"error": "not_found"}, status=404)

    async def _register(self, request: web.Request) -> web.Response:
        """RFC 7591: a client with the redirect URIs it asked for; a secret unless it asked
        for none."""
        try:
            metadata = await request.json()
        except ValueError:
            return _refusal("invalid_client_metadata", "The body is not JSON")
        uris = metadata.get("redirect_uris") if isinstance(metadata, dict) else None
        if not isinstance(uris, list) or not uris or not all(isinstance(u, str) for u in uris):
            return _refusal("invalid_redirect_uri", "redirect_uris: a list of URLs")
        method = metadata.get("token_endpoint_auth_method") or AUTH_METHODS[0]
        if method not in AUTH_METHODS:
            return _refusal("invalid_client_metadata", "token_endpoint_auth_method: not supported")
        client = {
            **metadata,
            "client_id": secrets.token_urlsafe(12),
            "client_id_issued_at": int(self.clock.time()),
            "token_endpoint_auth_method": method,
        }
        if method != "none":
            client["client_secret"] = secrets.token_urlsafe(24)
            client["client_secret_expires_at"] = 0
        self.clients[client["client_id"]] = client
        return web.json_response(client, status=201)

    def _authorize(self, request: web.Request) -> web.Response:
        """The authorization endpoint: ``user`` consents at once, and the browser is sent back
        to the client's redirect URI with a code (or an error) and ``state``."""
        query = request.query
        client = self.clients.get(query.get("client_id", ""))
        if client is None:
            return _refusal("invalid_client", "Unknown client_id")
        redirect_uri = query.get("redirect_uri", "")
        if redirect_uri not in client["redirect_uris"]:
            # Never redirect to a URI the client did not register (RFC 6749 §4.1.2.1).
            return _refusal("invalid_request", "redirect_uri is not registered")

        def back(**params: str) -> web.Response:
            if "state" in query:
                params["state"] = query["state"]
            params["iss"] = self.url  # RFC 9207
            joiner = "&" if "?" in redirect_uri else "?"
            return web.Response(
                status=302, headers={"Location": redirect_uri + joiner + urlencode(params)}
            )

        if query.get("response_type") != "code":
            return back(error="unsupported_response_type")
        challenge = query.get("code_challenge", "")
        if query.get("code_challenge_method") != "S256" or len(challenge) != 43:
            return back(error="invalid_request", error_description="PKCE with S256 is required")
        resource = query.get("resource", "")
        if resource not in self.resources:
            return back(error="invalid_target", error_description="Unknown resource")
        code = secrets.token_urlsafe(24)
        self._codes[code] = _Grant(
            client_id=client["client_id"],
            redirect_uri=redirect_uri,
            challenge=challenge,
            resource=resource,
            scope=query.get("scope"),
            sub=self.user,
        )
        return back(code=code)

    async def _token_endpoint(self, request: web.Request) -> web.Response:
        """The token endpoint: an authorization code (its PKCE verifier checked) or a refresh
        token (rotated) for an access token to the grant's resource."""
        form = await request.post()
        client_id = self._authenticated(request, form)
        if client_id is None:
            return _refusal("invalid_client", "Client authentication failed", status=401)
        grant_type = form.get("grant_type")
        if grant_type == "authorization_code":
            grant = self._codes.pop(str(form.get("code", "")), None)
            if grant is None or grant.client_id != client_id:
                return _refusal("invalid_grant", "Unknown or used authorization code")
            if form.get("redirect_uri") != grant.redirect_uri:
                return _refusal("invalid_grant", "redirect_uri differs from the authorization's")
            if _s256(str(form.get("code_verifier", ""))) != grant.challenge:
                return _refusal("invalid_grant", "The PKCE code_verifier does not match")
        elif grant_type == "refresh_token":
            grant = self._refresh_tokens.pop(str(form.get("refresh_token", "")), None)
            if grant is None or grant.client_id != client_id:
                return _refusal("invalid_grant", "Unknown or used refresh token")
        else:
            return _refusal("unsupported_grant_type", "Not a grant type of this issuer")
        if form.get("resource", grant.resource) != grant.resource:
            return _refusal("invalid_target", "Not the resource of the authorization")
        self.grants.append(grant_type)
        return web.json_response(self._issue(grant), headers={"Cache-Control": "no-store"})

    def _authenticated(self, request: web.Request, form: Mapping[str, Any]) -> str | None:
        """The id of the client the token request comes from, if its credentials hold: HTTP
        Basic or the form's, and a secret for a client that was given one."""
        client_id, secret = form.get("client_id"), form.get("client_secret")
        basic = request.headers.get("Authorization", "")
        if basic.startswith("Basic "):
            pair = base64.b64decode(basic.removeprefix("Basic ")).decode()
            client_id, _, secret = (unquote(part) for part in pair.partition(":"))
        client = self.clients.get(str(client_id))
        if client is None:
            return None
        expected = client.get("client_secret")
        if expected is not None and not secrets.compare_digest(str(secret or ""), expected):
            return None
        return str(client_id)

    def _issue(self, grant: _Grant) -> dict[str, Any]:
        """The token response: an access token for the grant's resource, a refresh token."""
        claims: dict[str, Any] = {
            "sub": grant.sub,
            "aud": self.resources[grant.resource],
            "client_id": grant.client_id,
            "scope": grant.scope,
        }
        refresh_token = secrets.token_urlsafe(24)
        self._refresh_tokens[refresh_token] = grant
        response = {
            "access_token": self.token(lifetime=self.token_lifetime, **claims),
            "token_type": "Bearer",
            "expires_in": self.token_lifetime,
            "refresh_token": refresh_token,
        }
        if grant.scope is not None:
            response["scope"] = grant.scope
        return response


@dataclass(frozen=True)
class _Grant:
    """What ``user`` let a client have: kept behind an authorization code or refresh token."""

    client_id: str
    redirect_uri: str
    challenge: str
    resource: str
    scope: str | None
    sub: str


def _s256(verifier: str) -> str:
    """PKCE's S256 code challenge of ``verifier`` (RFC 7636 §4.2)."""
    digest = hashlib.sha256(verifier.encode("ascii", "replace")).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def _refusal(error: str, description: str, *, status: int = 400) -> web.Response:
    """An OAuth error response (RFC 6749 §5.2)."""
    body = {"error": error, "error_description": description}
    return web.json_response(body, status=status, headers={"Cache-Control": "no-store"})


class IssuerThread:
    """Serves ``issuer`` from a thread with an event loop of its own, for tests whose clients
    block the thread they run on (the sync openai SDK); a context manager."""

    def __init__(self, issuer: OAuthIssuer | None = None) -> None:
        self.issuer = issuer or OAuthIssuer()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._serve, name="oauth-issuer", daemon=True)

    def __enter__(self) -> IssuerThread:
        self._thread.start()
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.stop()
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(THREAD_TIMEOUT)

    def start(self) -> None:
        """Serve (after ``stop()``, on the same port again)."""
        self._wait(self.issuer.start())

    def stop(self) -> None:
        """Stop serving: the issuer is unreachable until ``start()``."""
        self._wait(self.issuer.aclose())

    def _wait(self, work: Coroutine[Any, Any, None]) -> None:
        asyncio.run_coroutine_threadsafe(work, self._loop).result(THREAD_TIMEOUT)

    def _serve(self) -> None:
        loop = self._loop
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()


def hand_made(header: dict[str, Any], claims: dict[str, Any], signature: bytes = b"") -> str:
    """A compact JWS put together by hand (for tokens no library would make)."""
    parts: Iterable[bytes] = (
        jwt.utils.base64url_encode(json.dumps(header).encode()),
        jwt.utils.base64url_encode(json.dumps(claims).encode()),
        jwt.utils.base64url_encode(signature),
    )
    return b".".join(parts).decode()
