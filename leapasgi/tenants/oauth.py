"""OAuth2 / OpenID Connect access tokens: the gateway as an OAuth 2.1 protected resource.

``TokenValidator`` checks a bearer JWT as RFC 9068 and the MCP authorization spec ask of a
resource server. The header first, before any key is looked up: a compact JWS, an ``alg`` of
the configured asymmetric ones, no ``crit`` (``jku``, ``x5u`` and ``jwk`` are never followed).
Then the signature, by the key of the issuer's JWKS the ``kid`` names (the JWKS found through
the issuer's discovery document, cached, fetched again once for an unknown key id); then
``iss``, ``aud``, ``exp`` and ``nbf`` (on the injected clock); then the required scopes.
``protected_resource_metadata`` and ``www_authenticate`` are what RFC 9728 has a resource
publish and answer. PyJWT (the ``oauth`` extra) is imported here only, and this module only
where ``[oauth]`` is configured.

    AuthenticationError
    └── InvalidTokenError         401 invalid_token; 403 insufficient_scope
    LeapError
    └── IssuerUnavailableError    503 the issuer's keys cannot be had, and none are cached
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import math
import re
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, Self
from urllib.parse import urlsplit

import aiohttp
import jwt

from ..clock import Clock, SystemClock
from ..config import OAuthConfig
from ..exceptions import AuthenticationError, ConfigurationError, LeapError
from .policy import OPEN, Tenant, TenantPolicy

__all__ = [
    "InvalidTokenError",
    "IssuerUnavailableError",
    "TokenValidator",
    "looks_like_jwt",
    "protected_resource_metadata",
    "resource_metadata_url",
    "www_authenticate",
]

logger = logging.getLogger("leapasgi.tenants")

MAX_TOKEN_CHARS = 16 * 1024
MAX_DOCUMENT_BYTES = 1024 * 1024
MAX_KID_CHARS = 256
MAX_TENANT_ID = 256

# The key each algorithm verifies with: its JWK ``kty`` and the curves it may be on.
_KEY_TYPES: dict[str, tuple[str, frozenset[str]]] = {
    "RS256": ("RSA", frozenset()),
    "RS384": ("RSA", frozenset()),
    "RS512": ("RSA", frozenset()),
    "PS256": ("RSA", frozenset()),
    "PS384": ("RSA", frozenset()),
    "PS512": ("RSA", frozenset()),
    "ES256": ("EC", frozenset({"P-256"})),
    "ES384": ("EC", frozenset({"P-384"})),
    "ES512": ("EC", frozenset({"P-521"})),
    "EdDSA": ("OKP", frozenset({"Ed25519", "Ed448"})),
}

_SEGMENT = re.compile(r"[A-Za-z0-9_-]*")
_LOOKS_LIKE_JWT = re.compile(rb"eyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")


class InvalidTokenError(AuthenticationError):
    """Raised when a bearer token is refused. ``error`` is RFC 6750's code: "invalid_token"
    (401), or "insufficient_scope" (403) with the ``scope`` the token lacked."""

    default_code = "invalid_token"

    def __init__(
        self, message: str, *, error: str = "invalid_token", scope: str | None = None
    ) -> None:
        super().__init__(message, code=error)
        self.error = error
        self.scope = scope

    @property
    def http_status(self) -> int:
        return 403 if self.error == "insufficient_scope" else 401


class IssuerUnavailableError(LeapError):
    """Raised when the issuer's keys cannot be fetched (unreachable, an error status, a
    document that is not JSON or names another issuer) and none are cached (503)."""

    status_code = 503
    error_type = "server_error"
    default_code = "issuer_unavailable"
    retryable_by_default = True


class _Key:
    """One signing key of the issuer's JWKS."""

    __slots__ = ("alg", "crv", "key", "kid", "kty")

    def __init__(self, jwk: Mapping[str, Any], kty: str, crv: str | None, key: Any) -> None:
        kid, alg = jwk.get("kid"), jwk.get("alg")
        self.kid = kid if isinstance(kid, str) else None
        self.alg = alg if isinstance(alg, str) else None
        self.kty = kty
        self.crv = crv
        self.key = key  # the cryptography public key

    def fits(self, alg: str) -> bool:
        return _fits(alg, self.kty, self.crv) and self.alg in (None, alg)


