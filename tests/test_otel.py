"""OpenTelemetry traces: a request span and one span per upstream attempt, by the GenAI
semantic conventions; parented on the host's span or the incoming traceparent; traceparent
sent upstream; no prompt text unless asked for."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from opentelemetry import trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from starlette.applications import Starlette
from starlette.routing import Mount
from starlette.types import Receive, Scope, Send

from leapasgi import Gateway
from leapasgi.config import (
    GatewayConfig,
    HealthConfig,
    ProviderConfig,
    RoutingConfig,
    TelemetryConfig,
)
from leapasgi.genai_metrics import DURATION_BUCKETS, TOKEN_BUCKETS, TTFT_BUCKETS
from leapasgi.outcome import Outcome
from leapasgi.providers.mock import Fault, MockProvider
from tests.asgi.live_server import fast_routing, upstream_config
from tests.fake_upstream import Behavior, FakeUpstream, completion, error_body

pytestmark = pytest.mark.anyio

PROMPT = "the secret prompt text"
BODY = {"model": "m1", "messages": [{"role": "user", "content": PROMPT}]}
TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
TRACEPARENT = f"00-{TRACE_ID}-b7ad6b7169203331-01"


def exporting() -> tuple[InMemorySpanExporter, TracerProvider]:
    """A tracer provider whose finished spans the exporter keeps."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return exporter, provider


def traced(
    upstreams: Sequence[FakeUpstream], **telemetry: Any
) -> tuple[Gateway, InMemorySpanExporter, TracerProvider]:
    exporter, provider = exporting()
    config = GatewayConfig(
        providers=[
            upstream_config(f"u{i + 1}", fake, priority=i, max_retries=0)
            for i, fake in enumerate(upstreams)
        ],
        routing=fast_routing(),
        health=HealthConfig(interval=0),
        telemetry=TelemetryConfig(**telemetry),
    )
    return Gateway(config=config, tracer_provider=provider), exporter, provider


@asynccontextmanager
async def client(app: Any) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as c:
        yield c


def split(spans: Sequence[ReadableSpan]) -> tuple[ReadableSpan, list[ReadableSpan]]:
    requests = [s for s in spans if s.kind is SpanKind.SERVER]
    assert len(requests) == 1
    attempts = [s for s in spans if s.kind is SpanKind.CLIENT]
    return requests[0], sorted(attempts, key=lambda s: s.start_time or 0)


async def test_one_request_span_and_one_attempt_span_by_the_genai_conventions() -> None:
    async with FakeUpstream() as up:
        gateway, exporter, _ = traced([up])
        async with client(gateway.app) as c:
            response = await c.post("/v1/chat/completions", json=BODY)
        await gateway.aclose()
    assert response.status_code == 200
    request, attempts = split(exporter.get_finished_spans())
    assert request.name == "chat m1"
    attributes = dict(request.attributes or {})
    assert attributes["gen_ai.operation.name"] == "chat"
    assert attributes["gen_ai.request.model"] == "m1"
    assert attributes["gen_ai.response.model"] == "m1"
    assert attributes["gen_ai.provider.name"] == "u1"
    assert attributes["gen_ai.usage.input_tokens"] == 5
    assert attributes["gen_ai.usage.output_tokens"] == 1
    assert attributes["gen_ai.response.finish_reasons"] == ("stop",)
    assert attributes["leap.attempts"] == 1
    assert attributes["leap.request_id"] == response.headers["x-request-id"]
    assert [a.name for a in attempts] == ["chat m1"]
    (attempt,) = attempts
    assert attempt.parent is not None
    assert attempt.parent.span_id == request.context.span_id
    assert dict(attempt.attributes or {})["leap.attempt"] == 1
    assert dict(attempt.attributes or {})["server.address"] == "127.0.0.1"
    assert dict(attempt.attributes or {})["server.port"] == up.port
    assert attempt.status.status_code is StatusCode.UNSET


