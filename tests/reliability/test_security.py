"""Rows 17-20: no key and no content leaks anywhere, auth on every route, SSRF guards.

Canary keys are scanned for raw, URL-encoded and in base64 (at every byte alignment, so they
are found inside a longer encoded text too) in every channel the gateway has: responses, log
lines at DEBUG, /metrics, reprs, admin and MCP output. Refusals are counted on the client side,
upstream calls on the fake upstreams' side.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import socket
import time
import urllib.parse
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio
import httpx
import pytest
from fastapi import FastAPI
from pydantic import SecretStr
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Mount, Route

from leapasgi import Gateway
from leapasgi.asgi import LeapMiddleware
from leapasgi.config import (
    GatewayConfig,
    HealthConfig,
    ProviderConfig,
    RoutingConfig,
    ServerConfig,
    parse_config,
)
from leapasgi.exceptions import ConfigurationError
from leapasgi.types.guard import check_request_fields
from tests.asgi.live_server import LiveGateway, live_gateway
from tests.fake_upstream import (
    Behavior,
    FakeUpstream,
    chunk,
    completion,
    error_body,
    sse,
    text_stream,
)
from tests.reliability.harness import CONNECT, FIRST_BYTE, IDLE, TOTAL, Figures, provider_over

CHAT = "/v1/chat/completions"
BODY: dict[str, Any] = {"model": "m1", "messages": [{"role": "user", "content": "hi"}]}
API_KEY = "sk-gw-canary-4f1e9a27c3"
ADMIN_KEY = "sk-admin-canary-8b2d6e0f15"
ACCEPT = "application/json, text/event-stream"
INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-11-25",
        "capabilities": {},
        "clientInfo": {"name": "raw", "version": "1"},
    },
}
FAST_RETRIES = {"retry_initial_delay": 0.0, "retry_max_delay": 0.0, "request_timeout": TOTAL}
LOGGERS = ("leapasgi", "leapmcp", "aiohttp", "uvicorn", "uvicorn.error", "uvicorn.access", "mcp")


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _openai_shaped(response: httpx.Response) -> bool:
    try:
        body = response.json()
    except ValueError:
        return False
    return (
        isinstance(body, dict)
        and set(body) == {"error"}
        and set(body["error"]) == {"message", "type", "param", "code"}
    )


def _upstream_calls(fakes: Sequence[FakeUpstream]) -> int:
    return sum(len(fake.seen) for fake in fakes)


def forms(secret: str) -> set[str]:
    """``secret`` raw, URL-encoded, and the part of its base64 that survives any alignment."""
    raw = secret.encode()
    found = {secret, urllib.parse.quote(secret, safe=""), urllib.parse.quote_plus(secret)}
    found.add(base64.b64encode(raw).decode().rstrip("="))
    for pad in range(3):
        encoded = base64.b64encode(b"\0" * pad + raw).decode()
        found.add(encoded[(8 * pad + 5) // 6 : 8 * (pad + len(raw)) // 6])
    return found


def leak_text(secret: str) -> str:
    """What a careless upstream says back: the key raw, URL-encoded and in base64."""
    encoded = base64.b64encode(f"user:{secret}".encode()).decode()
    return f"Incorrect API key {secret} (sent as {urllib.parse.quote(secret)}, basic {encoded})"


def occurrences(texts: Sequence[str], secrets: Sequence[str]) -> list[tuple[str, str]]:
    """(secret, the text's first 80 characters) for every text holding some form of a secret."""
    found = []
    for secret in secrets:
        needles = forms(secret)
        found += [(secret, text[:80]) for text in texts if any(n in text for n in needles)]
    return found


class _Lines(logging.Handler):
    """Every record, formatted with its traceback, as the line a log file would get."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@dataclass
class _DebugLogs:
    handler: _Lines = field(default_factory=_Lines)
    saved: list[tuple[logging.Logger, int]] = field(default_factory=list)

    def attach(self) -> None:
        """DEBUG on our loggers; again once uvicorn has configured its own (it resets them)."""
        for name in LOGGERS:
            logger = logging.getLogger(name)
            self.saved.append((logger, logger.level))
            logger.setLevel(logging.DEBUG)
        for name in ("", "uvicorn", "uvicorn.access"):
            logger = logging.getLogger(name)
            if self.handler not in logger.handlers:
                logger.addHandler(self.handler)

    def detach(self) -> None:
        for name in ("", "uvicorn", "uvicorn.access"):
            logging.getLogger(name).removeHandler(self.handler)
        for logger, level in reversed(self.saved):
            logger.setLevel(level)


@contextlib.contextmanager
def debug_logs() -> Iterator[_DebugLogs]:
    logs = _DebugLogs()
    logs.attach()
    try:
        yield logs
    finally:
        logs.detach()


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _timeouts(**options: Any) -> dict[str, Any]:
    return {
        "connect_timeout": CONNECT,
        "first_byte_timeout": FIRST_BYTE,
        "idle_timeout": IDLE,
        "total_timeout": TOTAL,
        **options,
    }


# Row 17


KEY_U1 = "sk-u1-canary+Key/7f3a9c1e7b5d"
KEY_U2_QUERY = "AIza-u2-canary+q/8d2e4f6a90"
KEY_U3 = "sk-u3-canary-1b7c3e9d0a2f"
KEY_U3_HEADER = "hdr-u3-canary-6c0e2b8f4d"
KEY_U4_QUERY = "u4-canary-3e5a7c9b1d"
CLIENT_CANARY = "sk-client-canary-0d9f8e7c6b"
PROVIDER_KEYS = (KEY_U1, KEY_U2_QUERY, KEY_U3, KEY_U3_HEADER, KEY_U4_QUERY)
ALL_KEYS = (*PROVIDER_KEYS, API_KEY, ADMIN_KEY, CLIENT_CANARY)


def _leaky_providers(port: int) -> Any:
    def providers(fakes: Sequence[FakeUpstream]) -> list[ProviderConfig]:
        u1, u2, u3 = fakes
        query = urllib.parse.quote(KEY_U2_QUERY, safe="")
        return [
            ProviderConfig(name="u1", base_url=u1.base_url, api_key=KEY_U1, **_timeouts()),
            # A Google-style key in the URL query, and no bearer key.
            ProviderConfig(name="u2", base_url=f"{u2.base_url}?key={query}", **_timeouts()),
            # No model list: the gateway discovers them (and logs why when that fails).
            ProviderConfig(
                name="u3",
                base_url=u3.base_url,
                api_key=KEY_U3,
                headers={"x-api-key": KEY_U3_HEADER},
                **_timeouts(models=[]),
            ),
            # Nothing listens here: connection errors with the key in the URL.
            ProviderConfig(
                name="u4",
                base_url=f"http://127.0.0.1:{port}/v1?key={KEY_U4_QUERY}",
                **_timeouts(),
            ),
        ]

    return providers


def _echoes(secret: str) -> list[tuple[Behavior, bool]]:
    """Every way an upstream can say the key back: (behavior, streamed)."""
    leak = leak_text(secret)
    detailed = {"error": {"message": leak, "type": leak, "param": leak, "code": leak}}
    return [
        (Behavior(status=401, json_body=error_body(leak)), False),
        (Behavior(status=400, json_body=detailed), False),
        (Behavior(status=429, json_body=error_body(leak), headers={"Retry-After": "0"}), False),
        (
            Behavior(status=500, raw_body=leak.encode(), headers={"Content-Type": "text/plain"}),
            False,
        ),
        (Behavior(status=200, json_body={"error": {"message": leak}}), False),
        (Behavior(status=401, json_body=error_body(leak)), True),
        (Behavior(events=sse(error_body(leak, type="server_error"), done=False)), True),
        (Behavior(events=sse(chunk({"role": "assistant", "content": "x"}), detailed)), True),
    ]


@dataclass
class _Client:
    """Every response the gateway gave, headers included, kept for the scan."""

    live: LiveGateway
    texts: list[str] = field(default_factory=list)

    @property
    def root(self) -> str:
        return f"http://127.0.0.1:{self.live.port}"

    def call(
        self, method: str, path: str, *, key: str | None = API_KEY, **options: Any
    ) -> httpx.Response:
        headers = dict(options.pop("headers", {}))
        if key is not None:
            headers.update(_auth(key))
        response = httpx.request(method, self.root + path, headers=headers, timeout=10.0, **options)
        self.texts.append(f"{response.status_code} {dict(response.headers)} {response.text}")
        return response

    def mcp(self, tool: str, arguments: dict[str, Any], *, key: str = API_KEY) -> httpx.Response:
        call = {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "tools/call",
            "params": {"name": tool, "arguments": arguments},
        }
        return self.call("POST", "/mcp", key=key, json=call, headers={"accept": ACCEPT})


def _reprs(gateway: Gateway) -> list[str]:
    objects: list[Any] = [
        gateway,
        gateway.config,
        gateway.config.server,
        gateway.manager,
        gateway.manager.registry,
        gateway.access,
        gateway.recorder,
        *gateway.config.providers,
    ]
    for entry in gateway.manager.registry:
        objects += [entry, entry.provider, getattr(entry.provider, "settings", None)]
    return [text for obj in objects for text in (repr(obj), str(obj))]


def test_row17_canary_keys_appear_nowhere(figures: Figures) -> None:
    fakes = [FakeUpstream() for _ in range(3)]
    for fake, secret in zip(fakes, (KEY_U1, KEY_U2_QUERY, KEY_U3_HEADER), strict=True):
        fake.models_behavior = Behavior(status=401, json_body=error_body(leak_text(secret)))
    server = ServerConfig(api_keys=[SecretStr(API_KEY)], admin_key=SecretStr(ADMIN_KEY), mcp=True)
    with (
        debug_logs() as logs,
        live_gateway(
            _leaky_providers(_closed_port()),
            upstreams=fakes,
            server=server,
            routing=RoutingConfig(**FAST_RETRIES),
        ) as live,
    ):
        logs.attach()  # uvicorn set its loggers up while starting
        client = _Client(live)
        for name, fake, secret in [
            ("u1", fakes[0], KEY_U1),
            ("u2", fakes[1], KEY_U2_QUERY),
            ("u3", fakes[2], KEY_U3_HEADER),
        ]:
            for behavior, stream in _echoes(secret):
                fake.default = behavior
                body = {**BODY, "model": f"{name}/m1", "stream": stream}
                client.call("POST", CHAT, json=body)
        for stream in (False, True):
            client.call("POST", CHAT, json={**BODY, "model": "u4/m1", "stream": stream})
        client.call("POST", CHAT, json=BODY, key=CLIENT_CANARY)
        client.call("GET", "/v1/models", key=CLIENT_CANARY)
        client.call("GET", "/v1/providers", key=API_KEY)
        for path in ("/v1/models", "/v1/models/u1/m1", "/health", "/health/ready"):
            client.call("GET", path)
        admin_before = len(client.texts)
        client.call("POST", "/v1/providers/health", key=ADMIN_KEY)
        client.call("GET", "/v1/providers", key=ADMIN_KEY)
        client.call("PUT", "/v1/providers/u4/status", key=ADMIN_KEY, json={"status": "active"})
        admin_texts = client.texts[admin_before:]
        mcp_before = len(client.texts)
        fakes[0].default = _echoes(KEY_U1)[-1][0]
        for tool, arguments, key in [
            ("list_providers", {}, ADMIN_KEY),
            ("health_check", {}, ADMIN_KEY),
            ("provider_stats", {}, ADMIN_KEY),
            ("list_models", {}, API_KEY),
            ("chat", {"model": "u1/m1", "prompt": "hi"}, API_KEY),
            ("chat", {"model": "u4/m1", "prompt": "hi"}, API_KEY),
        ]:
            assert client.mcp(tool, arguments, key=key).status_code == 200
        mcp_texts = client.texts[mcp_before:]
        metrics = client.call("GET", "/metrics").text
        reprs = _reprs(live.gateway)
    lines = logs.handler.lines
    channels = {
        "responses": client.texts,
        "log lines": lines,
        "/metrics": [metrics],
        "repr/str": reprs,
        "admin output": admin_texts,
        "MCP output": mcp_texts,
    }
    for channel, texts in channels.items():
        leaks = occurrences(texts, ALL_KEYS)
        figures.record(
            "17",
            f"key occurrences in {channel} ({len(texts)} scanned)",
            len(leaks),
            passed=not leaks,
            target="0",
        )
        assert not leaks, (channel, leaks)
    # Not vacuous: the upstreams echoed, the gateway scrubbed, the logs were on.
    everything = "\n".join(client.texts)
    assert everything.count("[redacted]") >= 20
    assert all(text.startswith("200 ") for text in admin_texts)
    assert "[redacted]" in admin_texts[0]
    assert "[redacted]" in "".join(mcp_texts)
    assert any(line.startswith("leapasgi.access") for line in lines)
    assert fakes[0].chat_requests[0].headers["Authorization"] == f"Bearer {KEY_U1}"
    assert urllib.parse.parse_qs(fakes[1].chat_requests[0].query)["key"] == [KEY_U2_QUERY]
    assert fakes[2].chat_requests[0].headers["x-api-key"] == KEY_U3_HEADER


# Row 18

PROMPT = "canary-prompt-3f9e1d77b2"
SYSTEM = "canary-system-5a0c4e8f61"
TOOL_ARGUMENT = "canary-argument-9d3b7f1c05"
COMPLETION = "canary-completion-a51c0e42d8"
CONTENT = (PROMPT, SYSTEM, TOOL_ARGUMENT, COMPLETION)


def test_row18_prompts_and_completions_stay_out_of_logs_and_metrics(figures: Figures) -> None:
    fakes = [FakeUpstream() for _ in range(3)]
    messages = [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": PROMPT},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "f", "arguments": json.dumps({"x": TOOL_ARGUMENT})},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": PROMPT},
    ]
    body = {**BODY, "messages": messages}
    server = ServerConfig(api_keys=[SecretStr(API_KEY)], admin_key=SecretStr(ADMIN_KEY), mcp=True)
    with (
        debug_logs() as logs,
        live_gateway(
            lambda started: [provider_over(f"u{i + 1}", f) for i, f in enumerate(started)],
            upstreams=fakes,
            server=server,
            routing=RoutingConfig(**FAST_RETRIES),
        ) as live,
    ):
        logs.attach()
        client = _Client(live)
        u1 = fakes[0]
        u1.default = Behavior(json_body=completion(COMPLETION))
        answers = [client.call("POST", CHAT, json={**body, "model": "u1/m1"})]
        u1.default = Behavior(events=text_stream([COMPLETION[:10], COMPLETION[10:]]))
        answers.append(client.call("POST", CHAT, json={**body, "model": "u1/m1", "stream": True}))
        # Upstreams that quote the prompt back in errors, before and inside a stream.
        quoted = error_body(f"Your prompt {PROMPT!r} was flagged")
        for behavior, stream in [
            (Behavior(status=400, json_body=quoted), False),
            (Behavior(status=500, json_body=quoted), False),
            (Behavior(events=sse(chunk({"content": COMPLETION}), quoted)), True),
        ]:
            u1.default = behavior
            client.call("POST", CHAT, json={**body, "model": "u1/m1", "stream": stream})
        # Requests the gateway itself refuses, with the prompt in the bad field.
        client.call("POST", CHAT, json={**BODY, "messages": [{"role": PROMPT, "content": "x"}]})
        client.call("POST", CHAT, json={**body, "extra_body": {"api_base": PROMPT}})
        client.call("POST", CHAT, content=f'{{"model": "m1", "messages": "{PROMPT}'.encode())
        u1.default = Behavior(json_body=completion(COMPLETION))
        client.mcp("chat", {"model": "u1/m1", "prompt": PROMPT, "system": SYSTEM})
        metrics = client.call("GET", "/metrics").text
    lines = logs.handler.lines
    for channel, texts in {"log lines": lines, "/metrics": [metrics]}.items():
        leaks = occurrences(texts, CONTENT)
        figures.record(
            "18",
            f"prompt/completion occurrences in {channel} ({len(texts)} scanned)",
            len(leaks),
            passed=not leaks,
            target="0",
        )
        assert not leaks, (channel, leaks)
    # Not vacuous: the content went through, and requests were logged.
    assert all(COMPLETION[:10] in answer.text for answer in answers)
    assert PROMPT in u1.chat_requests[0].body.decode()
    assert any("leapasgi.access" in line for line in lines)
    figures.record("18", "content logging switch", "none (content is never logged)", passed=True)


# Row 19

ROUTES: list[tuple[str, str, Any, bool]] = [
    ("POST", CHAT, BODY, False),
    ("POST", CHAT, {**BODY, "stream": True}, False),
    ("GET", "/v1/models", None, False),
    ("GET", "/v1/models/m1", None, False),
    ("GET", "/metrics", None, False),
    ("GET", "/openapi.json", None, False),
    ("POST", "/mcp", INITIALIZE, False),
    ("GET", "/v1/providers", None, True),
    ("POST", "/v1/providers/health", None, True),
    ("PUT", "/v1/providers/u1/status", {"status": "maintenance"}, True),
]
# (credentials, the Authorization header or None); the expected status follows the route.
CREDENTIALS: list[tuple[str, str | None]] = [
    ("none", None),
    ("wrong", "Bearer sk-not-a-key-0000000000"),
    ("bearer without a key", "Bearer"),
    ("other scheme", "Basic " + base64.b64encode(f"x:{API_KEY}".encode()).decode()),
    ("key without scheme", API_KEY),
    ("non-admin", f"Bearer {API_KEY}"),
]


def _expected(credentials: str, admin: bool) -> int | None:
    """401 without a valid key, 403 for an API key on an admin route, None when allowed."""
    if credentials == "non-admin":
        return 403 if admin else None
    return 401


@dataclass
class _Tally:
    refused: int = 0
    expected: int = 0
    shaped: int = 0
    wrong: list[str] = field(default_factory=list)

    def check(self, what: str, response: httpx.Response, status: int) -> None:
        self.expected += 1
        if response.status_code == status:
            self.refused += 1
        else:
            self.wrong.append(f"{what}: {response.status_code}")
        if response.status_code == 401 and response.headers.get("www-authenticate") != "Bearer":
            self.wrong.append(f"{what}: a 401 without WWW-Authenticate: Bearer")
        if _openai_shaped(response):
            self.shaped += 1
        else:
            self.wrong.append(f"{what}: body {response.text[:80]!r}")

    def record(self, figures: Figures, where: str, upstream_calls: int) -> None:
        share = 100.0 * self.refused / self.expected
        figures.record(
            "19",
            f"{where}: refused with the right 401/403 (% of {self.expected})",
            share,
            passed=share == 100.0 and self.shaped == self.expected,
            target="100%",
        )
        figures.record(
            "19", f"{where}: upstream calls", upstream_calls, passed=upstream_calls == 0, target="0"
        )


def _send(
    client: httpx.Client | httpx.AsyncClient, method: str, path: str, body: Any, auth: str | None
) -> Any:
    headers = {"accept": ACCEPT}
    if auth is not None:
        headers["Authorization"] = auth
    return client.request(method, path, json=body, headers=headers)


def _auth_server() -> ServerConfig:
    return ServerConfig(api_keys=[SecretStr(API_KEY)], admin_key=SecretStr(ADMIN_KEY), mcp=True)


def test_row19_every_route_refuses_missing_wrong_and_non_admin_keys(figures: Figures) -> None:
    fakes = [FakeUpstream() for _ in range(3)]
    with live_gateway(
        lambda started: [provider_over(f"u{i + 1}", f) for i, f in enumerate(started)],
        upstreams=fakes,
        server=_auth_server(),
    ) as live:
        tally = _Tally()
        with httpx.Client(base_url=f"http://127.0.0.1:{live.port}", timeout=10.0) as http:
            for method, path, body, admin in ROUTES:
                for credentials, auth in CREDENTIALS:
                    status = _expected(credentials, admin)
                    if status is not None:
                        response = _send(http, method, path, body, auth)
                        tally.check(f"{credentials} {method} {path}", response, status)
            upstream_calls = _upstream_calls(fakes)
            # The exceptions, by design: liveness and readiness stay open for probes, and
            # readiness names the providers only to a key holder.
            live_probe = http.get("/health")
            ready = http.get("/health/ready")
            ready_with_key = http.get("/health/ready", headers=_auth(API_KEY))
            # And every route does answer the right key: the refusals were not 404s.
            allowed = [
                _send(http, m, p, b, f"Bearer {ADMIN_KEY if admin else API_KEY}").status_code
                for m, p, b, admin in ROUTES
            ]
    tally.record(figures, "served by uvicorn", upstream_calls)
    assert tally.wrong == []
    assert upstream_calls == 0
    assert (live_probe.status_code, live_probe.json()) == (200, {"status": "ok"})
    assert (ready.status_code, ready.json()) == (200, {"status": "ready"})
    assert [p["name"] for p in ready_with_key.json()["providers"]] == ["u1", "u2", "u3"]
    assert allowed == [200] * len(ROUTES)
    figures.record(
        "19",
        "open by design (probes)",
        "/health, /health/ready (status only without a key)",
        passed=True,
    )


class _Tagging(BaseHTTPMiddleware):
    async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        return await call_next(request)


async def _home(request: Request) -> Response:
    return PlainTextResponse("host app")


@pytest.mark.anyio
async def test_row19_mounted_and_behind_middleware_the_same_refusals(figures: Figures) -> None:
    async with contextlib.AsyncExitStack() as stack:
        fakes = [await stack.enter_async_context(FakeUpstream()) for _ in range(3)]
        config = GatewayConfig(
            providers=[provider_over(f"u{i + 1}", f) for i, f in enumerate(fakes)],
            health=HealthConfig(interval=0),
            server=_auth_server(),
        )
        gateway = await stack.enter_async_context(Gateway(config=config))
        starlette = Starlette(
            routes=[Route("/", _home), Mount("/llm", app=gateway.app)],
            middleware=[Middleware(_Tagging)],
        )
        fastapi = FastAPI()
        fastapi.mount("/llm", gateway.app)
        middleware = LeapMiddleware(Starlette(routes=[Route("/", _home)]), gateway, prefix="/ai")
        hosts: list[tuple[str, Any, str]] = [
            ("mounted in Starlette (BaseHTTPMiddleware)", starlette, "/llm"),
            ("mounted in FastAPI", fastapi, "/llm"),
            ("behind LeapMiddleware", middleware, ""),
        ]
        for where, app, prefix in hosts:
            tally = _Tally()
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://host") as http:
                for method, path, body, admin in ROUTES:
                    if not prefix:  # the middleware serves /v1 (here /ai) only
                        if not path.startswith("/v1/"):
                            continue
                        path = "/ai" + path.removeprefix("/v1")
                    for credentials, auth in CREDENTIALS:
                        status = _expected(credentials, admin)
                        if status is not None:
                            with anyio.fail_after(10):
                                response = await _send(http, method, prefix + path, body, auth)
                            tally.check(f"{where} {credentials} {method} {path}", response, status)
            upstream_calls = _upstream_calls(fakes)
            tally.record(figures, where, upstream_calls)
            assert tally.wrong == []
            assert upstream_calls == 0


# Row 20

ATTACKER_PATHS = [
    ("api_base", {"api_base": "{attacker}"}),
    ("base_url", {"base_url": "{attacker}"}),
    ("api_key", {"api_key": "sk-attacker-000000"}),
    ("extra_body.api_base", {"extra_body": {"api_base": "{attacker}"}}),
    ("extra_body.base_url", {"extra_body": {"base_url": "{attacker}"}}),
    ("litellm_params.api_base", {"litellm_params": {"api_base": "{attacker}"}}),
    ("x[0].y.z.Base-URL", {"x": [{"y": {"z": {"Base-URL": "{attacker}"}}}]}),
    ("extra_body.apiKey", {"extra_body": {"apiKey": "sk-attacker-000000"}}),
    ("messages[0].api_base", {"messages": [{"role": "user", "content": "hi", "api_base": "x"}]}),
]


def _with_attacker(value: Any, attacker: str) -> Any:
    return json.loads(json.dumps(value).replace("{attacker}", attacker))


def test_row20_routing_fields_in_the_body_are_refused_and_never_forwarded(
    figures: Figures,
) -> None:
    fakes = [FakeUpstream() for _ in range(4)]  # U1-U3 and an attacker's host
    with live_gateway(
        lambda started: [provider_over(f"u{i + 1}", f) for i, f in enumerate(started[:3])],
        upstreams=fakes,
    ) as live:
        attacker = fakes[3].base_url
        bodies: list[tuple[str, bytes]] = []
        for param, extra in ATTACKER_PATHS:
            for stream in (False, True):
                body = {**BODY, "stream": stream, **_with_attacker(extra, attacker)}
                bodies.append((param, json.dumps(body).encode()))
        # Spelled with a JSON escape, which the raw pre-check must not miss.
        escaped = json.dumps(BODY)[:-1] + f', "\\u0061pi_base": "{attacker}"}}'
        bodies.append(("api_base", escaped.encode()))
        refused = 0
        elapsed: list[float] = []
        with httpx.Client(base_url=live.base_url, timeout=10.0) as http:
            for param, content in bodies:
                started = time.perf_counter()
                response = http.post("/chat/completions", content=content)
                elapsed.append(time.perf_counter() - started)
                error = response.json().get("error", {})
                if response.status_code == 400 and error.get("param") == param:
                    refused += 1
                assert _openai_shaped(response)
            forwarded = _upstream_calls(fakes)
            # A schema may name a property base_url, and a prompt may talk about api_key.
            schema = {"type": "object", "properties": {"base_url": {"type": "string"}}}
            tool = {"type": "function", "function": {"name": "fetch", "parameters": schema}}
            allowed = [
                http.post("/chat/completions", json={**BODY, "tools": [tool]}),
                http.post(
                    "/chat/completions",
                    json={**BODY, "messages": [{"role": "user", "content": "my api_key?"}]},
                ),
            ]
    figures.record(
        "20",
        f"body routing fields refused with 400 and param (of {len(bodies)})",
        refused,
        passed=refused == len(bodies),
        target=f"{len(bodies)}",
    )
    figures.record("20", "body routing fields forwarded upstream", forwarded, passed=forwarded == 0)
    figures.record(
        "20", "slowest refusal (ms)", round(max(elapsed) * 1000, 1), passed=True, target="-"
    )
    assert refused == len(bodies)
    assert forwarded == 0
    assert [a.status_code for a in allowed] == [200, 200]
    assert fakes[3].seen == []


def test_row20_the_body_check_is_cheap_on_clean_bodies(figures: Figures) -> None:
    prompt = "Tell me about the weather in Paris today, please. " * 18
    body = json.dumps({**BODY, "messages": [{"role": "user", "content": prompt}]}).encode()
    rounds = 2000
    started = time.perf_counter()
    for _ in range(rounds):
        check_request_fields(body)
    micros = (time.perf_counter() - started) / rounds * 1e6
    figures.record(
        "20",
        f"body check on a clean {len(body)}-byte body (us)",
        round(micros, 1),
        passed=micros < 100,
        target="< 100 us",
    )


BAD_URLS = [
    "file:///etc/passwd",
    "gopher://127.0.0.1:6379/_SET",
    "ftp://files.example.com/",
    "dict://127.0.0.1:11211/",
    "http://169.254.169.254/latest/meta-data/",
    "http://169.254.170.2/v2/credentials",
    "http://[fe80::1]:8080/v1",
    "http://[fd00:ec2::254]/latest/",
    "http://metadata.google.internal/computeMetadata/v1",
    "http://metadata.google.internal./computeMetadata/v1",
    "http://2852039166/latest",
    "http://0xa9fea9fe/latest",
    "http://[::ffff:169.254.169.254]/latest",
    "http://user@169.254.169.254/latest",
    "http://100.100.100.200/latest/meta-data",
]
GOOD_URLS = [
    "http://127.0.0.1:11434/v1",
    "http://localhost:8000/v1",
    "http://[::1]:8000/v1",
    "http://10.0.0.7:8000/v1",
    "http://192.168.1.20/v1",
    "https://api.openai.com/v1",
]


def _load(url: str) -> None:
    parse_config(f'[[providers]]\nname = "p"\nbase_url = "{url}"\n', source="gateway.toml")


def test_row20_bad_config_urls_are_refused_at_load(figures: Figures) -> None:
    refused = 0
    for url in BAD_URLS:
        with pytest.raises(ConfigurationError) as caught:
            _load(url)
        message = caught.value.message
        assert message.startswith("gateway.toml: providers[0].base_url: ")
        assert url not in message
        refused += 1
    for url in GOOD_URLS:
        _load(url)
    figures.record(
        "20",
        f"bad config URLs refused at load (of {len(BAD_URLS)})",
        refused,
        passed=refused == len(BAD_URLS),
    )
    figures.record(
        "20",
        f"loopback, LAN and public URLs accepted (of {len(GOOD_URLS)})",
        len(GOOD_URLS),
        passed=True,
    )


REDIRECTS = [301, 302, 303, 307, 308]


def test_row20_an_upstream_that_redirects_is_not_followed(figures: Figures) -> None:
    fakes = [FakeUpstream(), FakeUpstream()]  # U1 redirects; the second is where it points
    with live_gateway(
        lambda started: [provider_over("u1", started[0])],
        upstreams=fakes,
        routing=RoutingConfig(**FAST_RETRIES),
    ) as live:
        target = fakes[1].base_url + "/chat/completions"
        statuses: list[int] = []
        with httpx.Client(base_url=live.base_url, timeout=10.0) as http:
            for status in REDIRECTS:
                fakes[0].default = Behavior(status=status, headers={"Location": target})
                for stream in (False, True):
                    response = http.post("/chat/completions", json={**BODY, "stream": stream})
                    statuses.append(response.status_code)
                    assert _openai_shaped(response)
                    assert f"HTTP {status}" in response.json()["error"]["message"]
        followed = len(fakes[1].seen)
    figures.record("20", "redirects followed", followed, passed=followed == 0, target="0")
    figures.record(
        "20",
        "client status for a redirecting upstream",
        ", ".join(sorted({str(s) for s in statuses})),
        passed=set(statuses) == {502},
    )
    assert followed == 0
    assert set(statuses) == {502}
