"""OAuth2 access tokens on the HTTP API, end to end: the official openai SDK, with a JWT as its
API key, against a live gateway that trusts a local issuer (both on 127.0.0.1)."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx2
import jwt
import openai
import pytest
from pydantic import SecretStr

from leapasgi.config import PolicyConfig, ProviderConfig, ServerConfig
from tests.asgi.live_server import LOOPS, LiveGateway, Serve, live_gateway
from tests.asgi.sdk_wire import assert_openai_error_body
from tests.tenants.issuer import IssuerThread, OAuthIssuer, hand_made

HI: Any = [{"role": "user", "content": "hi"}]
REPLY = "You said: hi"
STATIC_KEY = "sk-static-0123456789"
SCOPE = "chat"
# Tokens whose leap_policy claim names "small" may use mock-chat only.
POLICIES = {"small": PolicyConfig(models=["mock-chat"])}
WELL_KNOWN = "/.well-known/oauth-protected-resource"


def two_models(upstreams: Any) -> list[ProviderConfig]:
    return [ProviderConfig(name="mock", type="mock", models=["mock-chat", "mock-big"])]


@pytest.fixture(scope="module")
def issuer() -> Iterator[OAuthIssuer]:
    with IssuerThread() as thread:
        yield thread.issuer


@pytest.fixture(scope="module", params=LOOPS)
def live(request: pytest.FixtureRequest, issuer: OAuthIssuer) -> Iterator[LiveGateway]:
    """A gateway taking the issuer's tokens (scope "chat" required) and a static key."""
    oauth = issuer.config(required_scopes=[SCOPE], policy_claim="leap_policy", policies=POLICIES)
    server = ServerConfig(api_keys=[SecretStr(STATIC_KEY)])
    with live_gateway(two_models, loop=request.param, oauth=oauth, server=server) as gateway:
        yield gateway


def challenge(live: LiveGateway, **params: str) -> str:
    """The WWW-Authenticate value the gateway answers a refused token with."""
    values = [f'resource_metadata="{live.origin}{WELL_KNOWN}"']
    values += [f'{name}="{value}"' for name, value in params.items()]
    return "Bearer " + ", ".join(values)


def assert_not_shown(token: str, response: httpx2.Response) -> None:
    """Neither the token nor any sizeable part of it is in the response."""
    shown = response.text + json.dumps(dict(response.headers))
    for part in (token, *token.split(".")):
        assert len(part) < 8 or part not in shown


def chat_and_stream(client: openai.OpenAI, model: str = "mock-chat") -> tuple[str, str]:
    """The reply of a chat completion, and of the same request streamed."""
    answer = client.chat.completions.create(model=model, messages=HI)
    stream = client.chat.completions.create(model=model, messages=HI, stream=True)
    streamed = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    return answer.choices[0].message.content or "", streamed


# Accepted


@pytest.mark.parametrize("alg", ["RS256", "ES256"])
def test_a_valid_token_gets_a_completion_and_a_stream(
    live: LiveGateway, issuer: OAuthIssuer, alg: str
) -> None:
    with live.client(api_key=issuer.token(alg=alg, scope=SCOPE)) as client:
        assert chat_and_stream(client) == (REPLY, REPLY)


def test_tokens_and_static_keys_side_by_side(live: LiveGateway, issuer: OAuthIssuer) -> None:
    with live.client(api_key=STATIC_KEY) as client:
        by_key = chat_and_stream(client, "mock-big")
    with live.client(api_key=issuer.token(scope=SCOPE)) as client:
        by_token = chat_and_stream(client, "mock-big")
    with (
        live.client(api_key="sk-wrong-0123456789") as client,
        pytest.raises(openai.AuthenticationError) as caught,
    ):
        client.chat.completions.create(model="mock-chat", messages=HI)
    assert by_key == by_token == (REPLY, REPLY)
    response = caught.value.response
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == challenge(
        live,
        error="invalid_token",
        error_description="Invalid or missing API key or access token",
    )
    assert_not_shown("sk-wrong-0123456789", response)


