"""Access tokens checked against a real local issuer (tests/tenants/issuer.py): signatures,
claims, the refused shapes, the JWKS cache and its refetches, and the RFC 9728 helpers."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import sys
from collections.abc import AsyncIterator
from typing import Any

import anyio
import jwt
import pytest

from leapasgi.clock import FakeClock
from leapasgi.tenants.oauth import (
    MAX_DOCUMENT_BYTES,
    InvalidTokenError,
    IssuerUnavailableError,
    TokenValidator,
    looks_like_jwt,
    protected_resource_metadata,
    resource_metadata_url,
    www_authenticate,
)
from leapasgi.tenants.policy import OPEN
from tests.tenants.issuer import (
    AUDIENCE,
    JWKS_PATH,
    OIDC_PATH,
    RFC8414_PATH,
    OAuthIssuer,
    SigningKey,
    hand_made,
)

pytestmark = pytest.mark.anyio


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def issuer(clock: FakeClock) -> AsyncIterator[OAuthIssuer]:
    async with OAuthIssuer(clock=clock) as issuer:
        yield issuer


@pytest.fixture
async def validator(issuer: OAuthIssuer, clock: FakeClock) -> AsyncIterator[TokenValidator]:
    async with TokenValidator(issuer.config(), clock=clock) as validator:
        yield validator


async def refused(validator: TokenValidator, token: str) -> InvalidTokenError:
    """The error ``token`` is refused with, after checking it quotes no part of the token."""
    with pytest.raises(InvalidTokenError) as caught:
        await validator.validate(token)
    error = caught.value
    shown = f"{error.message} {error!r} {json.dumps(error.to_body())}"
    for part in token.split("."):
        assert len(part) < 8 or part not in shown
    return error


def swap_payload(token: str, **claims: Any) -> str:
    header, payload, signature = token.split(".")
    changed = json.loads(jwt.utils.base64url_decode(payload)) | claims
    forged = jwt.utils.base64url_encode(json.dumps(changed).encode()).decode()
    return f"{header}.{forged}.{signature}"


# Accepted tokens


@pytest.mark.parametrize("alg", ["RS256", "ES256", "PS256", "EdDSA"])
async def test_a_valid_token_is_accepted(
    issuer: OAuthIssuer, validator: TokenValidator, alg: str
) -> None:
    claims = await validator.validate(issuer.token(alg=alg, sub="alice"))
    assert claims["sub"] == "alice"
    assert claims["iss"] == issuer.url


async def test_the_tenant_and_its_policy_come_from_the_claims(
    issuer: OAuthIssuer, clock: FakeClock
) -> None:
    config = issuer.config(
        tenant_claim="org",
        policy_claim="plan",
        policies={"pro": {"rpm": 100}, "default": {"rpm": 5}},
    )
    async with TokenValidator(config, clock=clock) as validator:
        pro = validator.tenant_of(await validator.validate(issuer.token(org="acme", plan="pro")))
        other = validator.tenant_of(await validator.validate(issuer.token(org=7, plan="gold")))
        listed = await validator.validate(issuer.token(org="acme", plan=["staff", "pro"]))
    assert (pro.id, pro.source, pro.policy.rpm) == ("acme", "oauth", 100)
    assert (other.id, other.policy.rpm) == ("7", 5)
    assert validator.tenant_of(listed).policy.rpm == 100


async def test_without_a_default_policy_the_tenant_is_unlimited(
    issuer: OAuthIssuer, clock: FakeClock
) -> None:
    config = issuer.config(policy_claim="plan", policies={"pro": {"rpm": 100}})
    async with TokenValidator(config, clock=clock) as validator:
        tenant = validator.tenant_of(await validator.validate(issuer.token(plan="free")))
    assert tenant.policy is OPEN
    assert tenant.id == "alice"


async def test_a_token_without_the_tenant_claim_is_refused(
    issuer: OAuthIssuer, validator: TokenValidator
) -> None:
    claims = await validator.validate(issuer.token(sub=None))
    with pytest.raises(InvalidTokenError, match='no "sub" claim') as caught:
        validator.tenant_of(claims)
    assert caught.value.http_status == 401


async def test_tenant_ids_are_escaped_and_capped_without_merging_two(
    issuer: OAuthIssuer, validator: TokenValidator
) -> None:
    long_a = validator.tenant_of(await validator.validate(issuer.token(sub="a" * 1000)))
    long_b = validator.tenant_of(await validator.validate(issuer.token(sub="a" * 999 + "b")))
    odd = validator.tenant_of(await validator.validate(issuer.token(sub="eve\r\nx")))
    assert len(long_a.id) == len(long_b.id) == 256
    assert long_a.id != long_b.id
    assert odd.id == "eve\\x0d\\x0ax"


async def test_the_system_clock_is_the_default(oauth_issuer: OAuthIssuer) -> None:
    async with TokenValidator(oauth_issuer.config()) as validator:
        claims = await validator.validate(oauth_issuer.token())
    assert claims["aud"] == AUDIENCE


# Claims


async def test_an_expired_token_is_refused(
    issuer: OAuthIssuer, validator: TokenValidator, clock: FakeClock
) -> None:
    token = issuer.token(lifetime=300)
    await validator.validate(token)
    clock.advance(300 + 29)  # within the leeway (30 s)
    await validator.validate(token)
    clock.advance(2)
    assert (await refused(validator, token)).message == "The token has expired"


@pytest.mark.parametrize("claim", ["nbf", "iat"])
async def test_a_token_not_valid_yet_is_refused(
    issuer: OAuthIssuer, validator: TokenValidator, clock: FakeClock, claim: str
) -> None:
    later: dict[str, Any] = {claim: int(clock.time()) + 100}
    error = await refused(validator, issuer.token(**later))
    assert error.message == "The token is not valid yet"


@pytest.mark.parametrize("claim", ["exp", "iss", "aud"])
async def test_a_token_without_a_required_claim_is_refused(
    issuer: OAuthIssuer, validator: TokenValidator, claim: str
) -> None:
    left_out: dict[str, Any] = {claim: None}
    error = await refused(validator, issuer.token(**left_out))
    assert error.message == f'The token has no "{claim}" claim'


@pytest.mark.parametrize("exp", ["tomorrow", True, float("inf"), [1]])
async def test_a_time_that_is_not_a_number_is_refused(
    issuer: OAuthIssuer, validator: TokenValidator, exp: object
) -> None:
    error = await refused(validator, issuer.token(exp=exp))
    assert error.message == "The token's exp claim is not a number"


async def test_a_huge_exp_is_far_in_the_future(
    issuer: OAuthIssuer, validator: TokenValidator
) -> None:
    await validator.validate(issuer.token(exp=10**400))


async def test_a_token_for_another_audience_is_refused(
    issuer: OAuthIssuer, validator: TokenValidator
) -> None:
    error = await refused(validator, issuer.token(aud="https://other.test"))
    assert error.message == "The token is not for this audience"
    await validator.validate(issuer.token(aud=["https://other.test", AUDIENCE]))


async def test_any_configured_audience_will_do(issuer: OAuthIssuer, clock: FakeClock) -> None:
    config = issuer.config(audience=[AUDIENCE, "https://mcp.test"])
    async with TokenValidator(config, clock=clock) as validator:
        await validator.validate(issuer.token(aud="https://mcp.test"))


async def test_a_token_of_another_issuer_is_refused(
    issuer: OAuthIssuer, validator: TokenValidator
) -> None:
    error = await refused(validator, issuer.token(iss="https://evil.test"))
    assert error.message == "The token's issuer is not trusted"


async def test_a_missing_scope_is_insufficient_scope_403(
    issuer: OAuthIssuer, clock: FakeClock
) -> None:
    config = issuer.config(required_scopes=["chat"])
    async with TokenValidator(config, clock=clock) as validator:
        for token in (issuer.token(scope="read"), issuer.token()):
            error = await refused(validator, token)
            assert (error.error, error.scope, error.http_status) == (
                "insufficient_scope",
                "chat",
                403,
            )
            assert error.to_body()["error"]["code"] == "insufficient_scope"
        claims = await validator.validate(issuer.token(scope="read chat"))
        await validator.validate(issuer.token(scp=["chat"]))
    assert validator.tenant_of(claims).metadata["scope"] == "chat read"


# Refused shapes, before any key is looked up


async def test_an_unsigned_token_is_refused_without_fetching_keys(
    issuer: OAuthIssuer, validator: TokenValidator
) -> None:
    for alg in ("none", "None", "NONE"):
        token = hand_made({"alg": alg, "typ": "JWT"}, issuer.claims())
        assert (await refused(validator, token)).message == "Unsigned tokens are refused"
    assert sum(issuer.fetches.values()) == 0


async def test_hs256_signed_with_the_public_key_is_refused(
    issuer: OAuthIssuer, validator: TokenValidator
) -> None:
    # Algorithm confusion: the RSA public key (which anyone can fetch) as an HMAC secret.
    rsa_key = issuer.key_for("RS256")
    unsigned = hand_made({"alg": "HS256", "typ": "JWT", "kid": rsa_key.kid}, issuer.claims())
    signing_input = unsigned.rsplit(".", 1)[0]
    signature = hmac.new(rsa_key.public_pem(), signing_input.encode(), hashlib.sha256).digest()
    token = f"{signing_input}.{jwt.utils.base64url_encode(signature).decode()}"
    error = await refused(validator, token)
    assert error.message == "The token was signed with an algorithm that is not allowed"
    assert sum(issuer.fetches.values()) == 0


async def test_an_algorithm_left_out_of_the_config_is_refused(
    issuer: OAuthIssuer, clock: FakeClock
) -> None:
    async with TokenValidator(issuer.config(algorithms=["RS256"]), clock=clock) as validator:
        error = await refused(validator, issuer.token(alg="ES256"))
    assert error.message == "The token was signed with an algorithm that is not allowed"


async def test_a_critical_header_is_refused(issuer: OAuthIssuer, validator: TokenValidator) -> None:
    token = issuer.token(headers={"crit": ["exp"], "exp": 1})
    assert "critical header" in (await refused(validator, token)).message


@pytest.mark.parametrize(
    "token",
    [
        "",
        "garbage",
        "a.b",
        "a.b.c.d.e",
        "eyJ!.eyJ.sig",
        "bm90IGpzb24.e30.c2ln",  # header: not JSON
        "W10.e30.c2ln",  # header: [], not an object
        "e30.e30.c2ln",  # header: no alg
        "eyJhbGciOjF9.e30.c2ln",  # alg: 1
        "ünïcode.e30.c2ln",
    ],
)
async def test_garbage_is_malformed(validator: TokenValidator, token: str) -> None:
    assert (await refused(validator, token)).message == "The token is malformed"


async def test_a_huge_token_is_refused(issuer: OAuthIssuer, validator: TokenValidator) -> None:
    error = await refused(validator, issuer.token(padding="x" * 20_000))
    assert error.message == "The token is too large"


async def test_a_signed_payload_that_is_not_an_object_is_malformed(
    issuer: OAuthIssuer, validator: TokenValidator
) -> None:
    key = issuer.key_for("RS256")
    token = jwt.api_jws.encode(b"[1]", key.private, algorithm="RS256", headers={"kid": key.kid})
    assert (await refused(validator, token)).message == "The token is malformed"


# Signatures and keys


async def test_a_tampered_payload_is_refused(
    issuer: OAuthIssuer, validator: TokenValidator
) -> None:
    token = swap_payload(issuer.token(sub="alice"), sub="mallory")
    assert (await refused(validator, token)).message == "The token's signature does not verify"


async def test_a_tampered_signature_is_refused(
    issuer: OAuthIssuer, validator: TokenValidator
) -> None:
    head, payload, signature = issuer.token().split(".")
    raw = bytearray(jwt.utils.base64url_decode(signature))
    raw[10] ^= 1
    token = f"{head}.{payload}.{jwt.utils.base64url_encode(bytes(raw)).decode()}"
    assert (await refused(validator, token)).message == "The token's signature does not verify"


async def test_keys_in_the_header_are_never_followed(
    issuer: OAuthIssuer, validator: TokenValidator
) -> None:
    mallory = SigningKey.rsa("mallory")
    embedded = {"jwk": mallory.jwk, "jku": issuer.url + "/mallory.json", "x5u": issuer.url}
    own_kid = issuer.token(key=mallory, headers=embedded)
    error = await refused(validator, own_kid)
    assert error.message == "No key of the issuer has this key id"
    their_kid = issuer.token(key=mallory, kid=issuer.key_for("RS256").kid, headers=embedded)
    assert (await refused(validator, their_kid)).message == "The token's signature does not verify"
    assert set(issuer.fetches) == {OIDC_PATH, JWKS_PATH}


async def test_a_key_of_another_type_than_the_algorithm_is_refused(
    issuer: OAuthIssuer, validator: TokenValidator
) -> None:
    token = issuer.token(alg="ES256", kid=issuer.key_for("RS256").kid)
    error = await refused(validator, token)
    assert error.message == "The token's algorithm does not fit the key it names"


async def test_a_key_published_for_another_algorithm_is_refused(
    issuer: OAuthIssuer, validator: TokenValidator
) -> None:
    rsa_key = issuer.key_for("RS256")
    issuer.extra_jwks = [rsa_key.jwk | {"kid": "ps-only", "alg": "PS256"}]
    await validator.validate(issuer.token(alg="PS256", kid="ps-only"))
    error = await refused(validator, issuer.token(alg="RS256", kid="ps-only"))
    assert error.message == "The token's algorithm does not fit the key it names"


async def test_keys_not_for_signatures_are_ignored(
    issuer: OAuthIssuer, validator: TokenValidator
) -> None:
    rsa_key = issuer.key_for("RS256")
    private = jwt.algorithms.RSAAlgorithm.to_jwk(rsa_key.private, as_dict=True)
    issuer.extra_jwks = [
        rsa_key.jwk | {"kid": "enc", "use": "enc"},
        rsa_key.jwk | {"kid": "wrap", "key_ops": ["wrapKey"]},
        private | {"kid": "private"},
        {"kty": "oct", "kid": "secret", "k": "c2VjcmV0"},
        {"kty": "RSA", "kid": "broken", "n": "AQAB"},
    ]
    for kid in ("enc", "wrap", "private", "secret", "broken"):
        error = await refused(validator, issuer.token(key=rsa_key, kid=kid))
        assert error.message == "No key of the issuer has this key id"


async def test_a_token_without_kid_needs_an_issuer_with_one_key(
    issuer: OAuthIssuer, validator: TokenValidator, clock: FakeClock
) -> None:
    error = await refused(validator, issuer.token(kid=None))
    assert error.message == "The token names no key id, and the issuer has several"
    issuer.keys = [issuer.key_for("ES256")]
    clock.advance(600)  # past jwks_ttl
    await validator.validate(issuer.token(alg="ES256", kid=None))


async def test_a_short_rsa_key_is_refused(issuer: OAuthIssuer, validator: TokenValidator) -> None:
    weak = SigningKey.rsa("weak", bits=1024)
    issuer.keys.append(weak)
    with pytest.warns(jwt.warnings.InsecureKeyLengthWarning):
        token = issuer.token(key=weak)
    assert (await refused(validator, token)).message == "The issuer's key is too weak"


# The JWKS cache


async def test_keys_are_fetched_once_and_kept_for_jwks_ttl(
    issuer: OAuthIssuer, validator: TokenValidator, clock: FakeClock
) -> None:
    for _ in range(20):
        await validator.validate(issuer.token())
    assert (issuer.discovery_fetches, issuer.jwks_fetches) == (1, 1)
    clock.advance(599)
    await validator.validate(issuer.token())
    assert issuer.jwks_fetches == 1
    clock.advance(1)
    await validator.validate(issuer.token())
    assert (issuer.discovery_fetches, issuer.jwks_fetches) == (1, 2)


async def test_an_unknown_kid_refetches_once_per_refresh_interval(
    issuer: OAuthIssuer, validator: TokenValidator, clock: FakeClock
) -> None:
    await validator.validate(issuer.token())
    clock.advance(30)  # refresh_interval
    error = await refused(validator, issuer.token(kid="unknown-1"))
    assert error.message == "No key of the issuer has this key id"
    assert issuer.jwks_fetches == 2
    clock.advance(29)
    await refused(validator, issuer.token(kid="unknown-2"))
    assert issuer.jwks_fetches == 2
    clock.advance(1)
    await refused(validator, issuer.token(kid="unknown-3"))
    assert issuer.jwks_fetches == 3


async def test_an_unknown_kid_right_after_a_fetch_does_not_refetch(
    issuer: OAuthIssuer, validator: TokenValidator
) -> None:
    await refused(validator, issuer.token(kid="unknown"))
    assert issuer.jwks_fetches == 1


async def test_rotated_keys_are_found_with_one_refetch(
    issuer: OAuthIssuer, validator: TokenValidator, clock: FakeClock
) -> None:
    old = issuer.token()
    await validator.validate(old)
    clock.advance(30)
    issuer.rotate()
    for alg in ("RS256", "ES256", "EdDSA"):
        await validator.validate(issuer.token(alg=alg))
    assert issuer.jwks_fetches == 2
    error = await refused(validator, old)
    assert error.message == "No key of the issuer has this key id"


async def test_concurrent_first_fetches_are_one_request(
    issuer: OAuthIssuer, validator: TokenValidator
) -> None:
    issuer.gate = gate = asyncio.Event()
    accepted: list[str] = []

    async def validate(sub: str) -> None:
        accepted.append((await validator.validate(issuer.token(sub=sub)))["sub"])

    async with anyio.create_task_group() as group:
        for n in range(10):
            group.start_soon(validate, f"user-{n}")
        await issuer.requested.wait()
        gate.set()
    assert len(accepted) == 10
    assert (issuer.discovery_fetches, issuer.jwks_fetches) == (1, 1)


async def test_concurrent_refetches_for_new_kids_are_one_request(
    issuer: OAuthIssuer, validator: TokenValidator, clock: FakeClock
) -> None:
    await validator.validate(issuer.token())
    clock.advance(30)
    issuer.rotate()
    issuer.gate = gate = asyncio.Event()
    issuer.requested = asyncio.Event()
    async with anyio.create_task_group() as group:
        for alg in ("RS256", "ES256", "EdDSA") * 3:
            group.start_soon(validator.validate, issuer.token(alg=alg))
        await issuer.requested.wait()
        gate.set()
    assert issuer.jwks_fetches == 2


async def test_the_cached_keys_serve_while_the_issuer_is_down(
    issuer: OAuthIssuer, validator: TokenValidator, clock: FakeClock
) -> None:
    await validator.validate(issuer.token())
    await issuer.aclose()
    clock.advance(3600)
    await validator.validate(issuer.token(alg="ES256"))
    await issuer.start()  # back, on the same port
    clock.advance(30)
    issuer.rotate()
    await validator.validate(issuer.token())


async def test_a_failing_issuer_is_asked_again_once_per_refresh_interval(
    issuer: OAuthIssuer, validator: TokenValidator, clock: FakeClock
) -> None:
    await validator.validate(issuer.token())
    issuer.status = 503
    clock.advance(600)
    await validator.validate(issuer.token())
    await validator.validate(issuer.token())
    assert issuer.jwks_fetches == 2
    clock.advance(30)
    await validator.validate(issuer.token())
    assert issuer.jwks_fetches == 3


async def test_no_keys_and_no_issuer_is_a_503(issuer: OAuthIssuer, clock: FakeClock) -> None:
    config = issuer.config()
    await issuer.aclose()
    async with TokenValidator(config, clock=clock) as validator:
        with pytest.raises(IssuerUnavailableError, match="could not be fetched") as caught:
            await validator.validate(issuer.token())
    assert caught.value.http_status == 503
    assert caught.value.to_body()["error"]["code"] == "issuer_unavailable"


# Discovery and fetching


async def test_discovery_naming_another_issuer_is_refused(
    issuer: OAuthIssuer, validator: TokenValidator
) -> None:
    issuer.discovery_issuer = "https://evil.test"
    with pytest.raises(IssuerUnavailableError, match="names another issuer"):
        await validator.validate(issuer.token())
    assert issuer.jwks_fetches == 0


async def test_discovery_falls_back_to_rfc_8414(
    issuer: OAuthIssuer, validator: TokenValidator
) -> None:
    issuer.openid = False
    await validator.validate(issuer.token())
    assert (issuer.fetches[OIDC_PATH], issuer.fetches[RFC8414_PATH]) == (1, 1)


async def test_a_configured_jwks_url_skips_discovery(issuer: OAuthIssuer, clock: FakeClock) -> None:
    async with TokenValidator(issuer.config(jwks_url=issuer.jwks_url), clock=clock) as validator:
        await validator.validate(issuer.token())
    assert (issuer.discovery_fetches, issuer.jwks_fetches) == (0, 1)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"not json", "is not JSON"),
        (b'{"keys": "none"}', "has no list of keys"),
        (b'{"keys": []}', "has no usable signing key"),
        (b" " * (MAX_DOCUMENT_BYTES + 1), "is over"),
    ],
)
async def test_a_broken_jwks_is_refused(
    issuer: OAuthIssuer, clock: FakeClock, body: bytes, message: str
) -> None:
    issuer.jwks_body = body
    async with TokenValidator(issuer.config(jwks_url=issuer.jwks_url), clock=clock) as validator:
        with pytest.raises(IssuerUnavailableError, match=message):
            await validator.validate(issuer.token())


async def test_an_issuer_answering_an_error_is_refused(
    issuer: OAuthIssuer, validator: TokenValidator
) -> None:
    issuer.status = 500
    with pytest.raises(IssuerUnavailableError, match="answered HTTP 500") as caught:
        await validator.validate(issuer.token())
    assert caught.value.upstream_status == 500


async def test_oauth_is_imported_only_where_configured() -> None:
    code = "import sys, leapasgi; assert 'leapasgi.tenants.oauth' not in sys.modules"
    await anyio.run_process([sys.executable, "-c", code])


# RFC 9728 and RFC 6750


async def test_protected_resource_metadata(issuer: OAuthIssuer) -> None:
    assert protected_resource_metadata(issuer.config(), "https://gw.test/mcp") == {
        "resource": "https://gw.test/mcp",
        "authorization_servers": [issuer.url],
        "bearer_methods_supported": ["header"],
        "resource_name": "leapasgi",
    }
    scoped = protected_resource_metadata(issuer.config(required_scopes=["chat"]), "https://gw")
    assert scoped["scopes_supported"] == ["chat"]


@pytest.mark.parametrize(
    ("resource", "url"),
    [
        ("https://gw.test", "https://gw.test/.well-known/oauth-protected-resource"),
        ("https://gw.test/", "https://gw.test/.well-known/oauth-protected-resource"),
        (
            "https://gw.test:8443/mcp",
            "https://gw.test:8443/.well-known/oauth-protected-resource/mcp",
        ),
    ],
)
async def test_resource_metadata_url(resource: str, url: str) -> None:
    assert resource_metadata_url(resource) == url


async def test_www_authenticate() -> None:
    metadata = "https://gw.test/.well-known/oauth-protected-resource"
    assert www_authenticate(metadata) == f'Bearer resource_metadata="{metadata}"'
    assert www_authenticate(
        metadata, error="invalid_token", description="The token has expired"
    ) == (
        f'Bearer resource_metadata="{metadata}", error="invalid_token", '
        'error_description="The token has expired"'
    )
    scoped = www_authenticate(metadata, error="insufficient_scope", scope="chat read")
    assert scoped.endswith('error="insufficient_scope", scope="chat read"')


async def test_www_authenticate_escapes_its_values() -> None:
    header = www_authenticate("https://gw", description='say "hi" \\ \r\nX-Evil: 1 é')
    assert header == (
        'Bearer resource_metadata="https://gw", error_description="say \\"hi\\" \\\\ ??X-Evil: 1 ?"'
    )


@pytest.mark.parametrize(
    ("token", "jwt_like"),
    [
        (b"eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhIn0.c2ln", True),
        (b"eyJhbGciOiJub25lIn0.eyJzdWIiOiJhIn0.", True),
        (b"sk-abc123", False),
        (b"lk-3fA9.x.y", False),
        (b"eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhIn0", False),
        (b"eyJ.a.b.c", False),
        (b"eyJ+/.a.b", False),
    ],
)
async def test_looks_like_jwt(token: bytes, jwt_like: bool) -> None:
    assert looks_like_jwt(token) is jwt_like


async def test_a_minted_token_looks_like_a_jwt(issuer: OAuthIssuer) -> None:
    assert looks_like_jwt(issuer.token().encode())
