"""Row 17 for tenancy: no tenant secret appears anywhere but where it is handed out.

One gateway has every way in tenancy has (virtual keys made by the admin API and by the CLI, a
static key, the admin key, OAuth2 access tokens from a local issuer, the host app's hook),
prices, model lists, rate limits and budgets, and keeps keys, usage and limits in a Redis server
behind a password. It is driven at DEBUG on every logger: keys used, streamed and refused (403,
429 for the rate and the budget, 401 revoked and expired), a wrong key and a garbage one, valid
and broken tokens, the admin API, the MCP ``chat`` tool, the CLI, and Redis going away.

Then every secret is searched for, raw, URL-encoded and in base64 (``forms``), in all that came
out: answers with their headers (error bodies and SSE streams too), log lines, /metrics,
/v1/usage, the key listings, the CLI's output, reprs of the gateway's objects and of the errors
identification raises (their whole chain, as a traceback would log it), what the upstream was
sent, and what Redis holds. A token is searched for whole and by each of its three parts. A
virtual key's secret may appear in one place: the answer (or CLI output) that made it.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import re
import subprocess
import time
import traceback
from collections.abc import Coroutine, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import jwt
from pydantic import SecretStr
from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from leapasgi import Gateway, Tenant
from leapasgi.cli import main
from leapasgi.config import (
    PolicyConfig,
    PriceConfig,
    ProviderConfig,
    ServerConfig,
    StateConfig,
    TenantsConfig,
)
from leapasgi.exceptions import LeapError
from leapasgi.tenants.base import key_digest
from leapasgi.tenants.identity import tenant_of_scope
from tests.asgi.live_server import live_gateway
from tests.fake_upstream import Behavior, FakeUpstream, Seen, text_stream
from tests.redis_server import RedisServer
from tests.reliability.harness import Figures
from tests.reliability.test_security import ACCEPT, occurrences
from tests.tenants.issuer import IssuerThread, OAuthIssuer, hand_made

T = TypeVar("T")

CHAT = "/v1/chat/completions"
MODEL = "m1"
HI = [{"role": "user", "content": "hi"}]
ADMIN_KEY = "sk-admin-tenants-canary-7e3b91c0d4"
STATIC_KEY = "sk-static-tenants-canary-2a8f6d1e90"
REDIS_PASSWORD = "redis-pw-canary-5c1e9b7a3d"
WRONG_REDIS_PASSWORD = "redis-wrong-canary-8d2f4a6c0e"
HOST_SESSION = "host-session-canary-4b7d2e9f01"
WRONG_KEY = "lk-wrong-canary-3d9a7c1b5e0f2a4c6e8b1d3f5a7c9e0b2d4f6"
# The upstream's own key: it is sent there, and scrubbed elsewhere (row 17's other test).
UPSTREAM_KEY = "sk-upstream-0123456789"
GARBAGE = 'garbage-canary "0f4e8a2c6b" %41+/='
FIXED = (
    ADMIN_KEY,
    STATIC_KEY,
    REDIS_PASSWORD,
    WRONG_REDIS_PASSWORD,
    HOST_SESSION,
    WRONG_KEY,
    GARBAGE,
)
# Not secrets: who a token or the host app's session says the caller is (usage names them).
SUBJECT = "oauth-tenant-1"
TIGHT_SUBJECT = "oauth-tenant-2"
HOST_USER = "host-user-1"
PRICES = {MODEL: PriceConfig(input=1000, output=2000)}
# Tokens whose leap_policy claim says "tight" may make one request a minute.
POLICIES = {"tight": PolicyConfig(rpm=1)}
WAIT = 10.0
# The virtual keys the admin API makes, by what they are for ("unused" is first looked up
# when Redis is gone).
KEYS: dict[str, dict[str, Any]] = {
    "main": {"tenant": "team-main", "name": "main", "tags": ["t"], "metadata": {"o": 1}},
    "expiring": {"expires_in": 2.0},
    "models": {"models": ["some-other-model"]},
    "rate": {"rpm": 1},
    "budget": {"budget": {"usd": 0.01, "period": "day", "alert_at": 0.5}},
    "revoked": {"tenant": "team-revoked"},
    "unused": {},
}
SECRET = re.compile(r"lk-[A-Za-z0-9_-]{43}")
# Everything in a Redis database, keys and values, whatever their type.
EVERYTHING = """
local out = {}
for _, name in ipairs(redis.call('KEYS', '*')) do
  table.insert(out, name)
  local kind = redis.call('TYPE', name)['ok']
  local values = {}
  if kind == 'string' then values = {redis.call('GET', name)}
  elseif kind == 'hash' then values = redis.call('HGETALL', name)
  elseif kind == 'list' then values = redis.call('LRANGE', name, 0, -1)
  elseif kind == 'set' then values = redis.call('SMEMBERS', name)
  elseif kind == 'zset' then values = redis.call('ZRANGE', name, 0, -1, 'WITHSCORES')
  elseif kind == 'stream' then
    for _, entry in ipairs(redis.call('XRANGE', name, '-', '+')) do
      for _, value in ipairs(entry[2]) do table.insert(values, value) end
    end
  end
  for _, value in ipairs(values) do table.insert(out, value) end
