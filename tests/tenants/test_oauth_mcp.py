"""OAuth2 on /mcp, end to end: the official ``mcp`` client, with the SDK's own
``OAuthClientProvider``, signs in through the whole MCP authorization flow against a live
gateway and a local issuer (both on 127.0.0.1), then uses the tools with the token it got."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx2
import jwt
import pytest
from mcp import Client, MCPError
from mcp.client.auth import OAuthClientProvider
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.auth import (
    AuthorizationCodeResult,
    OAuthClientInformationFull,
    OAuthClientMetadata,
    OAuthToken,
)
from pydantic import AnyUrl

from leapasgi.config import ServerConfig
from tests.asgi.live_server import LiveGateway, Serve
from tests.mcp.support import ACCEPT, INITIALIZE, http_client, http_session, structured
from tests.tenants.issuer import (
    AUDIENCE,
    AUTHORIZE_PATH,
    REGISTER_PATH,
    RFC8414_PATH,
    TOKEN_PATH,
    OAuthIssuer,
)

pytestmark = pytest.mark.anyio

CHAT = {"model": "mock-chat", "prompt": "hi"}
SCOPE = "chat"
# The client's redirect URI: the browser below reads the redirect to it, so nothing listens.
REDIRECT_URI = "http://127.0.0.1:33418/callback"
PRM_PATH = "/.well-known/oauth-protected-resource/mcp"


class MemoryStorage:
    """The SDK's ``TokenStorage``, in memory: what a client keeps between sessions."""

    def __init__(self) -> None:
        self.tokens: OAuthToken | None = None
        self.client_info: OAuthClientInformationFull | None = None

    async def get_tokens(self) -> OAuthToken | None:
        return self.tokens

    async def set_tokens(self, tokens: OAuthToken) -> None:
        self.tokens = tokens

    async def get_client_info(self) -> OAuthClientInformationFull | None:
        return self.client_info

    async def set_client_info(self, client_info: OAuthClientInformationFull) -> None:
        self.client_info = client_info


class Browser:
    """The user's browser: opens the authorization URL (the issuer signs its user in and
    redirects back to the client with a code and the state), and hands the redirect's
    parameters to the client, as a local callback server would."""

    def __init__(self) -> None:
        self.visited: list[str] = []
        self._back: AuthorizationCodeResult | None = None

    async def open(self, url: str) -> None:
        self.visited.append(url)
        async with httpx2.AsyncClient(trust_env=False) as http:
            response = await http.get(url)
        assert response.status_code == 302, response.text
        location = urlsplit(response.headers["location"])
        assert f"{location.scheme}://{location.netloc}{location.path}" == REDIRECT_URI
        params = {name: values[0] for name, values in parse_qs(location.query).items()}
        assert "error" not in params, params
        self._back = AuthorizationCodeResult(
            code=params["code"], state=params.get("state"), iss=params.get("iss")
        )

    async def callback(self) -> AuthorizationCodeResult:
        assert self._back is not None
        return self._back


class Exchange:
    """Every HTTP request the MCP client's HTTP client sends (its OAuth provider's too), as
    (method, URL without the query, status)."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, int]] = []

    async def __call__(self, response: httpx2.Response) -> None:
        request = response.request
        url = str(request.url.copy_with(query=None))
        self.seen.append((request.method, url, response.status_code))


def mcp_gateway(serve: Serve, issuer: OAuthIssuer) -> LiveGateway:
    """A gateway serving /mcp to the issuer's tokens (scope "chat" required); the issuer
    grants tokens for its /mcp with the gateway's audience."""
    live = serve(server=ServerConfig(mcp=True), oauth=issuer.config(required_scopes=[SCOPE]))
    issuer.resources[f"{live.origin}/mcp"] = AUDIENCE
    return live


