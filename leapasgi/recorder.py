"""Where finished requests are counted: the Prometheus metrics and the access log line, both
from the request's one ``Outcome``."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from ._logging import AccessLog, printable
from .outcome import Outcome
from .prometheus import GatewayMetrics
from .recent import RecentRequests
from .tracing import Tracing

if TYPE_CHECKING:
    from .genai_metrics import GenAIMetrics

__all__ = ["MAX_LABEL", "OutcomeRecorder"]

_NO_PROVIDER = "none"
# The longest model name used as a metric label.
MAX_LABEL = 128
# The most characters of notes an access line carries (a translation's can run long).
MAX_NOTES = 600


class OutcomeRecorder:
    """Records each outcome once: metrics and one access log line (no prompt, no key).

    ``listed`` says whether a model name is one the gateway lists (configured, discovered, an
    alias); only those, and none longer than MAX_LABEL, become metric labels, so no client
    (``u1/<anything>``) and no upstream (a model list of huge names) can grow /metrics
    without bound. The access log still names every model, escaped and capped.
    """

    __slots__ = ("_listed", "_log", "accountant", "genai", "metrics", "recent", "tracing")

    def __init__(
        self,
        metrics: GatewayMetrics,
        *,
        listed: Callable[[str], bool],
        log: AccessLog | None = None,
        structured: bool = False,
    ) -> None:
        self.metrics = metrics
        self._listed = listed
        self._log = log or AccessLog(logging.getLogger("leapasgi.access"), structured=structured)
        # Tenancy's accounting (usage, cost, the reservation settled), when on.
        self.accountant: Callable[[Outcome], None] | None = None
        # Traces, when on: the request's span opens with its outcome and closes here.
        self.tracing: Tracing | None = None
        # OpenTelemetry's GenAI metrics, when on: recorded here with the Prometheus ones.
        self.genai: GenAIMetrics | None = None
        # The dashboard's live view of the last requests, when the dashboard is on.
        self.recent: RecentRequests | None = None

    def outcome(self, operation: str = "chat", *, api: str | None = None) -> Outcome:
        """A new outcome that is recorded here when its ``with`` block ends."""
        outcome = Outcome(operation, api=api, sink=self)
        if self.tracing is not None:
            self.tracing.begin(outcome)
        return outcome

    def record(self, outcome: Outcome) -> None:
        """Count ``outcome`` in the metrics and write its access log line."""
        latency = time.perf_counter() - outcome.started
        status = outcome.status
        error = outcome.error
        trail = outcome.trail
        served = trail.served_by
        if served is not None:
            provider = served.provider
        else:
            provider = (error.provider if error is not None else None) or _NO_PROVIDER
        model = outcome.model or ""
        upstream = trail.upstream_seconds
        first = outcome.first_token_at
        ttft = None if first is None or error is not None else first - outcome.started
        if trail.hedged is not None:
            won = served is not None and served.provider == trail.hedged
            self.metrics.record_hedge(provider=trail.hedged, won=won)
        if error is not None:
            self.metrics.record_error(provider=provider, kind=type(error).__name__)
            overhead = latency
        elif outcome.gone:
            provider, overhead = _NO_PROVIDER, 0.0
        else:
            overhead = max(0.0, (latency if ttft is None else ttft) - upstream)
        label = model if model and len(model) <= MAX_LABEL and self._listed(model) else ""
        self.metrics.record(
            provider=provider,
            model=label,
            status=status,
            latency=latency,
            overhead=overhead,
            ttft=ttft,
            prompt_tokens=outcome.prompt_tokens,
            completion_tokens=outcome.completion_tokens,
            stream=outcome.stream,
        )
        accountant = self.accountant
        if accountant is not None and outcome.tenant is not None:
            accountant(outcome)
        cache = outcome.cache
        if cache is not None:
            self.metrics.record_cache(cache)
        if outcome.span is not None and self.tracing is not None:
            self.tracing.end(outcome)
        if self.genai is not None:
            self.genai.record(outcome, model=label, latency=latency, ttft=ttft)
        recent = self.recent
        if recent is not None:
            recent.add(outcome, provider=provider, latency=latency)
        log = self._log
        if not log.enabled:
            return  # no line: neither the trail in short nor the fields are made
        if log.structured:
            self._log_fields(outcome, provider, latency)
            return
        # chat model=m provider=u2 status=200 [error=] [tenant=] [cost=] [cache=] [hook=] attempts=2
        # ms=12.3 [queued_ms=] id=... [trail="u1:503 -> u2:ok"] [notes="u1: dropped seed"]
        kind = f" error={type(error).__name__}" if error is not None else ""
        if accountant is not None and outcome.tenant is not None:
            kind += f" tenant={printable(outcome.tenant.id)}"
            if outcome.cost_usd is not None:
                kind += f" cost={outcome.cost_usd:.6f}"
        if cache is not None:
            kind += f" cache={cache}"
        if outcome.answered_by is not None:
            kind += f" hook={printable(outcome.answered_by)}"
        tail = f" queued_ms={trail.queued * 1000:.1f}" if trail.queued else ""
        tail += f" id={outcome.request_id}"
        if trail.attempts:
            tail += f' trail="{trail.short()}"'
        if trail.notes:
            tail += f' notes="{_notes(trail.notes)}"'
        self._log.info(
            "%s model=%s provider=%s status=%d%s attempts=%d ms=%.1f%s",
            outcome.operation,
            printable(model) if model else "-",
            provider,
            status,
            kind,
            trail.tries,
            latency * 1000,
            tail,
        )

    def _log_fields(self, outcome: Outcome, provider: str, latency: float) -> None:
        """The access line as fields (``[server] log_format = "json"``)."""
        trail = outcome.trail
        model = printable(outcome.model) if outcome.model else None
        fields: dict[str, object] = {
            "request_id": outcome.request_id,
            "operation": outcome.operation,
            "api": outcome.api,
            "model": model,
            "provider": provider,
            "status": outcome.status,
            "stream": outcome.stream,
            "attempts": trail.tries,
            "duration_ms": round(latency * 1000, 1),
            "trail": trail.short(),
        }
        error = outcome.error
        if error is not None:
            fields["error"] = type(error).__name__
        if outcome.gone:
            fields["client_closed"] = True
        if trail.queued:
            fields["queued_ms"] = round(trail.queued * 1000, 1)
        if outcome.cache is not None:
            fields["cache"] = outcome.cache
        if trail.hedged is not None:
            fields["hedged_to"] = trail.hedged
        if trail.notes:
            fields["notes"] = [printable(note) for note in trail.notes]
        if outcome.answered_by is not None:
            fields["answered_by"] = printable(outcome.answered_by)
        if outcome.tenant is not None and self.accountant is not None:
            fields["tenant"] = printable(outcome.tenant.id)
            if outcome.cost_usd is not None:
                fields["cost_usd"] = outcome.cost_usd
        if outcome.prompt_tokens or outcome.completion_tokens:
            fields["input_tokens"] = outcome.prompt_tokens
            fields["output_tokens"] = outcome.completion_tokens
        self._log.info("%s %s %d", outcome.operation, model or "-", outcome.status, fields=fields)

    def flush(self) -> None:
        """Write the access lines still waiting (at shutdown)."""
        self._log.flush()


def _notes(notes: list[str]) -> str:
    """What the gateway changed or skipped (parameter rules, translation), one quoted field."""
    return printable("; ".join(notes), MAX_NOTES).replace('"', "'")
