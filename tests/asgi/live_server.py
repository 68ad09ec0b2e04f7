"""The gateway served by uvicorn on 127.0.0.1 in a background thread, for blocking SDK clients.

The sync ``openai`` client blocks its thread, so uvicorn and the fake upstreams run in a thread
of their own with its own event loop; tests talk to them over real loopback sockets only. The
loop is asyncio's or uvloop's (``LOOPS``): ``leapasgi serve`` runs on uvloop, whose timers fire
up to a millisecond early, so live tests run on both. WebSockets are off unless asked for
(``ws="auto"``); ``http=GuardedHttpToolsProtocol`` serves HTTP as ``leapasgi serve`` does.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import anthropic
import httpx
import openai
import uvicorn
import uvloop
from uvicorn.config import HTTPProtocolType

from leapasgi import Authenticate, Gateway
from leapasgi.config import GatewayConfig, HealthConfig, ProviderConfig, RoutingConfig
from leapasgi.providers.mock import MockProvider
from tests.fake_upstream import FakeUpstream

__all__ = [
    "CLIENT_TIMEOUT",
    "LOOPS",
    "AppFactory",
    "HttpProtocol",
    "LiveGateway",
    "Loop",
    "Providers",
    "ReportingServer",
    "Serve",
    "ServerThread",
    "WebSockets",
    "fast_routing",
    "gateways",
    "live_gateway",
    "mock_config",
    "upstream_config",
]

HOST = "127.0.0.1"
START_TIMEOUT = 10.0
STOP_TIMEOUT = 10.0
CLIENT_TIMEOUT = 10.0
# How long a test waits for the gateway to record a request it has already answered.
RECORD_WAIT = 10.0

# Builds the served app inside the server's event loop, entering contexts on the stack.
AppBuilder = Callable[[contextlib.AsyncExitStack], Awaitable[Any]]
Lifespan = Literal["on", "off"]
Loop = Literal["asyncio", "uvloop"]
LOOPS: tuple[Loop, ...] = ("asyncio", "uvloop")
# Builds the app uvicorn serves around the gateway (a host app that mounts it, say).
AppFactory = Callable[[Gateway], Any]
Providers = Callable[[Sequence[FakeUpstream]], list[ProviderConfig]]
# uvicorn's HTTP protocol: one of its names, or a protocol class (GuardedHttpToolsProtocol).
HttpProtocol = HTTPProtocolType | type[asyncio.Protocol]
WebSockets = Literal["none", "auto"]
# Starts a gateway (``live_gateway``'s arguments) that stops when the test ends.
Serve = Callable[..., "LiveGateway"]


def mock_config(name: str = "mock", **options: Any) -> ProviderConfig:
    """The built-in mock provider serving ``mock-chat``."""
    return ProviderConfig(name=name, type="mock", models=["mock-chat"], **options)


def upstream_config(name: str, fake: FakeUpstream, **options: Any) -> ProviderConfig:
    """A provider pointing at a started fake upstream that serves ``m1``."""
    options.setdefault("models", ["m1"])
    options.setdefault("timeout", 1.0)
    return ProviderConfig(name=name, base_url=fake.base_url, api_key="up-key", **options)


def fast_routing(**options: Any) -> RoutingConfig:
    """Routing whose backoff never sleeps, so retry tests stay fast."""
    return RoutingConfig(retry_initial_delay=0.0, retry_max_delay=0.0, **options)


@dataclass
class LiveGateway:
    """A running gateway: its port, the Gateway object and the fake upstreams behind it."""

    gateway: Gateway
    port: int
    upstreams: Sequence[FakeUpstream] = field(default_factory=tuple)

    @property
    def origin(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.origin}/v1"

    def mock(self, name: str = "mock") -> MockProvider:
        """The mock provider registered as ``name``."""
        provider = self.gateway.manager.registry.get(name).provider
        assert isinstance(provider, MockProvider)
        return provider

    def client(self, *, api_key: str = "k", **options: Any) -> openai.OpenAI:
        """A sync SDK client for this gateway, with SDK retries off unless asked for."""
        options.setdefault("max_retries", 0)
        options.setdefault("timeout", CLIENT_TIMEOUT)
        return openai.OpenAI(base_url=self.base_url, api_key=api_key, **options)

    def async_client(self, *, api_key: str = "k", **options: Any) -> openai.AsyncOpenAI:
        """An async SDK client for this gateway, with SDK retries off unless asked for."""
        options.setdefault("max_retries", 0)
        options.setdefault("timeout", CLIENT_TIMEOUT)
        return openai.AsyncOpenAI(base_url=self.base_url, api_key=api_key, **options)

    def anthropic_client(self, **options: Any) -> anthropic.AsyncAnthropic:
        """An async anthropic client for this gateway (the SDK adds ``/v1`` itself), with SDK
        retries off unless asked for; the API key is ``k`` unless an auth token is given."""
        if "auth_token" not in options:
            options.setdefault("api_key", "k")
        options.setdefault("max_retries", 0)
        options.setdefault("timeout", CLIENT_TIMEOUT)
        return anthropic.AsyncAnthropic(base_url=self.origin, **options)

    def requests_recorded(self, count: int) -> list[dict[str, str]]:
        """The labels of ``leap_requests_total`` in /metrics, one entry per request, once
        ``count`` requests are recorded (a request is recorded when it has ended, at the
        gateway's pace) or ``RECORD_WAIT`` has passed."""
        deadline = time.monotonic() + RECORD_WAIT
        with httpx.Client(base_url=self.origin) as http:
            while True:
                recorded = []
                for line in http.get("/metrics").text.splitlines():
                    if line.startswith("leap_requests_total{"):
                        labels, value = line.rsplit(" ", 1)
                        found = dict(re.findall(r'(\w+)="([^"]*)"', labels))
                        recorded.extend([found] * int(float(value)))
                if len(recorded) >= count or time.monotonic() > deadline:
                    return recorded
                time.sleep(0.02)

    def errors_recorded(self) -> list[str]:
        """The ``leap_errors_total`` series in /metrics."""
        with httpx.Client(base_url=self.origin) as http:
            lines = http.get("/metrics").text.splitlines()
        return [line for line in lines if line.startswith("leap_errors_total{")]


class ReportingServer(uvicorn.Server):
    """A uvicorn server that reports the moment it listens."""

    def __init__(
        self, config: uvicorn.Config, *, on_started: Callable[[uvicorn.Server], None]
    ) -> None:
        super().__init__(config)
        self._on_started = on_started

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if self.started:
            self._on_started(self)


class ServerThread(threading.Thread):
    """Runs uvicorn, with the app ``build`` makes, in an event loop of its own until told to
    stop; ``build`` may enter async contexts (fake upstreams) on the stack it is given, which
    stay open while the server runs. ``http`` and ``ws`` are uvicorn's protocol options."""

    def __init__(
        self,
        build: AppBuilder,
        *,
        lifespan: Lifespan = "on",
        loop: Loop = "asyncio",
        http: HttpProtocol = "auto",
        ws: WebSockets = "none",
    ) -> None:
        super().__init__(name="leapasgi-test-server", daemon=True)
        self._build = build
        self._lifespan = lifespan
        self._loop = loop
        self._http = http
        self._ws = ws
        self._ready = threading.Event()
        self._server: ReportingServer | None = None
        self.port = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        factory = uvloop.new_event_loop if self._loop == "uvloop" else None
        try:
            with asyncio.Runner(loop_factory=factory) as runner:
                runner.run(self._main())
        except BaseException as exc:  # handed to the test thread, which raises it
            self.error = exc
        finally:
            self._ready.set()

    async def _main(self) -> None:
        async with contextlib.AsyncExitStack() as stack:
            config = uvicorn.Config(
                await self._build(stack),
                host=HOST,
                port=0,
                log_level="warning",
                lifespan=self._lifespan,
                http=self._http,
                ws=self._ws,
                timeout_graceful_shutdown=2,
            )
            self._server = ReportingServer(config, on_started=self._listening)
            await self._server.serve()

    def _listening(self, server: uvicorn.Server) -> None:
        self.port = server.servers[0].sockets[0].getsockname()[1]
        self._ready.set()

    def wait_ready(self) -> None:
        if not self._ready.wait(START_TIMEOUT):
            raise RuntimeError("the test server did not start in time")
        if self.error is not None:
            raise RuntimeError("the test server failed to start") from self.error
        if not self.port:
            raise RuntimeError("the test server stopped before serving")

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        self.join(STOP_TIMEOUT)
        if self.is_alive():
            raise RuntimeError("the test server did not stop in time")
        if self.error is not None:
            raise RuntimeError("the test server failed") from self.error


def _mock_only(upstreams: Sequence[FakeUpstream]) -> list[ProviderConfig]:
    return [mock_config()]


@contextlib.contextmanager
def live_gateway(
    providers: Providers = _mock_only,
    *,
    upstreams: Sequence[FakeUpstream] = (),
    app: AppFactory | None = None,
    loop: Loop = "asyncio",
    http: HttpProtocol = "auto",
    ws: WebSockets = "none",
    authenticate: Authenticate | None = None,
    **options: Any,
) -> Iterator[LiveGateway]:
    """Serve a gateway on loopback; ``providers`` builds its providers once the upstreams are
    up, ``options`` are the other GatewayConfig fields (health checks are off by default).
    ``app`` builds a host app around the gateway to serve instead of ``gateway.app``;
    ``loop`` picks the event loop it runs on, ``http`` and ``ws`` uvicorn's protocols;
    ``authenticate`` is the host application's identity hook."""
    options.setdefault("health", HealthConfig(interval=0))

    built: list[Gateway] = []

    async def build(stack: contextlib.AsyncExitStack) -> Any:
        for upstream in upstreams:
            await stack.enter_async_context(upstream)
        config = GatewayConfig(providers=providers(upstreams), **options)
        gateway = Gateway(config=config, authenticate=authenticate)
        built.append(gateway)
        return app(gateway) if app else gateway.app

    thread = ServerThread(build, loop=loop, http=http, ws=ws)
    thread.start()
    try:
        thread.wait_ready()
        yield LiveGateway(built[0], thread.port, upstreams)
    finally:
        thread.stop()


@contextlib.contextmanager
def gateways(
    *, loop: Loop, http: HttpProtocol = "auto", ws: WebSockets = "none"
) -> Iterator[Serve]:
    """A ``Serve`` for a test's fixture: each call starts a ``live_gateway`` on ``loop`` with
    these protocols, and all of them stop when the block ends."""
    with contextlib.ExitStack() as stack:
        yield lambda *args, **options: stack.enter_context(
            live_gateway(*args, loop=loop, http=http, ws=ws, **options)
        )