end
return out
"""


class _Upstream(FakeUpstream):
    """Answers a streamed chat request with a stream, anything else as scripted."""

    def behavior_for(self, seen: Seen) -> Behavior:
        if seen.path.endswith("/chat/completions") and seen.json.get("stream"):
            return Behavior(events=text_stream(["hel", "lo"]))
        return super().behavior_for(seen)


class _EveryLogger(logging.Handler):
    """Every record of every logger at DEBUG, formatted with its traceback."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
        self._levels: dict[logging.Logger, int] = {}

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))

    def attach(self) -> None:
        """DEBUG on the root and every logger there is now; again once uvicorn has set its
        own up, and once more modules have made theirs. Each record reaches this handler
        once: at the root, or at the first logger on its way that does not propagate."""
        manager = logging.Logger.manager
        loggers = [logging.getLogger()]
        loggers += [lg for lg in manager.loggerDict.values() if isinstance(lg, logging.Logger)]
        for logger in loggers:
            self._levels.setdefault(logger, logger.level)
            logger.setLevel(logging.DEBUG)
            top = logger.parent is None or not logger.propagate
            if top and self not in logger.handlers:
                logger.addHandler(self)

    def detach(self) -> None:
        for logger, level in self._levels.items():
            logger.removeHandler(self)
            logger.setLevel(level)


@contextlib.contextmanager
def every_logger() -> Iterator[_EveryLogger]:
    handler = _EveryLogger()
    handler.attach()
    try:
        yield handler
    finally:
        handler.detach()


def _text(response: httpx.Response) -> str:
    return f"{response.status_code} {dict(response.headers)} {response.text}"


def _bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


@dataclass
class _Calls:
    """Every answer the gateway gave, headers and bodies, kept for the search; the answers
    that made a key apart, by its secret."""

    origin: str
    texts: list[str] = field(default_factory=list)
    made: dict[str, str] = field(default_factory=dict)

    def send(
        self,
        method: str,
        path: str,
        *,
        key: str | None = None,
        headers: dict[str, str] | None = None,
        **options: Any,
    ) -> httpx.Response:
        sent = {**(headers or {}), **(_bearer(key) if key is not None else {})}
        response = httpx.request(method, self.origin + path, headers=sent, timeout=WAIT, **options)
        self.texts.append(_text(response))
        return response

    def chat(self, key: str | None, *, stream: bool = False, **options: Any) -> httpx.Response:
        body = {"model": MODEL, "messages": HI, "stream": stream, "max_tokens": 5}
        return self.send("POST", CHAT, key=key, json=body, **options)

    def both(self, key: str | None, **options: Any) -> tuple[int, int]:
        """The statuses of a chat request and of a streamed one."""
        answer = self.chat(key, **options)
        return answer.status_code, self.chat(key, stream=True, **options).status_code

    def mcp(self, key: str, tool: str, arguments: dict[str, Any]) -> httpx.Response:
        call = {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "tools/call",
            "params": {"name": tool, "arguments": arguments},
        }
        return self.send("POST", "/mcp", key=key, json=call, headers={"accept": ACCEPT})

    def make_key(self, fields: dict[str, Any]) -> tuple[str, str]:
        """A new virtual key's id and secret, made through the admin API."""
        made = httpx.post(
            self.origin + "/v1/keys", json=fields, headers=_bearer(ADMIN_KEY), timeout=WAIT
        )
        assert made.status_code == 201, made.text
        assert made.headers["cache-control"] == "no-store"
        body = made.json()
        self.made[body["secret"]] = _text(made)
        return body["id"], body["secret"]


