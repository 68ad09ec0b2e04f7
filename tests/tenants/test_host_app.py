"""The gateway mounted in a FastAPI app behind the app's own users: the app's sign-in decides who
calls (``Gateway(authenticate=...)``), with no gateway keys, and each user is a tenant with its
own policy and usage."""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from fastapi import FastAPI, Request, Response
from pydantic import SecretStr

from leapasgi import Gateway, Tenant, TenantPolicy
from leapasgi.config import PriceConfig, ServerConfig
from tests.asgi.live_server import LOOPS, LiveGateway, live_gateway, mock_config

ADMIN = "admin-key-0123456789"
HI = [{"role": "user", "content": "hi"}]
# The host app's users, and the policy each plan gets.
PLANS = {
    "free": TenantPolicy(models=frozenset({"mock-chat"}), rpm=2),
    "pro": TenantPolicy(),
}
USERS = {"alice": "free", "bob": "pro"}


class HostApp:
    """A FastAPI app with its own sign-in (a session cookie) and the gateway under /llm."""

    def __init__(self) -> None:
        self.sessions: dict[str, str] = {}

    def authenticate(self, request: Request) -> Tenant | None:
        """The gateway's hook: the signed-in user as a tenant, else None (a 401)."""
        user = self.sessions.get(request.cookies.get("session", ""))
        if user is None:
            return None
        return Tenant(user, PLANS[USERS[user]], source="host", tags=(USERS[user],))

    def build(self, gateway: Gateway) -> FastAPI:
        app = FastAPI()

        @app.post("/login/{user}")
        async def login(user: str, response: Response) -> dict[str, str]:
            token = secrets.token_urlsafe(16)
            self.sessions[token] = user
            response.set_cookie("session", token, httponly=True)
            return {"user": user}

        @app.get("/me")
        async def me(request: Request) -> dict[str, Any]:
            return {"user": self.sessions.get(request.cookies.get("session", ""))}

        app.mount("/llm", gateway.app)
        return app


@pytest.fixture(params=LOOPS)
def host(request: pytest.FixtureRequest) -> Iterator[tuple[HostApp, LiveGateway]]:
    app = HostApp()
    with live_gateway(
        lambda up: [mock_config()],
        app=app.build,
        loop=request.param,
        authenticate=app.authenticate,
        server=ServerConfig(admin_key=SecretStr(ADMIN)),
        prices={"mock-chat": PriceConfig(input=1000, output=2000)},
    ) as live:
        yield app, live


def signed_in(live: LiveGateway, user: str) -> openai.OpenAI:
    """An openai client carrying ``user``'s session cookie from the host app's sign-in."""
    with httpx.Client(base_url=live.origin) as http:
        cookie = http.post(f"/login/{user}").cookies["session"]
    return openai.OpenAI(
        base_url=f"{live.origin}/llm/v1",
        api_key="unused",
        max_retries=0,
        default_headers={"cookie": f"session={cookie}"},
    )


def test_signed_in_users_call_the_gateway_with_their_plans_policy(
    host: tuple[HostApp, LiveGateway],
) -> None:
    _, live = host
    with signed_in(live, "alice") as alice, signed_in(live, "bob") as bob:
        answer = alice.chat.completions.with_raw_response.create(model="mock-chat", messages=HI)
        assert answer.headers["x-leap-cost-usd"]
        alice.chat.completions.create(model="mock-chat", messages=HI)
        with pytest.raises(openai.RateLimitError):  # the free plan: 2 a minute
            alice.chat.completions.create(model="mock-chat", messages=HI)
        for _ in range(3):
            bob.chat.completions.create(model="mock-chat", messages=HI)


def test_a_caller_the_host_app_does_not_know_is_refused(
    host: tuple[HostApp, LiveGateway],
) -> None:
    _, live = host
    with (
        openai.OpenAI(base_url=f"{live.origin}/llm/v1", api_key="x", max_retries=0) as stranger,
        pytest.raises(openai.AuthenticationError),
    ):
        stranger.chat.completions.create(model="mock-chat", messages=HI)


def test_usage_is_reported_per_user(host: tuple[HostApp, LiveGateway]) -> None:
    _, live = host
    with signed_in(live, "alice") as alice, signed_in(live, "bob") as bob:
        alice.chat.completions.create(model="mock-chat", messages=HI)
        for _ in range(2):
            bob.chat.completions.create(model="mock-chat", messages=HI)
    with httpx.Client(
        base_url=f"{live.origin}/llm", headers={"authorization": f"Bearer {ADMIN}"}
    ) as admin:
        for _ in range(500):
            report = admin.get("/v1/usage", params={"group_by": "tenant"}).json()
            if report["total"]["requests"] >= 3:
                break
            time.sleep(0.01)  # requests are accounted as they end
    by_user = {row["tenant"]: row["requests"] for row in report["data"]}
    assert by_user == {"alice": 1, "bob": 2}