def _fits(alg: str, kty: object, crv: object) -> bool:
    """Whether a key of type ``kty`` on curve ``crv`` verifies ``alg``."""
    key_type, curves = _KEY_TYPES[alg]
    return kty == key_type and (not curves or crv in curves)


def _parse_jwks(document: Any) -> list[_Key]:
    """The usable signing keys of a JWKS: others (encryption keys, unknown types, private or
    broken ones) are left out."""
    keys = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(keys, list):
        raise IssuerUnavailableError("The issuer's JWKS has no list of keys")
    usable = []
    for jwk in keys:
        if not isinstance(jwk, dict) or jwk.get("use", "sig") != "sig" or "d" in jwk:
            continue
        ops = jwk.get("key_ops")
        if ops is not None and (not isinstance(ops, list) or "verify" not in ops):
            continue
        kty, crv = jwk.get("kty"), jwk.get("crv")
        alg = next((alg for alg in _KEY_TYPES if _fits(alg, kty, crv)), None)
        if alg is None:
            continue
        try:
            key = jwt.PyJWK(jwk, algorithm=alg).key
        except (jwt.PyJWTError, ValueError, TypeError, KeyError):
            continue
        usable.append(_Key(jwk, str(kty), crv if isinstance(crv, str) else None, key))
    return usable