@dataclass
class _Served:
    """The app uvicorn serves: the gateway, noting the loop it runs on and every tenant it
    identified (by repr, once each)."""

    tenants: dict[str, Tenant] = field(default_factory=dict)
    loop: asyncio.AbstractEventLoop | None = None

    def around(self, gateway: Gateway) -> ASGIApp:
        app = gateway.app

        async def served(scope: Scope, receive: Receive, send: Send) -> None:
            self.loop = asyncio.get_running_loop()
            if scope["type"] != "lifespan":
                scope.setdefault("state", {})
            await app(scope, receive, send)
            tenant = tenant_of_scope(scope)
            if tenant is not None:
                self.tenants[repr(tenant)] = tenant

        return served

    def run(self, work: Coroutine[Any, Any, T]) -> T:
        """``work``'s result, run on the gateway's loop."""
        assert self.loop is not None
        return asyncio.run_coroutine_threadsafe(work, self.loop).result(WAIT)


def _provider(upstreams: Sequence[FakeUpstream]) -> list[ProviderConfig]:
    return [
        ProviderConfig(
            name="u1",
            base_url=upstreams[0].base_url,
            api_key=UPSTREAM_KEY,
            models=[MODEL],
            timeout=WAIT,
        )
    ]


def _host_hook(request: Request) -> Tenant | None:
    """The host app's sign-in: its session cookie (a secret) names its user."""
    if request.cookies.get("session") == HOST_SESSION:
        return Tenant(HOST_USER, source="host")
    return None


def _tokens(issuer: OAuthIssuer) -> dict[str, str]:
    """Access tokens by what they are: two the gateway takes, the rest it refuses."""
    header, payload, signature = issuer.token(sub=SUBJECT).split(".")
    claims = json.loads(jwt.utils.base64url_decode(payload)) | {"sub": "mallory"}
    forged = jwt.utils.base64url_encode(json.dumps(claims).encode()).decode()
    flipped = signature[:-4] + ("AAAA" if signature[-4:] != "AAAA" else "BBBB")
    tokens = {
        "valid": issuer.token(sub=SUBJECT),
        "tight": issuer.token(sub=TIGHT_SUBJECT, leap_policy="tight"),
        "expired": issuer.token(sub=SUBJECT, lifetime=-3600),
        "tampered": f"{header}.{forged}.{signature}",
        "bad signature": f"{header}.{payload}.{flipped}",
        "wrong audience": issuer.token(sub=SUBJECT, aud="https://elsewhere.test"),
        "unknown key": issuer.token(sub=SUBJECT, kid="rsa-unknown"),
        "alg none": hand_made(
            {"alg": "none", "typ": "JWT"}, issuer.claims(sub=SUBJECT), b"not-a-signature"
        ),
    }
    for token in tokens.values():
        assert all(len(part) >= 8 for part in token.split("."))
    return tokens


def _with_parts(tokens: Sequence[str]) -> list[str]:
    """Each token, and its header, payload and signature."""
    return sorted({piece for token in tokens for piece in (token, *token.split("."))})


def _config_file(path: Path, redis: RedisServer, upstream: FakeUpstream, password: str) -> Path:
    """The gateway's config as a file, for the CLI, with the Redis URL's ``password``."""
    url = f"redis://:{password}@127.0.0.1:{redis.port}/0"
    path.write_text(
        f"""
[server]
admin_key = "{ADMIN_KEY}"
api_keys = ["{STATIC_KEY}"]

[state]
backend = "redis"
url = "{url}"

[[providers]]
name = "u1"
base_url = "{upstream.base_url}"
api_key = "{UPSTREAM_KEY}"
models = ["{MODEL}"]
"""
    )
    return path