async def test_a_failover_shows_two_attempt_spans_and_the_failure_type() -> None:
    async with FakeUpstream() as bad, FakeUpstream() as good:
        bad.push(Behavior(status=503, json_body=error_body("down", type="server_error")))
        gateway, exporter, _ = traced([bad, good])
        async with client(gateway.app) as c:
            response = await c.post("/v1/chat/completions", json=BODY)
        await gateway.aclose()
    assert response.status_code == 200
    request, attempts = split(exporter.get_finished_spans())
    assert len(attempts) == 2
    failed, served = (dict(a.attributes or {}) for a in attempts)
    assert failed["gen_ai.provider.name"] == "u1"
    assert failed["error.type"] == "UpstreamUnavailableError"
    assert failed["http.response.status_code"] == 503
    assert attempts[0].status.status_code is StatusCode.ERROR
    assert served["gen_ai.provider.name"] == "u2"
    assert served["leap.attempt"] == 2
    assert served["leap.failover_reason"] == "UpstreamUnavailableError"
    assert "error.type" not in served
    assert dict(request.attributes or {})["gen_ai.provider.name"] == "u2"


async def test_a_failed_request_ends_its_span_with_the_error() -> None:
    async with FakeUpstream() as bad:
        bad.push(Behavior(status=400, json_body=error_body("no")))
        gateway, exporter, _ = traced([bad])
        async with client(gateway.app) as c:
            response = await c.post("/v1/chat/completions", json=BODY)
        await gateway.aclose()
    assert response.status_code == 400
    request, _attempts = split(exporter.get_finished_spans())
    assert request.status.status_code is StatusCode.ERROR
    assert dict(request.attributes or {})["error.type"] == "InvalidRequestError"


async def test_traceparent_goes_upstream_and_an_incoming_one_is_honoured() -> None:
    async with FakeUpstream() as up:
        gateway, exporter, _ = traced([up])
        async with client(gateway.app) as c:
            await c.post("/v1/chat/completions", json=BODY, headers={"traceparent": TRACEPARENT})
        await gateway.aclose()
    request, (attempt,) = split(exporter.get_finished_spans())
    assert format(request.context.trace_id, "032x") == TRACE_ID
    assert request.parent is not None
    assert request.parent.is_remote
    sent = up.seen[-1].headers["traceparent"]
    assert sent == f"00-{TRACE_ID}-{attempt.context.span_id:016x}-01"


