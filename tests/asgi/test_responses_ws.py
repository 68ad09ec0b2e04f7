"""The Responses WebSocket mode over the official openai SDK's ``client.responses.connect()``,
live: the gateway served as ``leapasgi serve`` serves it (``GuardedHttpToolsProtocol``, uvicorn's
WebSocket protocol), on asyncio's loop and uvloop's. Several responses per connection, the
connection's own history for ``store: false``, Codex CLI's warmup and tool loop, auth at the
handshake, in-band errors, cuts, a client leaving mid-stream, and the connection's bounds."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, MutableMapping
from pathlib import Path
from typing import Any

import openai
import pytest
from openai.resources.responses.responses import ResponsesConnection
from pydantic import SecretStr
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from websockets.exceptions import ConnectionClosedError, ConnectionClosedOK, InvalidStatus

from leapasgi import Gateway
from leapasgi.asgi.responses_ws import MAX_QUEUED, ResponsesSocket
from leapasgi.config import GatewayConfig, ServerConfig
from leapasgi.providers.mock import Fault
from leapasgi.server import GuardedHttpToolsProtocol
from tests.asgi.codex_requests import CODEX_INSTRUCTIONS, SHELL_TOOL
from tests.asgi.live_server import (
    LOOPS,
    AppFactory,
    LiveGateway,
    Serve,
    gateways,
    mock_config,
    upstream_config,
)
from tests.asgi.responses_support import text_order, user
from tests.fake_responses import text_stream as native_stream
from tests.fake_upstream import Behavior, FakeUpstream
from tests.fake_upstream import text_stream as chat_stream

HOST = "127.0.0.1"
ROOT = Path(__file__).resolve().parents[2]
STOP_TIMEOUT = 10.0
# A connection still open after this long is closed by the test, so no test can hang.
WATCHDOG = 30.0
# How long a test waits for the upstream (or the gateway) to notice what happened.
SETTLE = 10.0
DONE = ("response.completed", "response.incomplete", "error")


@pytest.fixture(params=LOOPS)
def serve(request: pytest.FixtureRequest) -> Iterator[Serve]:
    """Start gateways served as ``leapasgi serve`` serves them (``GuardedHttpToolsProtocol``,
    uvicorn's WebSocket protocol) on each event loop; all stop after the test."""
    with gateways(loop=request.param, http=GuardedHttpToolsProtocol, ws="auto") as start:
        yield start


def socket_only(idle_timeout: float) -> AppFactory:
    """A host app serving only the gateway's Responses WebSocket, closing connections idle
    for ``idle_timeout`` seconds."""

    def host(gateway: Gateway) -> Starlette:
        @contextlib.asynccontextmanager
        async def lifespan(app: Starlette) -> AsyncIterator[None]:
            async with gateway:  # mounted apps get no lifespan: the host runs the gateway's
                yield

        socket_app = ResponsesSocket(gateway, idle_timeout=idle_timeout)
        return Starlette(routes=[WebSocketRoute("/v1/responses", socket_app)], lifespan=lifespan)

    return host


@contextlib.contextmanager
def connect(
    live: LiveGateway, *, api_key: str = "k", headers: Mapping[str, str] | None = None
) -> Iterator[ResponsesConnection]:
    """A Responses WebSocket through the sync SDK client, closed by a watchdog if a test
    would otherwise wait forever."""
    with (
        live.client(api_key=api_key) as client,
        client.responses.connect(extra_headers=dict(headers or {})) as connection,
    ):
        watchdog = threading.Timer(WATCHDOG, connection.close)
        watchdog.start()
        try:
            yield connection
        finally:
            watchdog.cancel()


def until_done(connection: ResponsesConnection) -> list[Any]:
    """The events of one response, up to its last (``response.completed``, or the ``error``
    that ends a failed one)."""
    events = []
    for event in connection:
        events.append(event)
        if event.type in DONE:
            return events
    raise AssertionError(f"the connection ended after {[e.type for e in events]}")


def turn(connection: ResponsesConnection, **body: Any) -> list[Any]:
    """Send one ``response.create`` and read its events."""
    connection.response.create(**body)
    return until_done(connection)


def text_of(events: list[Any]) -> str:
    final = events[-1]
    assert final.type == "response.completed", final
    return str(final.response.output_text)


def eventually(check: Callable[[], bool]) -> bool:
    """True once ``check`` is (polled for up to SETTLE seconds)."""
    deadline = time.monotonic() + SETTLE
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_one_response(serve: Serve) -> None:
    live = serve()
    with connect(live) as connection:
        events = turn(connection, model="mock-chat", input="hello there")
    kinds = [event.type for event in events]
    deltas = kinds.count("response.output_text.delta")
    assert deltas >= 2
    assert kinds == text_order(deltas)
    assert [event.sequence_number for event in events] == list(range(len(events)))
    ids = {events[0].response.id, events[1].response.id, events[-1].response.id}
    assert len(ids) == 1
    text = "".join(event.delta for event in events if event.type.endswith(".delta"))
    assert text == text_of(events) == "You said: hello there"
    [request] = live.requests_recorded(1)
    assert (request["status"], request["stream"], request["provider"]) == ("200", "true", "mock")
    # Stored as over HTTP (store defaults to true), and retrievable once the socket is gone.
    with live.client() as client:
        assert client.responses.retrieve(events[-1].response.id).output_text == text


def test_a_chain_kept_by_the_connection(serve: Serve) -> None:
    live = serve()
    prompts = ("What is the capital of France?", "And its river?", "How many people?")
    ids: list[str] = []
    with connect(live) as connection, live.client() as client:
        for prompt in prompts:
            previous = {"previous_response_id": ids[-1]} if ids else {}
            events = turn(connection, model="mock-chat", input=prompt, store=False, **previous)
            assert text_of(events) == f"You said: {prompt}"
            assert events[-1].response.previous_response_id == (ids[-1] if ids else None)
            ids.append(events[-1].response.id)
        # Nothing of it is the gateway's: over HTTP the chain does not exist.
        for response_id in ids:
            with pytest.raises(openai.NotFoundError):
                client.responses.retrieve(response_id)
        with pytest.raises(openai.NotFoundError):
            client.responses.create(model="mock-chat", input="?", previous_response_id=ids[-1])
    requests = live.mock().requests
    assert len(requests) == 3
    for number, request in enumerate(requests):
        # The whole history reaches the upstream every turn.
        history = []
        for prompt in prompts[:number]:
            history += [("user", prompt), ("assistant", f"You said: {prompt}")]
        history.append(("user", prompts[number]))
        messages = request.model_dump(exclude_none=True)["messages"]
        assert [(m["role"], m["content"]) for m in messages] == history


def test_codex_warmup_turn_and_tool_round_trip(serve: Serve) -> None:
    live = serve()
    developer = {
        "type": "message",
        "role": "developer",
        "content": [{"type": "input_text", "text": CODEX_INSTRUCTIONS}],
    }
    common: dict[str, Any] = {"model": "mock-chat", "store": False, "tools": [SHELL_TOOL]}
    with connect(live, headers={"OpenAI-Beta": "responses_websockets=2026-02-06"}) as connection:
        # Codex sends stream: true inside its frames.
        warmup = turn(connection, input=[developer], generate=False, stream=True, **common)
        warm_id = warmup[-1].response.id
        asked = turn(
            connection,
            input=[user("Use shell to list the files")],
            previous_response_id=warm_id,
            **common,
        )
        call = asked[-1].response.output[0]
        answered = turn(
            connection,
            input=[
                {"type": "function_call_output", "call_id": call.call_id, "output": "README.md"}
            ],
            previous_response_id=asked[-1].response.id,
            **common,
        )
    assert [event.type for event in warmup] == ["response.created", "response.completed"]
    assert warmup[0].response.id == warm_id
    assert warmup[-1].response.output == []
    assert (call.type, call.name) == ("function_call", "shell")
    assert text_of(answered) == "The tool returned: README.md"
    # The warmup is the gateway's: the upstream saw two turns, each with the instructions.
    requests = [r.model_dump(exclude_none=True) for r in live.mock().requests]
    assert len(requests) == 2
    for request in requests:
        assert request["messages"][0] == {"role": "developer", "content": CODEX_INSTRUCTIONS}
    assert [m["role"] for m in requests[1]["messages"]] == [
        "developer",
        "user",
        "assistant",
        "tool",
    ]
    assert requests[1]["messages"][2]["tool_calls"][0]["id"] == call.call_id
    statuses = [r["status"] for r in live.requests_recorded(3)]
    assert statuses == ["200", "200", "200"]
    # Once the connection is gone, nothing of its store: false responses is left.
    with live.client() as client:
        for response_id in (warm_id, asked[-1].response.id, answered[-1].response.id):
            with pytest.raises(openai.NotFoundError):
                client.responses.retrieve(response_id)


def test_native_events_pass_through_with_the_connection_history(serve: Serve) -> None:
    fake = FakeUpstream()
    fake.push(
        Behavior(events=native_stream(["Paris."], response_id="resp_up_1")),
        Behavior(events=native_stream(["The Seine."], response_id="resp_up_2")),
    )
    live = serve(
        lambda ups: [upstream_config("up0", ups[0], protocols=["responses"], max_retries=0)],
        upstreams=[fake],
    )
    with connect(live) as connection:
        first = turn(connection, model="m1", input="Capital?", store=False)
        second = turn(
            connection, model="m1", input="River?", store=False, previous_response_id="resp_up_1"
        )
    assert text_of(first) == "Paris."
    assert {event.response.id for event in first if hasattr(event, "response")} == {"resp_up_1"}
    assert text_of(second) == "The Seine."
    sent = [seen.json for seen in fake.seen if seen.path.endswith("/responses")]
    assert len(sent) == 2
    assert "previous_response_id" not in sent[1]
    assert "stream_id" not in sent[1]
    assert "type" not in sent[1]
    assert sent[1]["stream"] is True
    assert [item.get("role") for item in sent[1]["input"]] == ["user", "assistant", "user"]


def test_frames_queue_in_order_and_echo_their_lane(serve: Serve) -> None:
    live = serve()
    with connect(live) as connection:
        for lane, prompt in (("a", "one"), ("b", "two"), ("a", "three")):
            connection.response.create(model="mock-chat", input=prompt, stream_id=lane)
        answers = [until_done(connection) for _ in range(3)]
    assert [text_of(events) for events in answers] == [
        "You said: one",
        "You said: two",
        "You said: three",
    ]
    for lane, events in zip("aba", answers, strict=True):
        assert {event.stream_id for event in events} == {lane}


def test_bad_frames_are_error_events_and_the_connection_goes_on(serve: Serve) -> None:
    live = serve()
    with connect(live) as connection:
        connection.send_raw("{not json")
        [malformed] = until_done(connection)
        connection.send_raw("[1, 2]")
        [not_an_object] = until_done(connection)
        connection.send_raw(json.dumps({"type": "response.steer", "input": "x"}))
        [unknown] = until_done(connection)
        [missing] = turn(connection, model="no-such-model", input="hi", stream_id="lane")
        [invalid] = turn(connection, model="mock-chat", input="hi", temperature=3)
        events = turn(connection, model="mock-chat", input="still here")
    assert (malformed.status, malformed.error.code) == (400, "invalid_json")
    assert not_an_object.error.code == "invalid_json"
    assert (unknown.error.code, unknown.error.param) == ("invalid_value", "type")
    assert "response.steer" in unknown.error.message
    assert (missing.status, missing.error.code, missing.error.param) == (
        404,
        "model_not_found",
        "model",
    )
    assert missing.stream_id == "lane"
    assert missing.error.headers["x-request-id"].startswith("req_")
    assert (invalid.status, invalid.error.param) == (400, "temperature")
    for error in (malformed, not_an_object, unknown, missing, invalid):
        assert error.type == "error"
        assert error.error.type == "invalid_request_error"
    assert text_of(events) == "You said: still here"
    # Every frame is one request in the metrics and the access log.
    statuses = sorted(r["status"] for r in live.requests_recorded(6))
    assert statuses == ["200", "400", "400", "400", "400", "404"]


def test_a_stream_cut_mid_way_fails_in_band(serve: Serve) -> None:
    live = serve()
    live.mock().inject(Fault.cut(after_chunks=2))
    with connect(live) as connection:
        events = turn(connection, model="mock-chat", input="a long answer, please")
        after = turn(connection, model="mock-chat", input="again")
    kinds = [event.type for event in events]
    assert kinds[0] == "response.created"
    assert "response.output_text.delta" in kinds
    assert kinds[-2:] == ["response.failed", "error"]
    failed, error = events[-2:]
    assert failed.response.status == "failed"
    assert failed.response.id == events[0].response.id
    assert error.error.code == "stream_interrupted"
    assert text_of(after) == "You said: again"


def test_the_client_leaving_mid_stream_cancels_the_upstream(serve: Serve) -> None:
    fake = FakeUpstream(
        default=Behavior(events=chat_stream(["Hel", "lo"], done=False, finish=False), then="hang")
    )
    live = serve(
        lambda ups: [upstream_config("up0", ups[0], timeout=60.0, max_retries=0)],
        upstreams=[fake],
    )
    with connect(live) as connection:
        connection.response.create(model="m1", input="hi")
        for event in connection:
            if event.type == "response.output_text.delta":
                break
    seen = fake.chat_requests[0]
    assert eventually(lambda: seen.client_went_away)
    registry = live.gateway.manager.registry
    assert eventually(lambda: registry.snapshot("up0").in_flight == 0)
    [request] = live.requests_recorded(1)
    assert request["status"] == "499"


def test_auth_at_the_handshake(serve: Serve) -> None:
    live = serve(server=ServerConfig(api_keys=[SecretStr("right-key")]))
    with pytest.raises(InvalidStatus) as wrong, connect(live, api_key="wrong-key"):
        pass
    foreign = {"Origin": "https://evil.example"}
    with (
        pytest.raises(InvalidStatus) as cross_site,
        connect(live, api_key="right-key", headers=foreign),
    ):
        pass
    with connect(live, api_key="right-key") as connection:
        events = turn(connection, model="mock-chat", input="let me in")
    assert wrong.value.response.status_code == 401
    assert json.loads(wrong.value.response.body)["error"]["code"] == "invalid_api_key"
    assert wrong.value.response.headers["www-authenticate"] == "Bearer"
    assert cross_site.value.response.status_code == 403
    assert json.loads(cross_site.value.response.body)["error"]["code"] == "origin_not_allowed"
    assert text_of(events) == "You said: let me in"


@pytest.mark.anyio
@pytest.mark.parametrize("denial", [True, False])
async def test_a_foreign_host_is_refused_before_the_handshake(denial: bool) -> None:
    gateway = Gateway(config=GatewayConfig(providers=[mock_config()]))
    sent: list[MutableMapping[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "websocket.connect"}

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "websocket",
        "path": "/v1/responses",
        "raw_path": b"/v1/responses",
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"rebound.example:8000")],
        "server": ("127.0.0.1", 8000),
        "client": ("127.0.0.1", 50000),
        "subprotocols": [],
        "extensions": {"websocket.http.response": {}} if denial else {},
    }
    await gateway.app(scope, receive, send)
    if denial:
        start, body = sent
        assert (start["type"], start["status"]) == ("websocket.http.response.start", 421)
        assert json.loads(body["body"])["error"]["code"] == "invalid_host"
    else:
        # A server without the denial-response extension turns this close into a 403.
        assert sent == [{"type": "websocket.close", "code": 1008}]


