"""Who calls: the host application's hook, a virtual key, a static key, an OAuth2 access token,
or nobody in particular (an open gateway's anonymous caller).

``Identifier.identify`` answers with the caller's ``Tenant`` (and keeps it in the request's
scope) or raises the error the request is answered with; an open gateway's callers who present
neither a virtual nor the admin key are identified without a lookup (``quick``). Virtual keys
are looked up by digest and cached for ``key_cache_ttl`` (found or not, at most
``MAX_CACHED_KEYS``): a revocation reaches every replica within it.
"""

from __future__ import annotations

import inspect
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.types import Scope

from ..access import TENANT_KEY, KeyDigests, bearer_token
from ..clock import Clock
from ..exceptions import AuthenticationError, LeapError, StoreUnavailableError
from .base import KEY_PREFIX, KeyStore, VirtualKey, key_digest
from .policy import ANONYMOUS, Tenant

if TYPE_CHECKING:
    from ..config import GatewayConfig
    from .oauth import TokenValidator

__all__ = ["MAX_CACHED_KEYS", "WELL_KNOWN", "Authenticate", "Identifier", "tenant_of_scope"]

# The host application's hook: the incoming request -> its tenant (None: not signed in, try
# the keys), sync or async; a LeapError it raises is the answer.
Authenticate = Callable[[Request], "Tenant | Awaitable[Tenant | None] | None"]

_VIRTUAL = KEY_PREFIX.encode()
# Where the protected resource metadata (RFC 9728) is served, under the gateway's mount point.
WELL_KNOWN = "/.well-known/oauth-protected-resource"
# Keys whose lookup is cached (found or not), at most; the oldest go first.
MAX_CACHED_KEYS = 10_000


def tenant_of_scope(scope: Mapping[str, Any]) -> Tenant | None:
    """The tenant ``Identifier.identify`` found for this request, if it ran."""
    state = scope.get("state")
    return state.get(TENANT_KEY) if isinstance(state, dict) else None


def _origin(scope: Mapping[str, Any]) -> str:
    """The scheme and authority the client used (its Host header, checked by SiteGuard)."""
    scheme = "https" if scope.get("scheme") in ("https", "wss") else "http"
    for name, value in scope.get("headers", ()):
        if name == b"host":
            host = bytes(value).decode("latin-1")
            if host and host.isprintable() and " " not in host and len(host) <= 255:
                return f"{scheme}://{host}"
            break
    server = scope.get("server")
    if server:
        return f"{scheme}://{server[0]}:{server[1]}"
    return f"{scheme}://localhost"