@dataclass
class _Cli:
    """``leapasgi`` run in this process: each command's output (stdout and stderr)."""

    outputs: list[str] = field(default_factory=list)
    made: dict[str, str] = field(default_factory=dict)

    def run(self, *argv: str) -> tuple[int, str]:
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            status = main(list(argv))
        text = f"exit {status}\n{out.getvalue()}{err.getvalue()}"
        return status, text

    def show(self, *argv: str) -> str:
        _, text = self.run(*argv)
        self.outputs.append(text)
        return text

    def create(self, config: Path, *options: str) -> tuple[str, str]:
        """A new key's id and secret, made by ``leapasgi keys create``."""
        status, text = self.run("keys", "create", "--config", str(config), *options)
        assert status == 0, text
        (secret,) = set(SECRET.findall(text))
        key_id = re.search(r"key_[0-9a-f]{16}", text)
        assert key_id is not None
        self.made[secret] = text
        return key_id[0], secret


def _with_cli(cli: _Cli, config: Path, wrong: Path, ids: Sequence[str]) -> list[str]:
    """Keys made, listed, shown, changed and revoked by the CLI, usage reported, and a
    config with a wrong Redis password; the secrets of the keys it made."""
    first_id, first = cli.create(config, "--tenant", "cli-team", "--json")
    second_id, second = cli.create(config, "--name", "table", "--tag", "cli")
    for json_option in ((), ("--json",)):
        cli.show("keys", "list", "--config", str(config), "--all", *json_option)
        cli.show("keys", "list", "--config", str(config), "--tenant", "cli-team", *json_option)
        for key_id in (first_id, second_id, *ids):
            cli.show("keys", "show", "--config", str(config), key_id, *json_option)
        cli.show("keys", "update", "--config", str(config), first_id, "--rpm", "100", *json_option)
        cli.show("usage", "--config", str(config), "--by", "tenant,model,provider", *json_option)
    cli.show("keys", "revoke", "--config", str(config), second_id)
    cli.show("keys", "show", "--config", str(config), "key_0000000000000000")
    cli.show("check", "--config", str(config))
    refused = cli.show("keys", "list", "--config", str(wrong))
    assert not refused.startswith("exit 0"), refused
    return [first, second]


def _identified(served: _Served, gateway: Gateway, credentials: Sequence[str]) -> list[str]:
    """What identification makes of each credential (and of the host app's cookie): the
    tenant's repr and str, or the error's, with its whole chain as a traceback logs it."""

    async def identify(header: tuple[bytes, bytes]) -> list[str]:
        scope: dict[str, Any] = {
            "type": "http",
            "method": "POST",
            "path": CHAT,
            "root_path": "",
            "scheme": "http",
            "server": ("127.0.0.1", 80),
            "query_string": b"",
            "headers": [header],
            "state": {},
        }
        try:
            tenant = await gateway.tenancy.identity.identify(scope)
        except LeapError as error:
            chain = "".join(traceback.format_exception(error))
            return [chain, repr(error), str(error), str(error.challenge)]
        return [repr(tenant), str(tenant)]

    headers = [(b"authorization", f"Bearer {key}".encode()) for key in credentials]
    headers += [(b"x-api-key", key.encode()) for key in credentials]
    headers.append((b"cookie", f"session={HOST_SESSION}".encode()))
    return [text for header in headers for text in served.run(identify(header))]


def _reprs(served: _Served, gateway: Gateway) -> list[str]:
    """repr and str of the gateway's config, tenancy, stores, keys and tenants."""
    tenancy = gateway.tenancy
    config = gateway.config
    objects: list[Any] = [
        gateway,
        config,
        config.server,
        config.state,
        config.tenants,
        config.oauth,
        config.model_dump(),
        config.model_dump_json(),
        gateway.state,
        gateway.access,
        tenancy,
        tenancy.config,
        tenancy.stores,
        tenancy.keys,
        tenancy.usage,
        tenancy.ledger,
        tenancy.identity.oauth,
        tenancy.buffer,
        *served.run(tenancy.keys.list()),
        *served.tenants.values(),
    ]
    return [text for obj in objects for text in (repr(obj), str(obj))]