def test_a_frame_over_the_body_limit_closes_the_connection(serve: Serve) -> None:
    live = serve(server=ServerConfig(max_body_bytes=1024))
    big = json.dumps({"type": "response.create", "model": "mock-chat", "input": "x" * 2000})
    with connect(live) as connection:
        connection.send_raw(big)
        error: Any = connection.recv()
        with pytest.raises(ConnectionClosedError) as closed:
            connection.recv()
    assert error.type == "error"
    assert (error.status, error.error.code) == (413, "request_too_large")
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 1009


def test_too_many_waiting_frames_close_the_connection(serve: Serve) -> None:
    fake = FakeUpstream(default=Behavior(hang_now=True))
    live = serve(
        lambda ups: [upstream_config("up0", ups[0], timeout=60.0, max_retries=0)],
        upstreams=[fake],
    )
    frame = json.dumps({"type": "response.create", "model": "m1", "input": "hi"})
    with connect(live) as connection:
        for _ in range(MAX_QUEUED + 2):
            connection.send_raw(frame)
        error: Any = connection.recv()
        with pytest.raises(ConnectionClosedError) as closed:
            connection.recv()
    assert error.error.code == "too_many_queued_events"
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 1008


def test_an_idle_connection_is_closed(serve: Serve) -> None:
    # The answer takes longer than the idle timeout: only silence counts as idle.
    slow = mock_config(chunks=6, chunk_delay=0.1)
    live = serve(lambda ups: [slow], app=socket_only(0.3))
    with connect(live) as connection:
        events = turn(connection, model="mock-chat", input="take your time")
        with pytest.raises(ConnectionClosedOK) as closed:
            connection.recv()
    assert text_of(events) == "You said: take your time"
    assert closed.value.rcvd is not None
    assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (1000, "idle timeout")


