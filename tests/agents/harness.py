"""The gateway served for a coding agent: uvicorn on 127.0.0.1 (WebSockets on), what the agent
sent recorded at the gateway's door, and a proxy trap that records any attempt to go elsewhere.

``agent_gateway`` starts, in one event loop of its own (``ServerThread``), the upstreams, the
trap and the gateway (with ``server.api_keys`` set, so every agent authenticates); tests then
run a CLI against it as a subprocess.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

from leapasgi import Gateway
from leapasgi.config import GatewayConfig, HealthConfig, ProviderConfig, ServerConfig
from leapasgi.providers.mock import MockProvider
from tests.agents.clis import Run
from tests.agents.scripted_upstream import ScriptedUpstream
from tests.asgi.live_server import ServerThread

__all__ = [
    "GATEWAY_KEY",
    "AgentGateway",
    "DoorRecord",
    "ProxyTrap",
    "agent_gateway",
    "mock_provider",
    "scripted_provider",
]

HOST = "127.0.0.1"
GATEWAY_KEY = "leap-agent-key"
# Bytes of a request body and of its answer kept, for failure reports.
KEEP_BYTES = 200_000
# How long a test waits for the gateway to record requests it has already answered.
RECORD_WAIT = 5.0
_SAMPLE = re.compile(r"^(leap_requests_total|leap_errors_total)\{(.*)\} (\S+)$", re.MULTILINE)
_LABEL = re.compile(r'(\w+)="([^"]*)"')

Providers = Callable[[Sequence[ScriptedUpstream]], list[ProviderConfig]]


def mock_provider(upstreams: Sequence[ScriptedUpstream]) -> list[ProviderConfig]:
    """The built-in mock provider serving ``mock-chat``."""
    return [ProviderConfig(name="mock", type="mock", models=["mock-chat"])]


def scripted_provider(upstreams: Sequence[ScriptedUpstream]) -> list[ProviderConfig]:
    """An OpenAI-compatible provider (chat only: the translated path) per scripted upstream."""
    return [
        ProviderConfig(
            name=f"up{i}",
            base_url=upstream.base_url,
            api_key="upstream-key",
            models=[upstream.model],
            timeout=20.0,
        )
        for i, upstream in enumerate(upstreams)
    ]


@dataclass
class DoorRecord:
    """One request as the gateway's door saw it: the client's side and the gateway's answer."""

    kind: str  # "http" or "websocket"
    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes = b""
    status: int | None = None
    answer: bytes = b""
    # WebSocket text frames: ("in", text) from the client, ("out", text) from the gateway.
    frames: list[tuple[str, str]] = field(default_factory=list)

    def dump(self) -> str:
        """The whole exchange as text, for a failure message or a bug report."""
        head = f"{self.kind} {self.method} {self.path}?{self.query} -> {self.status}"
        headers = "\n".join(f"  {k}: {v}" for k, v in self.headers.items())
        frames = "\n".join(f"  {d} {t[:4000]}" for d, t in self.frames)
        body = self.body[:4000].decode("utf-8", "replace")
        answer = self.answer[:8000].decode("utf-8", "replace")
        return f"{head}\n{headers}\nbody: {body}\nanswer: {answer}\nframes:\n{frames}"