def _redis_holds(redis: RedisServer) -> str:
    """Every key and value in the Redis database, as redis-cli prints them."""
    login = ["-p", str(redis.port), "--no-auth-warning", "-a", REDIS_PASSWORD]
    dumped = subprocess.run(
        ["redis-cli", *login, "EVAL", EVERYTHING, "0"],
        capture_output=True,
        encoding="utf-8",
        errors="replace",
        timeout=WAIT,
        check=True,
    )
    return dumped.stdout


def _usage(calls: _Calls, tenants: set[str]) -> dict[str, Any]:
    """The usage report by tenant, model and provider, once it names every tenant in
    ``tenants`` (requests are accounted as they end)."""
    deadline = time.monotonic() + WAIT
    while True:
        answer = calls.send(
            "GET", "/v1/usage", key=ADMIN_KEY, params={"group_by": "tenant,model,provider"}
        )
        assert answer.status_code == 200, answer.text
        report: dict[str, Any] = answer.json()
        if tenants <= {row["tenant"] for row in report["data"]}:
            return report
        assert time.monotonic() < deadline, report
        time.sleep(0.05)


def _expired(calls: _Calls, secret: str) -> httpx.Response:
    """The answer to a key once it has expired."""
    deadline = time.monotonic() + WAIT
    while True:
        answer = calls.chat(secret)
        if answer.status_code != 200 or time.monotonic() > deadline:
            return answer
        time.sleep(0.1)


def _drive_keys(calls: _Calls) -> tuple[dict[str, str], dict[str, str]]:
    """Virtual keys used, streamed, refused, revoked and expired; their ids and secrets."""
    ids, secrets = {}, {}
    for name, fields in KEYS.items():
        ids[name], secrets[name] = calls.make_key(fields)
    main = secrets["main"]
    assert calls.both(main) == (200, 200)
    assert calls.chat(secrets["expiring"]).status_code == 200
    messages = {"model": MODEL, "max_tokens": 5, "messages": HI}
    for stream in (False, True):
        answer = calls.send(
            "POST", "/v1/messages", headers={"x-api-key": main}, json={**messages, "stream": stream}
        )
        assert answer.status_code == 200, answer.text
    answer = calls.send("POST", "/v1/responses", key=main, json={"model": MODEL, "input": "hi"})
    assert answer.status_code == 200, answer.text
    for path in ("/v1/models", f"/v1/models/{MODEL}"):
        assert calls.send("GET", path, key=main).status_code == 200
    assert calls.send("GET", "/v1/keys", key=main).status_code in (401, 403)
    answer = calls.chat(secrets["models"])
    assert (answer.status_code, answer.json()["error"]["code"]) == (403, "model_not_allowed")
    assert calls.chat(secrets["models"], stream=True).status_code == 403
    assert calls.chat(secrets["rate"]).status_code == 200
    answer = calls.chat(secrets["rate"])
    assert (answer.status_code, answer.json()["error"]["code"]) == (
        429,
        "tenant_rate_limit_exceeded",
    )
    assert calls.chat(secrets["rate"], stream=True).status_code == 429
    codes = [calls.chat(secrets["budget"]).status_code for _ in range(6)]
    assert 429 in codes, codes
    answer = calls.chat(secrets["budget"], stream=True)
    assert (answer.status_code, answer.json()["error"]["code"]) == (429, "budget_exceeded")
    assert calls.chat(secrets["revoked"]).status_code == 200
    assert calls.send("DELETE", f"/v1/keys/{ids['revoked']}", key=ADMIN_KEY).status_code == 200
    answer = calls.chat(secrets["revoked"])
    assert (answer.status_code, answer.json()["error"]["code"]) == (401, "key_revoked")
    assert calls.chat(secrets["revoked"], stream=True).status_code == 401
    return ids, secrets