@pytest.mark.anyio
async def test_the_async_client(serve: Serve) -> None:
    live = serve()
    async with (
        live.async_client() as client,
        client.responses.connect() as connection,
    ):
        async with asyncio.timeout(WATCHDOG):
            kinds = []
            await connection.response.create(model="mock-chat", input="hello async", store=False)
            async for event in connection:
                kinds.append(event.type)
                if event.type == "response.completed":
                    first = event.response
                    break
            await connection.response.create(
                model="mock-chat", input="and again", previous_response_id=first.id, store=False
            )
            async for event in connection:
                if event.type == "response.completed":
                    second = event.response
                    break
    assert kinds[0] == "response.created"
    assert first.output_text == "You said: hello async"
    assert second.output_text == "You said: and again"
    assert len(live.mock().requests[-1].messages) == 3


CONFIG = """
[health]
interval = 0

[[providers]]
name = "mock"
type = "mock"
models = ["mock-chat"]
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def test_leapasgi_serve_upgrades(tmp_path: Path) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text(CONFIG)
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
    process = subprocess.Popen(
        [sys.executable, "-m", "leapasgi", "serve", "--config", str(config), "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert eventually(lambda: _listening(port)), "leapasgi serve did not come up"
        client = openai.OpenAI(base_url=f"http://{HOST}:{port}/v1", api_key="k", max_retries=0)
        with client, client.responses.connect() as connection:
            events = turn(connection, model="mock-chat", input="served")
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=STOP_TIMEOUT)
    assert text_of(events) == "You said: served"


def _listening(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((HOST, port)):
        return True
    return False