class Identifier:
    """One gateway's way of knowing its callers."""

    def __init__(
        self,
        config: GatewayConfig,
        keys: KeyStore,
        *,
        clock: Clock,
        authenticate: Authenticate | None = None,
    ) -> None:
        self.config = config
        self.keys = keys
        self.clock = clock
        tenants = config.tenants
        self._authenticate = authenticate
        self._static = KeyDigests(config.server.api_keys)
        admin = config.server.admin_key
        self._admin = KeyDigests([admin] if admin is not None else [])
        self._default_policy = tenants.policy.build()
        self._anonymous = Tenant(ANONYMOUS.id, self._default_policy)
        self._oauth: TokenValidator | None = None
        if config.oauth is not None:
            from .oauth import TokenValidator

            self._oauth = TokenValidator(config.oauth, clock=clock)
        # A key or token is needed unless nothing asks for one; an open gateway's callers
        # are identified without a lookup unless they present a virtual or admin key.
        self.required = bool(
            self._static or config.oauth is not None or authenticate or tenants.require_key
        )
        self.open = not self.required
        self._missing = "Invalid or missing API key" + (
            " or access token" if config.oauth is not None else ""
        )
        self._cache: OrderedDict[str, tuple[VirtualKey | None, float]] = OrderedDict()
        self._ttl = tenants.key_cache_ttl

    def quick(self, scope: Scope) -> Tenant | None:
        """The caller when no lookup is needed (the hot path of an open gateway): anonymous
        for no key, or a key that is neither a virtual key nor the admin key; else None, and
        ``identify`` decides. Only for a gateway that requires no key (``open``)."""
        token = bearer_token(scope)
        if token is None or not (token.startswith(_VIRTUAL) or self._admin):
            return self._anonymous
        return None

    async def identify(self, scope: Scope, *, resource: str = "") -> Tenant:
        """The caller of this request (kept in its scope too), or the LeapError it is answered
        with: 401 without a valid key or token (with OAuth2's challenge, naming the metadata
        of ``resource``: "" for the API, "/mcp" for the MCP endpoint), 503 when the key store
        cannot be reached."""
        try:
            tenant = await self._identify(scope)
        except LeapError as error:
            if self._oauth is not None and error.http_status in (401, 403):
                error.challenge = self._challenge(scope, error, resource)
            raise
        state = scope.get("state")
        if not isinstance(state, dict):
            state = scope["state"] = {}
        state[TENANT_KEY] = tenant
        return tenant

    def resource_url(self, scope: Mapping[str, Any], resource: str = "") -> str:
        """This gateway's URL as the protected resource (``[oauth] resource``, else from the
        request: its scheme, Host and mount point), with ``resource`` ("/mcp") after it."""
        oauth = self.config.oauth
        if oauth is not None and oauth.resource is not None:
            return oauth.resource.rstrip("/") + resource
        root: str = scope.get("root_path", "")
        return _origin(scope) + root + resource

    def metadata_url(self, scope: Mapping[str, Any], resource: str = "") -> str:
        """Where the resource's metadata is served: under the gateway's own mount point."""
        oauth = self.config.oauth
        base = (
            oauth.resource.rstrip("/")
            if oauth is not None and oauth.resource is not None
            else _origin(scope) + str(scope.get("root_path", ""))
        )
        return f"{base}{WELL_KNOWN}{resource}"

    def _challenge(self, scope: Mapping[str, Any], error: LeapError, resource: str) -> str:
        from .oauth import InvalidTokenError, www_authenticate

        if isinstance(error, InvalidTokenError):
            return www_authenticate(
                self.metadata_url(scope, resource),
                error=error.error,
                description=error.message,
                scope=error.scope,
            )
        token = bearer_token(scope)
        return www_authenticate(
            self.metadata_url(scope, resource),
            error="invalid_token" if token is not None else None,
            description=error.message if token is not None else None,
        )

    async def _identify(self, scope: Scope) -> Tenant:
        hook = self._authenticate
        if hook is not None:
            found = hook(Request(scope))
            if inspect.isawaitable(found):
                found = await found
            if found is not None:
                return found
        token = bearer_token(scope)
        if token is None:
            if self.required:
                raise self._unauthenticated(self._missing)
            return self._anonymous
        if token.startswith(KEY_PREFIX.encode()):
            return await self._virtual(token)
        digest = key_digest(token)
        if self._admin.match_digest(digest):
            return Tenant("admin", source="admin")
        if self._static.match_digest(digest):
            return Tenant(f"key:{digest[:12]}", self._default_policy, source="key")
        oauth = self._oauth
        if oauth is not None:
            from .oauth import looks_like_jwt

            if looks_like_jwt(token):
                claims = await oauth.validate(token.decode("ascii", "replace"))
                return oauth.tenant_of(claims)
        if not self.required:
            return self._anonymous
        raise self._unauthenticated(self._missing)

    async def _virtual(self, token: bytes) -> Tenant:
        digest = key_digest(token)
        key = await self._lookup(digest)
        now = self.clock.time()
        if key is None:
            raise self._unauthenticated("Invalid API key")
        if key.revoked_at is not None:
            raise self._unauthenticated("This API key was revoked", code="key_revoked")
        if not key.active(now):
            raise self._unauthenticated("This API key has expired", code="key_expired")
        return key.as_tenant()

    async def _lookup(self, digest: str) -> VirtualKey | None:
        cache = self._cache
        now = self.clock.monotonic()
        cached = cache.get(digest)
        if cached is not None and now - cached[1] < self._ttl:
            return cached[0]
        try:
            key = await self.keys.find(digest)
        except StoreUnavailableError:
            if cached is not None:
                return cached[0]  # the last word on it, while the store is away
            raise
        cache[digest] = (key, now)
        cache.move_to_end(digest)
        if len(cache) > MAX_CACHED_KEYS:
            cache.popitem(last=False)
        return key

    def forget(self, key: VirtualKey) -> None:
        """Drop ``key`` from this replica's cache (it was changed or revoked here)."""
        self._cache.pop(key.digest, None)

    def _unauthenticated(self, message: str, *, code: str = "invalid_api_key") -> LeapError:
        return AuthenticationError(message, code=code)

    @property
    def anonymous(self) -> Tenant:
        """Who a caller is when nothing identifies it (an open gateway, MCP over stdio)."""
        return self._anonymous

    @property
    def oauth(self) -> TokenValidator | None:
        return self._oauth

    async def aclose(self) -> None:
        if self._oauth is not None:
            await self._oauth.aclose()