async def test_mounted_the_request_span_is_a_child_of_the_hosts_span() -> None:
    async with FakeUpstream() as up:
        gateway, exporter, provider = traced([up])
        tracer = provider.get_tracer("host")

        async def host_span(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != "http":
                await inner(scope, receive, send)
                return
            with tracer.start_as_current_span("host request"):
                await inner(scope, receive, send)

        inner = Starlette(routes=[Mount("/llm", app=gateway.app)])
        async with client(host_span) as c:
            response = await c.post("/llm/v1/chat/completions", json=BODY)
        await gateway.aclose()
    assert response.status_code == 200
    spans = exporter.get_finished_spans()
    (host,) = [s for s in spans if s.name == "host request"]
    request, _attempts = split([s for s in spans if s is not host])
    assert request.parent is not None
    assert request.parent.span_id == host.context.span_id
    assert request.context.trace_id == host.context.trace_id


async def test_no_prompt_or_completion_in_any_span_by_default() -> None:
    async with FakeUpstream(default=Behavior(json_body=completion("the secret answer"))) as up:
        gateway, exporter, _ = traced([up])
        async with client(gateway.app) as c:
            await c.post("/v1/chat/completions", json=BODY)
        await gateway.aclose()
    for span in exporter.get_finished_spans():
        values = " ".join(str(v) for v in (span.attributes or {}).values())
        assert PROMPT not in values
        assert "secret answer" not in values


async def test_content_goes_in_attempt_spans_only_when_asked_for() -> None:
    async with FakeUpstream(default=Behavior(json_body=completion("the secret answer"))) as up:
        gateway, exporter, _ = traced([up], capture_content=True)
        async with client(gateway.app) as c:
            await c.post("/v1/chat/completions", json=BODY)
        await gateway.aclose()
    _request, (attempt,) = split(exporter.get_finished_spans())
    attributes = dict(attempt.attributes or {})
    assert PROMPT in str(attributes["gen_ai.input.messages"])
    assert "secret answer" in str(attributes["gen_ai.output.messages"])


async def test_streams_are_traced_too() -> None:
    async with FakeUpstream() as up:
        gateway, exporter, _ = traced([up])
        async with client(gateway.app) as c:
            response = await c.post("/v1/chat/completions", json={**BODY, "stream": True})
        await gateway.aclose()
    assert response.status_code == 200
    request, attempts = split(exporter.get_finished_spans())
    assert len(attempts) == 1
    assert "traceparent" in up.seen[-1].headers
    assert request.end_time is not None


async def test_without_tracing_nothing_is_traced_and_nothing_sent() -> None:
    async with FakeUpstream() as up:
        config = GatewayConfig(
            providers=[upstream_config("u1", up)], health=HealthConfig(interval=0)
        )
        gateway = Gateway(config=config)
        assert gateway.recorder.tracing is None
        assert gateway.manager.dispatcher.tracing is None
        async with client(gateway.app) as c:
            await c.post("/v1/chat/completions", json=BODY)
        await gateway.aclose()
    assert "traceparent" not in up.seen[-1].headers
    assert Outcome().span is None


async def test_traces_from_the_config_use_the_global_provider() -> None:
    config = GatewayConfig(
        providers=[ProviderConfig(name="mock", type="mock", models=["mock-chat"])],
        telemetry=TelemetryConfig(traces=True),
    )
    gateway = Gateway(config=config)
    assert gateway.manager.dispatcher.tracing is not None
    assert trace.get_tracer_provider() is not None
    await gateway.aclose()


async def test_a_hedged_request_has_both_attempt_spans_and_the_loser_is_marked() -> None:
    exporter, provider = exporting()
    config = GatewayConfig(
        providers=[
            ProviderConfig(name="a", type="mock", models=["m"], priority=0),
            ProviderConfig(name="b", type="mock", models=["m"], priority=1),
        ],
        routing=RoutingConfig(hedge_after=0.2, hedge_budget=1.0),
        health=HealthConfig(interval=0),
    )
    gateway = Gateway(config=config, tracer_provider=provider)
    slow = gateway.manager.registry.get("a").provider
    assert isinstance(slow, MockProvider)
    slow.inject(Fault.delay(30.0))
    async with client(gateway.app) as c:
        body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
        response = await c.post("/v1/chat/completions", json=body, headers={"x-leap-hedge": "on"})
    await gateway.aclose()
    assert response.headers["x-leap-provider"] == "b"
    request, attempts = split(exporter.get_finished_spans())
    by_provider = {dict(a.attributes or {})["gen_ai.provider.name"]: a for a in attempts}
    loser, winner = dict(by_provider["a"].attributes or {}), dict(by_provider["b"].attributes or {})
    assert loser["leap.cancelled"] is True
    assert by_provider["a"].status.status_code is StatusCode.UNSET
    assert winner["leap.hedge"] is True
    assert "leap.cancelled" not in winner
    assert dict(request.attributes or {})["leap.hedged_to"] == "b"


async def test_a_wait_in_a_providers_line_is_on_both_spans() -> None:
    exporter, provider = exporting()
    config = GatewayConfig(
        providers=[
            ProviderConfig(name="a", type="mock", models=["m"], max_in_flight=1, max_waiting=4)
        ],
        health=HealthConfig(interval=0),
    )
    gateway = Gateway(config=config, tracer_provider=provider)
    busy = gateway.manager.registry.get("a").provider
    assert isinstance(busy, MockProvider)
    busy.inject(Fault.delay(0.05), Fault.delay(0.05))  # one at a time: the other waits
    async with client(gateway.app) as c:
        bodies = [{"model": "m", "messages": [{"role": "user", "content": q}]} for q in "xy"]
        answers = await asyncio.gather(*(c.post("/v1/chat/completions", json=b) for b in bodies))
    await gateway.aclose()
    assert [a.status_code for a in answers] == [200, 200]
    spans = exporter.get_finished_spans()
    waits = [
        (span.kind, dict(span.attributes or {})["leap.queue_wait"])
        for span in spans
        if "leap.queue_wait" in dict(span.attributes or {})
    ]
    assert sorted(kind.name for kind, _ in waits) == ["CLIENT", "SERVER"]  # one request waited
    assert all(wait > 0 for _, wait in waits)


def metered(upstreams: Sequence[FakeUpstream]) -> tuple[Gateway, InMemoryMetricReader]:
    reader = InMemoryMetricReader()
    config = GatewayConfig(
        providers=[
            upstream_config(f"u{i + 1}", fake, priority=i, max_retries=0)
            for i, fake in enumerate(upstreams)
        ],
        routing=fast_routing(),
        health=HealthConfig(interval=0),
    )
    gateway = Gateway(config=config, meter_provider=MeterProvider(metric_readers=[reader]))
    return gateway, reader


def points(reader: InMemoryMetricReader) -> dict[str, list[Any]]:
    data = reader.get_metrics_data()
    assert data is not None
    found: dict[str, list[Any]] = {}
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                found.setdefault(metric.name, []).extend(metric.data.data_points)
    return found


async def test_genai_metrics_count_tokens_and_duration_once_per_request() -> None:
    async with FakeUpstream() as up:
        gateway, reader = metered([up])
        async with client(gateway.app) as c:
            response = await c.post("/v1/chat/completions", json=BODY)
        await gateway.aclose()
    assert response.status_code == 200
    found = points(reader)
    (duration,) = found["gen_ai.client.operation.duration"]
    assert duration.count == 1
    assert dict(duration.attributes) == {
        "gen_ai.operation.name": "chat",
        "leap.api": "chat_completions",
        "gen_ai.provider.name": "u1",
        "gen_ai.request.model": "m1",
    }
    assert list(duration.explicit_bounds) == list(DURATION_BUCKETS)
    tokens = {p.attributes["gen_ai.token.type"]: p for p in found["gen_ai.client.token.usage"]}
    assert tokens["input"].sum == 5
    assert tokens["output"].sum == 1
    assert list(tokens["input"].explicit_bounds) == list(TOKEN_BUCKETS)
    assert "gen_ai.server.time_to_first_token" not in found


async def test_genai_metrics_of_a_stream_have_time_to_first_token() -> None:
    async with FakeUpstream() as up:
        gateway, reader = metered([up])
        async with client(gateway.app) as c:
            response = await c.post("/v1/chat/completions", json={**BODY, "stream": True})
        await gateway.aclose()
    assert response.status_code == 200
    found = points(reader)
    (ttft,) = found["gen_ai.server.time_to_first_token"]
    assert ttft.count == 1
    assert list(ttft.explicit_bounds) == list(TTFT_BUCKETS)
    assert found["gen_ai.client.operation.duration"][0].count == 1


async def test_genai_metrics_of_a_failed_request_carry_the_error_type() -> None:
    async with FakeUpstream() as bad:
        bad.push(Behavior(status=400, json_body=error_body("no")))
        gateway, reader = metered([bad])
        async with client(gateway.app) as c:
            response = await c.post("/v1/chat/completions", json=BODY)
        await gateway.aclose()
    assert response.status_code == 400
    (duration,) = points(reader)["gen_ai.client.operation.duration"]
    assert duration.attributes["error.type"] == "InvalidRequestError"


async def test_without_metrics_no_genai_metrics_are_made() -> None:
    config = GatewayConfig(providers=[ProviderConfig(name="mock", type="mock", models=["m"])])
    gateway = Gateway(config=config)
    assert gateway.recorder.genai is None
    await gateway.aclose()
    config = GatewayConfig(
        providers=[ProviderConfig(name="mock", type="mock", models=["m"])],
        telemetry=TelemetryConfig(metrics=True),
    )
    gateway = Gateway(config=config)
    assert gateway.recorder.genai is not None
    await gateway.aclose()


@pytest.mark.parametrize(
    ("path", "body", "operation", "api"),
    [
        ("/v1/chat/completions", {**BODY, "model": "m"}, "chat", "chat_completions"),
        ("/v1/responses", {"model": "m", "input": "hi"}, "chat", "responses"),
        (
            "/v1/messages",
            {"model": "m", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]},
            "chat",
            "messages",
        ),
        ("/v1/embeddings", {"model": "m", "input": "hi"}, "embeddings", "embeddings"),
    ],
)
async def test_each_endpoint_names_its_operation_and_api(
    path: str, body: dict[str, Any], operation: str, api: str
) -> None:
    exporter, provider = exporting()
    config = GatewayConfig(
        providers=[ProviderConfig(name="mock", type="mock", models=["m"])],
        health=HealthConfig(interval=0),
    )
    gateway = Gateway(config=config, tracer_provider=provider)
    async with client(gateway.app) as c:
        response = await c.post(path, json=body)
    await gateway.aclose()
    assert response.status_code == 200, response.text
    requests = [s for s in exporter.get_finished_spans() if s.kind is SpanKind.SERVER]
    (request,) = requests
    attributes = dict(request.attributes or {})
    assert attributes["gen_ai.operation.name"] == operation
    assert attributes["leap.api"] == api
    assert request.name == f"{operation} m"