# Refused


def now() -> int:
    return int(time.time())


def tampered_payload(issuer: OAuthIssuer) -> str:
    header, payload, signature = issuer.token(scope=SCOPE).split(".")
    claims = json.loads(jwt.utils.base64url_decode(payload)) | {"sub": "mallory"}
    forged = jwt.utils.base64url_encode(json.dumps(claims).encode()).decode()
    return f"{header}.{forged}.{signature}"


def tampered_signature(issuer: OAuthIssuer) -> str:
    header, payload, signature = issuer.token(scope=SCOPE).split(".")
    raw = bytearray(jwt.utils.base64url_decode(signature))
    raw[10] ^= 1
    return f"{header}.{payload}.{jwt.utils.base64url_encode(bytes(raw)).decode()}"


def hs256_with_the_public_key(issuer: OAuthIssuer) -> str:
    # Algorithm confusion: the RSA public key (anyone can fetch it) as an HMAC secret.
    key = issuer.key_for("RS256")
    unsigned = hand_made({"alg": "HS256", "typ": "JWT", "kid": key.kid}, issuer.claims())
    signing_input = unsigned.rsplit(".", 1)[0]
    signature = hmac.new(key.public_pem(), signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{jwt.utils.base64url_encode(signature).decode()}"


REFUSED: list[tuple[str, Callable[[OAuthIssuer], str], str]] = [
    (
        "expired",
        lambda issuer: issuer.token(
            scope=SCOPE, iat=now() - 7200, nbf=now() - 7200, exp=now() - 3600
        ),
        "The token has expired",
    ),
    (
        "not-yet-valid",
        lambda issuer: issuer.token(scope=SCOPE, nbf=now() + 3600, exp=now() + 7200),
        "The token is not valid yet",
    ),
    (
        "wrong-audience",
        lambda issuer: issuer.token(scope=SCOPE, aud="https://another-gateway.test"),
        "The token is not for this audience",
    ),
    (
        "wrong-issuer",
        lambda issuer: issuer.token(scope=SCOPE, iss="https://another-issuer.test"),
        "The token's issuer is not trusted",
    ),
    (
        "alg-none",
        lambda issuer: hand_made({"alg": "none", "typ": "JWT"}, issuer.claims(scope=SCOPE)),
        "Unsigned tokens are refused",
    ),
    (
        "hs256-public-key",
        hs256_with_the_public_key,
        "The token was signed with an algorithm that is not allowed",
    ),
    (
        "unknown-kid",
        lambda issuer: issuer.token(scope=SCOPE, kid="rsa-unknown"),
        "No key of the issuer has this key id",
    ),
    ("tampered-payload", tampered_payload, "The token's signature does not verify"),
    ("tampered-signature", tampered_signature, "The token's signature does not verify"),
]


@pytest.mark.parametrize(
    ("make", "description"),
    [pytest.param(make, description, id=name) for name, make, description in REFUSED],
)
def test_a_bad_token_gets_401_invalid_token_with_the_challenge(
    live: LiveGateway,
    issuer: OAuthIssuer,
    make: Callable[[OAuthIssuer], str],
    description: str,
) -> None:
    token = make(issuer)
    served = len(live.mock().requests)
    with live.client(api_key=token) as client:
        with pytest.raises(openai.AuthenticationError) as caught:
            client.chat.completions.create(model="mock-chat", messages=HI)
        with pytest.raises(openai.AuthenticationError) as streamed:
            client.chat.completions.create(model="mock-chat", messages=HI, stream=True)
    for error in (caught.value, streamed.value):
        assert error.status_code == 401
        assert error.code == "invalid_token"
        response = error.response
        assert assert_openai_error_body(response)["message"] == description
        assert response.headers["www-authenticate"] == challenge(
            live, error="invalid_token", error_description=description
        )
        assert_not_shown(token, response)
    assert len(live.mock().requests) == served  # never reached the provider


def test_no_token_gets_401_naming_the_metadata_without_an_error(live: LiveGateway) -> None:
    with httpx2.Client(trust_env=False) as http:
        refused = http.post(
            f"{live.base_url}/chat/completions", json={"model": "mock-chat", "messages": HI}
        )
        # RFC 9728 §5.1: a client finds the metadata from the challenge alone.
        url = refused.headers["www-authenticate"].split('resource_metadata="')[1].split('"')[0]
        metadata = http.get(url)
    assert refused.status_code == 401
    assert refused.headers["www-authenticate"] == challenge(live)  # RFC 6750 §3.1: no error
    assert refused.json()["error"]["code"] == "invalid_api_key"
    assert metadata.status_code == 200
    assert metadata.json()["resource"] == live.origin


def test_a_missing_scope_gets_403_insufficient_scope(
    live: LiveGateway, issuer: OAuthIssuer
) -> None:
    with (
        live.client(api_key=issuer.token(scope="read")) as client,
        pytest.raises(openai.PermissionDeniedError) as caught,
    ):
        client.chat.completions.create(model="mock-chat", messages=HI)
    error = caught.value
    assert error.status_code == 403
    assert error.code == "insufficient_scope"
    assert error.response.headers["www-authenticate"] == challenge(
        live,
        error="insufficient_scope",
        error_description="The token lacks a scope this gateway requires",
        scope=SCOPE,
    )


def test_the_protected_resource_metadata(live: LiveGateway, issuer: OAuthIssuer) -> None:
    with httpx2.Client(base_url=live.origin, trust_env=False) as http:
        root = http.get(WELL_KNOWN)
        mcp = http.get(f"{WELL_KNOWN}/mcp")
    assert root.status_code == 200
    assert root.headers["content-type"] == "application/json"
    assert root.json() == {
        "resource": live.origin,
        "authorization_servers": [issuer.url],
        "bearer_methods_supported": ["header"],
        "resource_name": "leapasgi",
        "scopes_supported": [SCOPE],
    }
    assert mcp.json()["resource"] == f"{live.origin}/mcp"


def test_the_policy_claim_picks_the_policy(live: LiveGateway, issuer: OAuthIssuer) -> None:
    small = issuer.token(scope=SCOPE, leap_policy="small")
    with live.client(api_key=small) as client:
        allowed = chat_and_stream(client, "mock-chat")
        listed = [model.id for model in client.models.list()]
        with pytest.raises(openai.PermissionDeniedError) as caught:
            client.chat.completions.create(model="mock-big", messages=HI)
    unknown = issuer.token(scope=SCOPE, leap_policy="no-such-policy")
    with live.client(api_key=unknown) as client:
        unlimited = chat_and_stream(client, "mock-big")
    assert allowed == unlimited == (REPLY, REPLY)
    assert listed == ["mock-chat"]
    assert caught.value.status_code == 403
    assert caught.value.code == "model_not_allowed"
    assert caught.value.param == "model"


# The issuer


def test_the_issuer_down_with_no_keys_cached_is_a_503_until_it_is_back(
    serve: Serve, issuer_thread: IssuerThread
) -> None:
    issuer = issuer_thread.issuer
    token = issuer.token()
    issuer_thread.stop()
    # refresh_interval=0: the keys are asked for again at the next request after a failure.
    live = serve(oauth=issuer.config(refresh_interval=0))
    with live.client(api_key=token) as client:
        with pytest.raises(openai.InternalServerError) as caught:
            client.chat.completions.create(model="mock-chat", messages=HI)
        issuer_thread.start()
        answer = client.chat.completions.create(model="mock-chat", messages=HI)
    error = caught.value
    assert error.status_code == 503
    assert error.code == "issuer_unavailable"
    assert_openai_error_body(error.response)
    assert_not_shown(token, error.response)
    assert answer.choices[0].message.content == REPLY
    assert live.mock().requests != []