def _drive_others(calls: _Calls, tokens: dict[str, str]) -> None:
    """Wrong and garbage keys, tokens good and bad, the static and admin keys, the host
    app's session."""
    for key in (WRONG_KEY, GARBAGE):
        assert calls.both(key) == (401, 401)
        assert calls.send("GET", "/v1/models", key=key).status_code == 401
        assert calls.send("GET", "/v1/keys", key=key).status_code == 401
        assert calls.chat(None, headers={"x-api-key": key}).status_code == 401
    assert calls.both(tokens["valid"]) == (200, 200)
    assert calls.send("GET", "/v1/models", key=tokens["valid"]).status_code == 200
    assert calls.chat(tokens["tight"]).status_code == 200
    assert calls.chat(tokens["tight"]).status_code == 429
    for name, token in tokens.items():
        if name not in ("valid", "tight"):
            assert calls.both(token) == (401, 401), name
    assert calls.both(STATIC_KEY) == (200, 200)
    assert calls.chat(ADMIN_KEY).status_code == 200
    cookie = {"cookie": f"session={HOST_SESSION}"}
    assert calls.both(None, headers=cookie) == (200, 200)
    assert calls.chat(None, headers={"cookie": "session=someone-else"}).status_code == 401


def _drive_admin(calls: _Calls, ids: dict[str, str]) -> list[str]:
    """The admin API's views of keys and usage, and the rest of its routes: their answers."""
    before = len(calls.texts)
    for query in ({}, {"tenant": "team-main"}):
        assert calls.send("GET", "/v1/keys", key=ADMIN_KEY, params=query).status_code == 200
    for key_id in ids.values():
        assert calls.send("GET", f"/v1/keys/{key_id}", key=ADMIN_KEY).status_code == 200
    changed = calls.send(
        "PATCH", f"/v1/keys/{ids['main']}", key=ADMIN_KEY, json={"name": "renamed", "rpm": 1000}
    )
    assert changed.status_code == 200, changed.text
    assert calls.send("POST", f"/v1/keys/{ids['revoked']}/revoke", key=ADMIN_KEY).is_success
    assert calls.send("GET", "/v1/usage", key=ADMIN_KEY).status_code == 200
    for path in ("/v1/providers", "/health", "/health/ready"):
        assert calls.send("GET", path, key=ADMIN_KEY).status_code == 200
    return calls.texts[before:]


def _drive_mcp(calls: _Calls, secrets: dict[str, str], tokens: dict[str, str]) -> list[str]:
    """The MCP ``chat`` tool with keys and tokens good and bad: the answers."""
    before = len(calls.texts)
    chat = {"model": MODEL, "prompt": "hi"}
    for key in (secrets["main"], tokens["valid"], STATIC_KEY):
        answer = calls.mcp(key, "chat", chat)
        assert answer.status_code == 200, answer.text
        assert "hello" in answer.text
    for key in (secrets["models"], secrets["rate"], secrets["budget"]):
        assert calls.mcp(key, "chat", chat).status_code == 200
    assert calls.mcp(secrets["main"], "list_models", {}).status_code == 200
    for key in (secrets["revoked"], WRONG_KEY, GARBAGE, tokens["expired"], tokens["tampered"]):
        assert calls.mcp(key, "chat", chat).status_code == 401
    return calls.texts[before:]


def _without_redis(calls: _Calls, cli: _Cli, config: Path, secrets: dict[str, str]) -> None:
    """Redis gone: a key never looked up, the admin API, the CLI."""
    assert calls.chat(secrets["unused"]).status_code == 503
    calls.chat(secrets["main"])
    for path in ("/v1/keys", "/v1/usage", "/health/ready"):
        calls.send("GET", path, key=ADMIN_KEY)
    cli.show("keys", "list", "--config", str(config))