class TokenValidator:
    """Checks access tokens against ``config``'s issuer; one per gateway, closed with it."""

    def __init__(self, config: OAuthConfig, *, clock: Clock | None = None) -> None:
        unknown = set(config.algorithms) - _KEY_TYPES.keys()
        if unknown:
            raise ConfigurationError(f"oauth.algorithms: not supported: {sorted(unknown)}")
        self._config = config
        self._clock = clock or SystemClock()
        self._algorithms = frozenset(config.algorithms)
        self._policies = {name: policy.build() for name, policy in config.policies.items()}
        self._session: aiohttp.ClientSession | None = None
        self._discovered: str | None = None  # the JWKS URL the discovery document gave
        self._keys: list[_Key] | None = None
        self._stale_at = 0.0  # when the cached keys are fetched again (monotonic)
        self._fetched_at = -math.inf  # when the last fetch ended, well or not
        self._refreshing: asyncio.Task[list[_Key]] | None = None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop a fetch in flight and close the HTTP session."""
        task = self._refreshing
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        if self._session is not None:
            await self._session.close()

    async def validate(self, token: str) -> dict[str, Any]:
        """The token's verified claims; raises InvalidTokenError (or IssuerUnavailableError
        when the issuer's keys cannot be had)."""
        header = _header_of(token, self._algorithms)
        alg: str = header["alg"]
        key = await self._key_for(alg, header.get("kid"))
        config = self._config
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=[alg],
                audience=config.audience,
                issuer=config.issuer,
                options={
                    "require": ["exp", "iss", "aud"],
                    # Checked below, on the injected clock.
                    "verify_exp": False,
                    "verify_nbf": False,
                    "verify_iat": False,
                    "enforce_minimum_key_length": True,
                },
            )
        except jwt.PyJWTError as exc:
            raise InvalidTokenError(_reason(exc)) from exc
        self._check_times(claims)
        self._check_scopes(claims)
        return claims

    def tenant_of(self, claims: Mapping[str, Any]) -> Tenant:
        """The tenant a validated token's claims name, with its policy."""
        claim = self._config.tenant_claim
        value = claims.get(claim)
        if isinstance(value, bool) or not isinstance(value, str | int) or value == "":
            raise InvalidTokenError(f"The token has no {_quoted(claim)} claim")
        scopes = _scopes_of(claims)
        metadata = {"scope": " ".join(sorted(scopes))} if scopes else {}
        return Tenant(
            id=_tenant_id(str(value)),
            policy=self._policy_of(claims),
            source="oauth",
            metadata=MappingProxyType(metadata),
        )

    def _policy_of(self, claims: Mapping[str, Any]) -> TenantPolicy:
        claim = self._config.policy_claim
        value = claims.get(claim) if claim is not None else None
        names = [value] if isinstance(value, str) else value if isinstance(value, list) else []
        for name in names:
            if isinstance(name, str) and name in self._policies:
                return self._policies[name]
        return self._policies.get("default", OPEN)

    def _check_times(self, claims: Mapping[str, Any]) -> None:
        now, leeway = self._clock.time(), self._config.leeway
        if _number(claims, "exp") <= now - leeway:
            raise InvalidTokenError("The token has expired")
        for name in ("nbf", "iat"):
            if name in claims and _number(claims, name) > now + leeway:
                raise InvalidTokenError("The token is not valid yet")

    def _check_scopes(self, claims: Mapping[str, Any]) -> None:
        required = self._config.required_scopes
        if required and not set(required) <= _scopes_of(claims):
            raise InvalidTokenError(
                "The token lacks a scope this gateway requires",
                error="insufficient_scope",
                scope=" ".join(required),
            )

    async def _key_for(self, alg: str, kid: Any) -> Any:
        keys = self._keys
        if keys is None or self._clock.monotonic() >= self._stale_at:
            keys = await self._refresh_or_keep(keys)
        found = _lookup(keys, kid)
        if found is None and kid is not None and self._may_refetch():
            # An unknown key id: the issuer may have rotated its keys since they were fetched.
            keys = await self._refresh_or_keep(keys)
            found = _lookup(keys, kid)
        if found is None:
            if kid is None:
                raise InvalidTokenError("The token names no key id, and the issuer has several")
            raise InvalidTokenError("No key of the issuer has this key id")
        if not found.fits(alg):
            raise InvalidTokenError("The token's algorithm does not fit the key it names")
        return found.key

    def _may_refetch(self) -> bool:
        refetched = self._clock.monotonic() - self._fetched_at >= self._config.refresh_interval
        return self._refreshing is not None or refetched

    async def _refresh_or_keep(self, keys: list[_Key] | None) -> list[_Key]:
        try:
            return await self._refresh()
        except IssuerUnavailableError as exc:
            if keys is None:
                raise
            logger.warning("oauth: keeping the cached keys of the issuer: %s", exc.message)
            return keys

    async def _refresh(self) -> list[_Key]:
        task = self._refreshing
        if task is None:
            task = asyncio.get_running_loop().create_task(self._fetch_keys())
            task.add_done_callback(_retrieve)
            self._refreshing = task
        # Shielded: a caller that goes away does not cancel the fetch the others wait for.
        return await asyncio.shield(task)

    async def _fetch_keys(self) -> list[_Key]:
        config = self._config
        try:
            url = config.jwks_url or self._discovered or await self._discover()
            try:
                keys = _parse_jwks(await self._get_json(url, "JWKS"))
            except IssuerUnavailableError as exc:
                if exc.upstream_status is not None and exc.upstream_status < 500:
                    self._discovered = None  # it may have moved: discovered again next time
                raise
            if not keys:
                raise IssuerUnavailableError("The issuer's JWKS has no usable signing key")
        except IssuerUnavailableError:
            self._stale_at = self._clock.monotonic() + config.refresh_interval
            raise
        else:
            self._keys = keys
            self._stale_at = self._clock.monotonic() + config.jwks_ttl
            return keys
        finally:
            self._fetched_at = self._clock.monotonic()
            self._refreshing = None

    async def _discover(self) -> str:
        issuer = self._config.issuer
        refused: IssuerUnavailableError | None = None
        for url in _discovery_urls(issuer):
            try:
                document = await self._get_json(url, "discovery document")
            except IssuerUnavailableError as exc:
                status = exc.upstream_status
                if status is None or status >= 500:
                    raise
                refused = exc  # not published here: try the next well-known URL
                continue
            if not isinstance(document, dict):
                raise IssuerUnavailableError("The issuer's discovery document is not an object")
            if document.get("issuer") != issuer:
                raise IssuerUnavailableError("The issuer's discovery document names another issuer")
            jwks_uri = document.get("jwks_uri")
            if not isinstance(jwks_uri, str) or not _secure_url(jwks_uri):
                raise IssuerUnavailableError(
                    "The issuer's discovery document has no https:// jwks_uri"
                )
            self._discovered = jwks_uri
            return jwks_uri
        assert refused is not None
        raise refused

    async def _get_json(self, url: str, what: str) -> Any:
        try:
            async with self._http().get(
                url, allow_redirects=False, headers={"Accept": "application/json"}
            ) as response:
                if response.status != 200:
                    raise IssuerUnavailableError(
                        f"The issuer's {what} answered HTTP {response.status}",
                        upstream_status=response.status,
                    )
                body = await _read_capped(response, what)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise IssuerUnavailableError(f"The issuer's {what} could not be fetched") from exc
        try:
            return json.loads(body)
        except (ValueError, RecursionError) as exc:
            raise IssuerUnavailableError(f"The issuer's {what} is not JSON") from exc

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self._config.http_timeout),
                trust_env=False,
                cookie_jar=aiohttp.DummyCookieJar(),
            )
        return self._session