class DoorRecorder:
    """ASGI middleware recording every request and its answer in front of the gateway."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.records: list[DoorRecord] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        record = DoorRecord(
            kind=scope["type"],
            method=scope.get("method", "GET"),
            path=scope["path"],
            query=scope["query_string"].decode("latin-1"),
            headers={k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]},
        )
        self.records.append(record)

        async def receive_recorded() -> Any:
            message = await receive()
            if message["type"] == "http.request" and len(record.body) < KEEP_BYTES:
                record.body += message.get("body", b"")
            elif message["type"] == "websocket.receive" and message.get("text") is not None:
                record.frames.append(("in", message["text"]))
            return message

        async def send_recorded(message: Any) -> None:
            kind = message["type"]
            if kind in ("http.response.start", "websocket.http.response.start"):
                record.status = message["status"]
            elif kind.endswith("http.response.body") and len(record.answer) < KEEP_BYTES:
                record.answer += message.get("body", b"")
            elif kind == "websocket.accept":
                record.status = 101
            elif kind == "websocket.send" and message.get("text") is not None:
                record.frames.append(("out", message["text"]))
            elif kind == "websocket.close" and record.status is None:
                record.status = 403
            await send(message)

        await self.app(scope, receive_recorded, send_recorded)


class ProxyTrap:
    """A TCP listener on 127.0.0.1 set as every proxy the CLIs read: whatever a CLI tries to
    reach off loopback lands here, is recorded (its first line) and is refused."""

    def __init__(self) -> None:
        self.attempts: list[str] = []
        self.port = 0
        self._server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    async def __aenter__(self) -> ProxyTrap:
        self._server = await asyncio.start_server(self._catch, HOST, 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    async def _catch(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), 2.0)
            self.attempts.append(line.decode("latin-1").strip() or "(connected, said nothing)")
        except (TimeoutError, ConnectionError):
            self.attempts.append("(connected, said nothing)")
        writer.write(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        writer.close()


@dataclass
class AgentGateway:
    """A running gateway for an agent: its address, door records, upstreams and proxy trap."""

    gateway: Gateway
    port: int
    door: DoorRecorder
    trap: ProxyTrap
    upstreams: Sequence[ScriptedUpstream]

    @property
    def origin(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def records(self) -> list[DoorRecord]:
        return self.door.records

    def assert_requests(
        self, kind: str, method: str, path: str, status: int, report: str | None = None
    ) -> list[DoorRecord]:
        """Requests reached the door, every one a ``kind`` request (``http`` or ``websocket``)
        for ``method`` ``path`` that the gateway answered with ``status``; returns them."""
        report = report or self.report()
        assert self.records, report
        for record in self.records:
            assert (record.kind, record.method, record.path) == (kind, method, path), report
            assert record.status == status, report
        return self.records

    def mock(self) -> MockProvider:
        """The mock provider (``mock_provider``)."""
        provider = self.gateway.manager.registry.get("mock").provider
        assert isinstance(provider, MockProvider)
        return provider

    def recorded(self, count: int) -> tuple[Counter[str], Counter[str]]:
        """The statuses the gateway's metrics counted (``leap_requests_total``) and the error
        kinds (``leap_errors_total``), read from ``GET /metrics`` once ``count`` requests are
        counted (a request is counted when its connection is done with it)."""
        deadline = time.monotonic() + RECORD_WAIT
        while True:
            answer = httpx.get(
                f"{self.origin}/metrics",
                headers={"Authorization": f"Bearer {GATEWAY_KEY}"},
                trust_env=False,
            )
            answer.raise_for_status()
            statuses: Counter[str] = Counter()
            errors: Counter[str] = Counter()
            for family, labels, value in _SAMPLE.findall(answer.text):
                label = dict(_LABEL.findall(labels))
                if family == "leap_requests_total":
                    statuses[label["status"]] += int(float(value))
                else:
                    errors[label["kind"]] += int(float(value))
            if statuses.total() >= count or time.monotonic() > deadline:
                return statuses, errors
            time.sleep(0.05)

    def report(self, run: Run | None = None) -> str:
        """Everything the gateway and the upstreams saw (after what ``run`` printed), for an
        assertion message."""
        parts = [run.describe()] if run is not None else []
        parts += [record.dump() for record in self.records]
        for upstream in self.upstreams:
            parts += [f"upstream {s.path}: {s.body}\n-> {s.answer}" for s in upstream.chats]
        parts.append(f"proxy trap: {self.trap.attempts}")
        return "\n\n".join(parts)


@contextlib.contextmanager
def agent_gateway(
    providers: Providers = mock_provider, *, upstreams: Sequence[ScriptedUpstream] = ()
) -> Iterator[AgentGateway]:
    """Serve a gateway whose ``server.api_keys`` holds ``GATEWAY_KEY``, with a proxy trap."""
    trap = ProxyTrap()
    built: list[tuple[Gateway, DoorRecorder]] = []

    async def build(stack: contextlib.AsyncExitStack) -> Any:
        await stack.enter_async_context(trap)
        for upstream in upstreams:
            await stack.enter_async_context(upstream)
        config = GatewayConfig(
            providers=providers(upstreams),
            health=HealthConfig(interval=0),
            server=ServerConfig(api_keys=[GATEWAY_KEY]),
        )
        gateway = Gateway(config=config)
        door = DoorRecorder(gateway.app)
        built.append((gateway, door))
        return door

    thread = ServerThread(build, ws="auto")
    thread.start()
    try:
        thread.wait_ready()
        gateway, door = built[0]
        yield AgentGateway(gateway, thread.port, door, trap, upstreams)
    finally:
        thread.stop()
