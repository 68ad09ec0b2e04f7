"""OpenTelemetry traces by the GenAI semantic conventions: one span per request, one per
upstream attempt, and ``traceparent`` on the upstream call.

Off unless ``[telemetry] traces = true`` or a ``tracer_provider`` is given; then (and only then)
opentelemetry is imported, so a gateway without the ``otel`` extra pays nothing. Prompts and
completions stay out of spans unless ``[telemetry] capture_content = true``.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Awaitable, Callable, Mapping
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

from .exceptions import ConfigurationError, LeapError
from .types import ChatCompletion, ChatCompletionRequest

if TYPE_CHECKING:
    from opentelemetry.trace import Span, TracerProvider
    from starlette.types import Scope

    from .attempts import RequestAttempts
    from .outcome import Outcome
    from .registry import Lease, ProviderEntry
    from .routing import Route

__all__ = ["TRACE_HEADERS", "Tracing"]

# The trace headers of the attempt running in this context, for the upstream request (None:
# not traced). A context variable, as OpenTelemetry's own context is: each attempt's task sees
# its own. Known exception to STYLE rule 7 (no module-level mutable state): the explicit path
# is a ``headers`` keyword on Provider.chat/stream and NativeProvider.send/open, which every
# implementation (Retrying, mock, test fakes) would have to take; until then, this.
TRACE_HEADERS: ContextVar[Mapping[str, str] | None] = ContextVar(
    "leapasgi_trace_headers", default=None
)
_SCOPE = "leapasgi"
_R = TypeVar("_R")
_T = TypeVar("_T")
_Attempt = Callable[[Any, Any, _R, Any, Any, float], Awaitable[_T]]


class Tracing:
    """Makes the spans of one gateway's requests with ``provider``'s tracer."""

    __slots__ = ("_capture", "_otel", "_propagate", "_tracer")

    def __init__(self, provider: TracerProvider | None = None, *, capture_content: bool) -> None:
        try:
            from opentelemetry import propagate, trace
        except ImportError:  # pragma: no cover (the extra is installed for the tests)
            raise ConfigurationError(
                "telemetry.traces needs OpenTelemetry: pip install 'leapasgi[otel]'"
            ) from None
        from . import __version__

        self._otel = trace
        self._propagate = propagate
        self._tracer = trace.get_tracer(_SCOPE, __version__, tracer_provider=provider)
        self._capture = capture_content

    def begin(self, outcome: Outcome, scope: Scope | None = None) -> None:
        """Open ``outcome``'s request span: a child of the active span (a host app's), else
        of the incoming ``traceparent``."""
        trace = self._otel
        context = None
        if scope is not None and not trace.get_current_span().get_span_context().is_valid:
            carrier = {
                name.decode("latin-1"): value.decode("latin-1")
                for name, value in scope.get("headers", ())
                if name in (b"traceparent", b"tracestate")
            }
            if carrier:
                context = self._propagate.extract(carrier)
        outcome.span = self._tracer.start_span(
            outcome.operation,
            context=context,
            kind=trace.SpanKind.SERVER,
            attributes=_operation(outcome),
        )

    def end(self, outcome: Outcome) -> None:
        """Close ``outcome``'s request span with what the request came to."""
        span: Span | None = outcome.span
        if span is None:
            return
        outcome.span = None
        model = outcome.model
        if model:
            span.update_name(f"{outcome.operation} {model}")
            span.set_attribute("gen_ai.request.model", model)
        served = outcome.trail.served_by
        if served is not None:
            span.set_attribute("gen_ai.provider.name", served.provider)
        span.set_attributes(_usage(outcome.prompt_tokens, outcome.completion_tokens))
        span.set_attribute("leap.attempts", outcome.trail.tries)
        span.set_attribute("http.response.status_code", outcome.status)
        if outcome.sent or outcome.error is not None:
            span.set_attribute("leap.request_id", outcome.request_id)
        if outcome.cache is not None:
            span.set_attribute("leap.cache", outcome.cache)
        if outcome.trail.queued:
            span.set_attribute("leap.queue_wait", outcome.trail.queued)
        if outcome.trail.hedged is not None:
            span.set_attribute("leap.hedged_to", outcome.trail.hedged)
        if outcome.first_token_at is not None:
            span.set_attribute("leap.time_to_first_token", outcome.first_token_at - outcome.started)
        error = outcome.error
        if error is not None:
            span.set_attribute("error.type", type(error).__name__)
            span.set_status(self._otel.StatusCode.ERROR, type(error).__name__)
        elif outcome.gone:
            span.set_attribute("error.type", "client_closed")
        span.end()

    def traced(self, attempt: _Attempt[_R, _T], outcome: Outcome) -> _Attempt[_R, _T]:
        """``attempt`` with a span of its own under ``outcome``'s, current while it runs (so
        its ``traceparent`` goes upstream)."""
        trace = self._otel
        parent = trace.set_span_in_context(outcome.span) if outcome.span is not None else None
        numbers = itertools.count(1)
        last_error: list[str] = []
        # Seconds the request had waited in lines before the attempt before this one.
        waited = [0.0]

        async def run(
            entry: ProviderEntry,
            route: Route,
            request: _R,
            attempts: RequestAttempts,
            lease: Lease,
            started: float,
        ) -> _T:
            operation = outcome.operation
            attributes: dict[str, Any] = {
                **_operation(outcome),
                "gen_ai.provider.name": route.provider,
                "gen_ai.request.model": route.model,
                "leap.attempt": next(numbers),
            }
            if entry.settings.base_url:
                attributes.update(_server(entry.settings.base_url))
            if last_error:
                attributes["leap.failover_reason"] = last_error[-1]
            queued = attempts.trail.queued
            if queued > waited[0]:
                attributes["leap.queue_wait"] = queued - waited[0]
                waited[0] = queued
            if attempts.hedging and attempts.trail.hedged == route.provider:
                attributes["leap.hedge"] = True
            if self._capture:
                attributes["gen_ai.input.messages"] = _content(request)
            span = self._tracer.start_span(
                f"{operation} {route.model}",
                context=parent,
                kind=trace.SpanKind.CLIENT,
                attributes=attributes,
            )
            with trace.use_span(span, end_on_exit=False, record_exception=False):
                carrier: dict[str, str] = {}
                self._propagate.inject(carrier)
                token = TRACE_HEADERS.set(carrier)
                try:
                    result = await attempt(entry, route, request, attempts, lease, started)
                except LeapError as error:
                    kind = type(error).__name__
                    last_error.append(kind)
                    span.set_attribute("error.type", kind)
                    if error.upstream_status is not None:
                        span.set_attribute("http.response.status_code", error.upstream_status)
                    span.set_status(trace.StatusCode.ERROR, kind)
                    raise
                except BaseException:
                    span.set_attribute("leap.cancelled", True)
                    raise
                else:
                    self._answered(span, outcome, result)
                finally:
                    TRACE_HEADERS.reset(token)
                    span.end()
            return result

        return run

    def _answered(self, span: Span, outcome: Outcome, result: object) -> None:
        """What a chat completion says about itself, on the attempt's span and the request's."""
        if not isinstance(result, ChatCompletion):
            return
        attributes: dict[str, Any] = {"gen_ai.response.model": result.model}
        reasons = [c.finish_reason for c in result.choices if c.finish_reason]
        if reasons:
            attributes["gen_ai.response.finish_reasons"] = reasons
        usage = result.usage
        if usage is not None:
            attributes.update(_usage(usage.prompt_tokens, usage.completion_tokens))
        if outcome.span is not None:
            outcome.span.set_attributes(attributes)
        if self._capture:
            attributes["gen_ai.output.messages"] = json.dumps(
                [c.message.model_dump(mode="json", exclude_none=True) for c in result.choices]
            )
        span.set_attributes(attributes)


def _operation(outcome: Outcome) -> dict[str, str]:
    """The operation's attributes: the GenAI one, and which API asked for it."""
    if outcome.api is None:
        return {"gen_ai.operation.name": outcome.operation}
    return {"gen_ai.operation.name": outcome.operation, "leap.api": outcome.api}


def _server(base_url: str) -> dict[str, Any]:
    """``server.address`` and ``server.port`` of a provider's (public) base URL."""
    parts = urlsplit(base_url)
    if not parts.hostname:
        return {}
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return {"server.address": parts.hostname, "server.port": port}


def _usage(prompt: int, completion: int) -> dict[str, int]:
    return {"gen_ai.usage.input_tokens": prompt, "gen_ai.usage.output_tokens": completion}


def _content(request: object) -> str:
    """The request's messages as JSON (only with capture_content)."""
    if not isinstance(request, ChatCompletionRequest):
        return ""
    return json.dumps([m.model_dump(mode="json", exclude_none=True) for m in request.messages])