def protected_resource_metadata(config: OAuthConfig, resource: str) -> dict[str, Any]:
    """The RFC 9728 metadata of the gateway as a protected resource (``resource``: its URL),
    served at ``resource_metadata_url(resource)``."""
    metadata: dict[str, Any] = {
        "resource": resource,
        "authorization_servers": [config.issuer],
        "bearer_methods_supported": ["header"],
        "resource_name": "leapasgi",
    }
    if config.required_scopes:
        metadata["scopes_supported"] = list(config.required_scopes)
    return metadata


def resource_metadata_url(resource: str) -> str:
    """Where RFC 9728 §3.1 puts a resource's metadata: the well-known path between the host
    and the resource's path ("https://gw/mcp" -> "https://gw/.well-known/oauth-protected-
    resource/mcp")."""
    parts = urlsplit(resource)
    path = parts.path.rstrip("/")
    return f"{parts.scheme}://{parts.netloc}/.well-known/oauth-protected-resource{path}"


def www_authenticate(
    resource_metadata: str,
    *,
    error: str | None = None,
    description: str | None = None,
    scope: str | None = None,
) -> str:
    """The ``WWW-Authenticate`` challenge of a 401 or 403 (RFC 6750 §3, RFC 9728 §5.1)."""
    params = [("resource_metadata", resource_metadata)]
    for name, value in (("error", error), ("error_description", description), ("scope", scope)):
        if value is not None:
            params.append((name, value))
    return "Bearer " + ", ".join(f"{name}={_quoted(value)}" for name, value in params)


def looks_like_jwt(token: bytes) -> bool:
    """Whether a bearer token has a JWT's shape (three base64url parts, a JSON header), so it
    is checked as an access token rather than looked up as an API key."""
    return _LOOKS_LIKE_JWT.fullmatch(token) is not None


def _header_of(token: str, algorithms: frozenset[str]) -> dict[str, Any]:
    """The token's JOSE header, checked before any key is looked up."""
    if len(token) > MAX_TOKEN_CHARS:
        raise InvalidTokenError("The token is too large")
    parts = token.split(".")
    if len(parts) != 3 or not all(_SEGMENT.fullmatch(part) for part in parts):
        raise InvalidTokenError("The token is malformed")
    try:
        header: Any = json.loads(base64.urlsafe_b64decode(parts[0] + "=" * (-len(parts[0]) % 4)))
    except (ValueError, RecursionError) as exc:
        raise InvalidTokenError("The token is malformed") from exc
    if not isinstance(header, dict) or not isinstance(header.get("alg"), str):
        raise InvalidTokenError("The token is malformed")
    alg: str = header["alg"]
    if alg.lower() == "none":
        raise InvalidTokenError("Unsigned tokens are refused")
    if alg not in algorithms:
        raise InvalidTokenError("The token was signed with an algorithm that is not allowed")
    if "crit" in header:
        # No JWS extension is understood here, so any critical one refuses the token.
        raise InvalidTokenError("The token has a critical header this gateway does not know")
    kid = header.get("kid")
    if kid is not None and (not isinstance(kid, str) or len(kid) > MAX_KID_CHARS):
        raise InvalidTokenError("The token is malformed")
    return header