def oauth_provider(
    live: LiveGateway, storage: MemoryStorage, browser: Browser
) -> OAuthClientProvider:
    return OAuthClientProvider(
        server_url=f"{live.origin}/mcp",
        client_metadata=OAuthClientMetadata(
            client_name="leapasgi tests",
            redirect_uris=[AnyUrl(REDIRECT_URI)],
            grant_types=["authorization_code", "refresh_token"],
            response_types=["code"],
        ),
        storage=storage,
        redirect_handler=browser.open,
        callback_handler=browser.callback,
    )


async def use_tools(
    live: LiveGateway, provider: OAuthClientProvider, exchange: Exchange | None = None
) -> tuple[set[str], dict[str, Any]]:
    """The tools' names and a chat tool call's result, over one MCP session."""
    hooks: dict[str, list[Callable[..., Any]]] = {"response": [exchange] if exchange else []}
    http = httpx2.AsyncClient(auth=provider, trust_env=False, timeout=10.0, event_hooks=hooks)
    transport = streamable_http_client(f"{live.origin}/mcp", http_client=http)
    async with http, Client(transport) as client:
        names = {tool.name for tool in (await client.list_tools()).tools}
        answer = structured(await client.call_tool("chat", CHAT))
    return names, answer


@pytest.fixture
def issuer(oauth_issuer: OAuthIssuer) -> OAuthIssuer:
    return oauth_issuer


async def test_the_mcp_client_signs_in_through_the_whole_flow(
    serve: Serve, issuer: OAuthIssuer
) -> None:
    live = mcp_gateway(serve, issuer)
    storage, browser, exchange = MemoryStorage(), Browser(), Exchange()
    names, answer = await use_tools(live, oauth_provider(live, storage, browser), exchange)

    assert "chat" in names
    assert answer["reply"] == "You said: hi"
    mcp = f"{live.origin}/mcp"
    assert exchange.seen[:6] == [
        ("POST", mcp, 401),
        ("GET", f"{live.origin}{PRM_PATH}", 200),
        ("GET", f"{issuer.url}{RFC8414_PATH}", 200),
        ("POST", f"{issuer.url}{REGISTER_PATH}", 201),
        ("POST", f"{issuer.url}{TOKEN_PATH}", 200),
        ("POST", mcp, 200),
    ]
    assert all(url == mcp and status < 300 for _, url, status in exchange.seen[6:])
    # The authorization request: PKCE S256, the resource (RFC 8707) and the scope the
    # gateway's metadata lists.
    [visited] = browser.visited
    assert visited.startswith(f"{issuer.url}{AUTHORIZE_PATH}?")
    query = parse_qs(urlsplit(visited).query)
    assert query["code_challenge_method"] == ["S256"]
    assert query["resource"] == [mcp]
    assert query["scope"] == [SCOPE]
    assert query["redirect_uri"] == [REDIRECT_URI]
    assert storage.client_info is not None
    assert query["client_id"] == [storage.client_info.client_id]
    # The token the client was given and the gateway took.
    assert storage.tokens is not None
    claims = jwt.decode(storage.tokens.access_token, options={"verify_signature": False})
    assert (claims["iss"], claims["aud"], claims["sub"]) == (issuer.url, AUDIENCE, "alice")
    assert claims["scope"] == SCOPE
    assert issuer.grants == ["authorization_code"]


async def test_a_stored_token_is_used_again_without_signing_in(
    serve: Serve, issuer: OAuthIssuer
) -> None:
    live = mcp_gateway(serve, issuer)
    storage, browser = MemoryStorage(), Browser()
    await use_tools(live, oauth_provider(live, storage, browser))
    exchange = Exchange()
    names, answer = await use_tools(live, oauth_provider(live, storage, browser), exchange)
    assert "chat" in names
    assert answer["reply"] == "You said: hi"
    assert len(browser.visited) == 1
    assert len(issuer.clients) == 1
    assert {(url, status < 300) for _, url, status in exchange.seen} == {
        (f"{live.origin}/mcp", True)
    }


