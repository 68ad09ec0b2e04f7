"""Row 45: OAuth2 access tokens from a local issuer (127.0.0.1) through a served gateway and
the official openai SDK: valid ones accepted, every kind of bad one refused with 401 and the
challenge that names the resource metadata, and never an upstream call for a refused one."""

from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest

from tests.asgi.live_server import LiveGateway, live_gateway, mock_config
from tests.reliability.harness import Figures
from tests.tenants.issuer import IssuerThread, OAuthIssuer
from tests.tenants.test_oauth_http import REFUSED, SCOPE

ROW = "45"
HI = [{"role": "user", "content": "hi"}]
METADATA = "/.well-known/oauth-protected-resource"


@pytest.fixture(scope="module")
def issuer() -> Iterator[OAuthIssuer]:
    with IssuerThread() as thread:
        yield thread.issuer


@pytest.fixture(scope="module")
def live(issuer: OAuthIssuer) -> Iterator[LiveGateway]:
    oauth = issuer.config(required_scopes=[SCOPE])
    with live_gateway(lambda up: [mock_config()], loop="uvloop", oauth=oauth) as gateway:
        yield gateway


def test_valid_tokens_are_accepted(
    live: LiveGateway, issuer: OAuthIssuer, figures: Figures
) -> None:
    algorithms = ["RS256", "ES256", "EdDSA"]
    accepted = 0
    for alg in algorithms:
        with live.client(api_key=issuer.token(alg=alg, scope=SCOPE)) as client:
            answer = client.chat.completions.create(model="mock-chat", messages=HI)
            accepted += answer.choices[0].message.content == "You said: hi"
    figures.record(
        ROW,
        f"valid tokens ({', '.join(algorithms)}) accepted",
        f"{accepted} of {len(algorithms)}",
        passed=accepted == len(algorithms),
        target="all",
    )
    assert accepted == len(algorithms)


def test_bad_tokens_are_refused_with_the_challenge(
    live: LiveGateway, issuer: OAuthIssuer, figures: Figures
) -> None:
    served = len(live.mock().requests)
    refused: list[str] = []
    for name, make, _ in REFUSED:
        with (
            live.client(api_key=make(issuer)) as client,
            pytest.raises(openai.AuthenticationError) as caught,
        ):
            client.chat.completions.create(model="mock-chat", messages=HI)
        challenge = caught.value.response.headers.get("www-authenticate", "")
        if (
            caught.value.status_code == 401
            and f'resource_metadata="{live.origin}{METADATA}"' in challenge
            and 'error="invalid_token"' in challenge
        ):
            refused.append(name)
    upstream_calls = len(live.mock().requests) - served
    names = [name for name, _, _ in REFUSED]
    figures.record(
        ROW,
        f"bad tokens ({', '.join(names)}) refused with 401 and the challenge",
        f"{len(refused)} of {len(names)}",
        passed=refused == names,
        target="all",
    )
    figures.record(
        ROW, "upstream calls for refused tokens", upstream_calls, passed=upstream_calls == 0
    )
    assert refused == names
    assert upstream_calls == 0