def _lookup(keys: list[_Key], kid: str | None) -> _Key | None:
    if kid is None:
        # No key id: only an issuer with one key leaves no doubt which it is.
        return keys[0] if len(keys) == 1 else None
    return next((key for key in keys if key.kid == kid), None)


def _reason(exc: jwt.PyJWTError) -> str:
    """What a PyJWT error says about the token, in words that never quote it."""
    if isinstance(exc, jwt.InvalidAudienceError):
        return "The token is not for this audience"
    if isinstance(exc, jwt.InvalidIssuerError):
        return "The token's issuer is not trusted"
    if isinstance(exc, jwt.MissingRequiredClaimError):
        return f"The token has no {_quoted(exc.claim)} claim"
    if isinstance(exc, jwt.InvalidSignatureError):
        return "The token's signature does not verify"
    if isinstance(exc, jwt.InvalidAlgorithmError):
        return "The token was signed with an algorithm that is not allowed"
    if isinstance(exc, jwt.InvalidKeyError):
        return "The issuer's key is too weak"
    return "The token is malformed"


def _number(claims: Mapping[str, Any], name: str) -> float:
    value = claims[name]
    if isinstance(value, int) and not isinstance(value, bool):
        return value  # exact, however large
    if isinstance(value, float) and math.isfinite(value):
        return value
    raise InvalidTokenError(f"The token's {name} claim is not a number")


def _scopes_of(claims: Mapping[str, Any]) -> set[str]:
    """The scopes granted: ``scope`` (RFC 9068, space-separated) and ``scp`` (a list, as
    some issuers send them)."""
    scopes: set[str] = set()
    for name in ("scope", "scp"):
        value = claims.get(name)
        if isinstance(value, str):
            scopes.update(value.split())
        elif isinstance(value, list):
            scopes.update(item for item in value if isinstance(item, str))
    return scopes


def _tenant_id(value: str) -> str:
    """A tenant id as usage reports and limits can carry it: control characters escaped; a
    long one cut, with a digest of the whole so two never become one."""
    if not value.isprintable():
        value = "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in value)
    if len(value) > MAX_TENANT_ID:
        digest = hashlib.sha256(value.encode()).hexdigest()[:16]
        value = f"{value[: MAX_TENANT_ID - 17]}~{digest}"
    return value


def _quoted(value: str) -> str:
    """An RFC 9110 quoted-string of printable ASCII: anything else becomes "?"."""
    safe = "".join(c if " " <= c <= "~" else "?" for c in value)
    return '"' + safe.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _discovery_urls(issuer: str) -> list[str]:
    """OpenID Connect's discovery document (after the issuer's path), then RFC 8414's
    (the well-known path before it)."""
    parts = urlsplit(issuer)
    path = parts.path.rstrip("/")
    return [
        f"{issuer.rstrip('/')}/.well-known/openid-configuration",
        f"{parts.scheme}://{parts.netloc}/.well-known/oauth-authorization-server{path}",
    ]


def _secure_url(url: str) -> bool:
    parts = urlsplit(url)
    loopback = parts.hostname in ("127.0.0.1", "localhost", "::1")
    return parts.scheme == "https" or (parts.scheme == "http" and loopback)


async def _read_capped(response: aiohttp.ClientResponse, what: str) -> bytes:
    body = bytearray()
    if (response.content_length or 0) <= MAX_DOCUMENT_BYTES:
        async for chunk in response.content.iter_chunked(64 * 1024):
            body += chunk
            if len(body) > MAX_DOCUMENT_BYTES:
                break
        else:
            return bytes(body)
    raise IssuerUnavailableError(f"The issuer's {what} is over {MAX_DOCUMENT_BYTES} bytes")


def _retrieve(task: asyncio.Task[Any]) -> None:
    # A fetch every waiter gave up on would otherwise be reported as never retrieved.
    if not task.cancelled():
        task.exception()