async def test_an_expired_token_is_refreshed_without_signing_in_again(
    serve: Serve, issuer: OAuthIssuer
) -> None:
    live = mcp_gateway(serve, issuer)
    storage, browser = MemoryStorage(), Browser()
    provider = oauth_provider(live, storage, browser)
    await use_tools(live, provider)
    first = storage.tokens
    # As if the token's expires_in had passed since it was issued.
    provider.context.token_expiry_time = time.time() - 1
    exchange = Exchange()
    names, answer = await use_tools(live, provider, exchange)
    assert "chat" in names
    assert answer["reply"] == "You said: hi"
    assert len(browser.visited) == 1
    assert issuer.grants == ["authorization_code", "refresh_token"]
    assert exchange.seen[:2] == [
        ("POST", f"{issuer.url}{TOKEN_PATH}", 200),
        ("POST", f"{live.origin}/mcp", 200),
    ]
    assert first is not None
    assert storage.tokens is not None
    assert storage.tokens.access_token != first.access_token
    assert storage.tokens.refresh_token != first.refresh_token  # rotated


async def test_without_a_token_mcp_answers_401_naming_its_metadata(
    serve: Serve, issuer: OAuthIssuer
) -> None:
    live = mcp_gateway(serve, issuer)
    async with http_client() as http:
        refused = await http.post(f"{live.origin}/mcp", json=INITIALIZE, headers=ACCEPT)
        metadata = await http.get(f"{live.origin}{PRM_PATH}")
    with pytest.raises(ExceptionGroup) as caught:
        async with http_session(f"{live.origin}/mcp"):
            pass
    assert refused.status_code == 401
    # RFC 6750 §3.1: no error code for a request that had no token.
    assert refused.headers["www-authenticate"] == (
        f'Bearer resource_metadata="{live.origin}{PRM_PATH}"'
    )
    assert metadata.json() == {
        "resource": f"{live.origin}/mcp",
        "authorization_servers": [issuer.url],
        "bearer_methods_supported": ["header"],
        "resource_name": "leapasgi",
        "scopes_supported": [SCOPE],
    }
    assert caught.group_contains(MCPError)


async def test_a_token_for_another_audience_is_refused_on_mcp(
    serve: Serve, issuer: OAuthIssuer
) -> None:
    live = mcp_gateway(serve, issuer)
    token = issuer.token(scope=SCOPE, aud="https://another-gateway.test")
    async with http_client(key=token) as http:
        refused = await http.post(f"{live.origin}/mcp", json=INITIALIZE, headers=ACCEPT)
    with pytest.raises(ExceptionGroup) as caught:
        async with http_session(f"{live.origin}/mcp", key=token):
            pass
    assert refused.status_code == 401
    assert refused.headers["www-authenticate"] == (
        f'Bearer resource_metadata="{live.origin}{PRM_PATH}", error="invalid_token", '
        'error_description="The token is not for this audience"'
    )
    assert refused.json()["error"]["code"] == "invalid_token"
    assert token not in refused.text
    assert caught.group_contains(MCPError)
    assert live.mock().requests == []


async def test_a_token_the_issuer_grants_for_another_audience_ends_the_flow(
    serve: Serve, issuer: OAuthIssuer
) -> None:
    live = mcp_gateway(serve, issuer)
    # The issuer's tokens for this gateway's /mcp name an audience the gateway does not take.
    issuer.resources[f"{live.origin}/mcp"] = "https://another-gateway.test"
    exchange = Exchange()
    with pytest.raises(ExceptionGroup) as caught:
        await use_tools(live, oauth_provider(live, MemoryStorage(), Browser()), exchange)
    assert caught.group_contains(MCPError, match="Server returned an error response")
    mcp = f"{live.origin}/mcp"
    # Each request the client makes signs in afresh, and each token it gets is refused.
    answers = [status for _, url, status in exchange.seen if url == mcp]
    assert len(answers) > 1
    assert set(answers) == {401}
    assert len(issuer.grants) >= 1
    assert set(issuer.grants) == {"authorization_code"}
    assert live.mock().requests == []