def test_row17_tenant_secrets_appear_nowhere(figures: Figures, tmp_path: Path) -> None:
    upstream = _Upstream()
    served = _Served()
    cli = _Cli()
    with (
        RedisServer(password=REDIS_PASSWORD) as redis,
        IssuerThread() as thread,
        every_logger() as logs,
        live_gateway(
            _provider,
            upstreams=[upstream],
            app=served.around,
            authenticate=_host_hook,
            server=ServerConfig(
                api_keys=[SecretStr(STATIC_KEY)], admin_key=SecretStr(ADMIN_KEY), mcp=True
            ),
            state=StateConfig(backend="redis", url=SecretStr(redis.url)),
            tenants=TenantsConfig(require_key=True, flush_interval=0.05, key_cache_ttl=0.2),
            oauth=thread.issuer.config(policy_claim="leap_policy", policies=POLICIES),
            prices=PRICES,
        ) as live,
    ):
        logs.attach()  # uvicorn set its loggers up while starting
        calls = _Calls(live.origin)
        tokens = _tokens(thread.issuer)
        ids, secrets = _drive_keys(calls)
        _drive_others(calls, tokens)
        mcp_texts = _drive_mcp(calls, secrets, tokens)
        logs.attach()  # and the MCP server made its own
        admin_texts = _drive_admin(calls, ids)
        report = _usage(calls, {"team-main", SUBJECT, TIGHT_SUBJECT, HOST_USER})
        config = _config_file(tmp_path / "gateway.toml", redis, upstream, REDIS_PASSWORD)
        wrong = _config_file(tmp_path / "wrong.toml", redis, upstream, WRONG_REDIS_PASSWORD)
        cli_secrets = _with_cli(cli, config, wrong, [ids["main"], ids["revoked"]])
        assert calls.chat(cli_secrets[0]).status_code == 200  # the gateway knows it at once
        expired = _expired(calls, secrets["expiring"])
        assert (expired.status_code, expired.json()["error"]["code"]) == (401, "key_expired")
        assert calls.chat(secrets["expiring"], stream=True).status_code == 401
        metrics = calls.send("GET", "/metrics", key=STATIC_KEY).text
        virtual = [*secrets.values(), *cli_secrets]
        # Not the unused key: looked up now, it would be served from the cache below.
        looked_up = [secret for secret in virtual if secret != secrets["unused"]]
        credentials = [*looked_up, *tokens.values(), WRONG_KEY, GARBAGE, ADMIN_KEY, STATIC_KEY]
        identified = _identified(served, live.gateway, credentials)
        reprs = _reprs(served, live.gateway)
        held = _redis_holds(redis)
        redis.kill()
        _without_redis(calls, cli, config, secrets)
    canaries = [*FIXED, *virtual, *_with_parts(list(tokens.values()))]
    channels = {
        "responses": calls.texts,
        "log lines": logs.lines,
        "/metrics": [metrics],
        "/v1/usage": [json.dumps(report)],
        "admin output": admin_texts,
        "MCP output": mcp_texts,
        "CLI output": cli.outputs,
        "repr/str": reprs,
        "identification": identified,
        "upstream requests": [f"{s.path}?{s.query} {s.headers} {s.body!r}" for s in upstream.seen],
        "Redis": [held],
    }
    for channel, texts in channels.items():
        leaks = occurrences(texts, canaries)
        figures.record(
            "17",
            f"tenant secret occurrences in {channel} ({len(texts)} scanned)",
            len(leaks),
            passed=not leaks,
            target="0",
        )
        assert not leaks, (channel, leaks)
    # A virtual key's secret is in the answer that made it, and no other secret is.
    made = {**calls.made, **cli.made}
    shown = [secret for secret, text in made.items() if secret in text]
    others = [
        leak
        for secret, text in made.items()
        for leak in occurrences([text], [c for c in canaries if c != secret])
    ]
    figures.record(
        "17",
        f"virtual key secrets shown in the answer that made them ({len(made)} made)",
        len(shown),
        passed=len(shown) == len(made) == len(virtual) and not others,
        target=f"{len(made)}, and no other secret there",
    )
    assert len(shown) == len(made) == len(virtual), (shown, made)
    assert not others, others
    # Not vacuous: the logs were on, costs and tenants were logged, usage names the tokens'
    # and the host app's callers, and Redis holds a key by its secret's digest.
    assert any(" tenant=team-main" in line and " cost=" in line for line in logs.lines)
    assert any(line.startswith("leapasgi.state WARNING") for line in logs.lines)
    assert any(" DEBUG " in line for line in logs.lines)
    tenants = {row["tenant"] for row in report["data"]}
    assert {SUBJECT, TIGHT_SUBJECT, HOST_USER, "team-main"} <= tenants
    assert key_digest(secrets["main"]) in held
