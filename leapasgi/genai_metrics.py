"""OpenTelemetry metrics by the GenAI semantic conventions, beside the Prometheus ones: token
usage, operation duration, time to first token and time per output token, each recorded once
per request from its ``Outcome``.

Off unless ``[telemetry] metrics = true`` or a ``meter_provider`` is given; then (and only then)
opentelemetry is imported. Models become attributes only when the gateway lists them (the
recorder's bounded label), so no client can grow the series without bound.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .exceptions import ConfigurationError

if TYPE_CHECKING:
    from opentelemetry.metrics import MeterProvider

    from .outcome import Outcome

__all__ = ["DURATION_BUCKETS", "TOKEN_BUCKETS", "TPOT_BUCKETS", "TTFT_BUCKETS", "GenAIMetrics"]

_SCOPE = "leapasgi"
# The conventions' advised bucket boundaries.
TOKEN_BUCKETS = tuple(float(4**n) for n in range(14))
DURATION_BUCKETS = tuple(0.01 * 2**n for n in range(14))
TTFT_BUCKETS = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
)  # fmt: skip
TPOT_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5)


class GenAIMetrics:
    """The GenAI histograms of one gateway, from ``provider``'s meter (else the global one)."""

    __slots__ = ("_duration", "_tokens", "_tpot", "_ttft")

    def __init__(self, provider: MeterProvider | None = None) -> None:
        try:
            from opentelemetry import metrics
        except ImportError:  # pragma: no cover (the extra is installed for the tests)
            raise ConfigurationError(
                "telemetry.metrics needs OpenTelemetry: pip install 'leapasgi[otel]'"
            ) from None
        from . import __version__

        meter = metrics.get_meter(_SCOPE, __version__, meter_provider=provider)
        self._tokens = meter.create_histogram(
            "gen_ai.client.token.usage",
            unit="{token}",
            description="Number of input and output tokens used.",
            explicit_bucket_boundaries_advisory=TOKEN_BUCKETS,
        )
        self._duration = meter.create_histogram(
            "gen_ai.client.operation.duration",
            unit="s",
            description="GenAI operation duration.",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
        )
        self._ttft = meter.create_histogram(
            "gen_ai.server.time_to_first_token",
            unit="s",
            description="Time to generate first token for successful responses.",
            explicit_bucket_boundaries_advisory=TTFT_BUCKETS,
        )
        self._tpot = meter.create_histogram(
            "gen_ai.server.time_per_output_token",
            unit="s",
            description="Time per output token generated after the first token for successful "
            "responses.",
            explicit_bucket_boundaries_advisory=TPOT_BUCKETS,
        )

    def record(self, outcome: Outcome, *, model: str, latency: float, ttft: float | None) -> None:
        """Record ``outcome``: ``model`` is its bounded label ('' leaves it out), ``ttft`` its
        time to first token (None unless streamed and answered)."""
        attributes: dict[str, Any] = {"gen_ai.operation.name": outcome.operation}
        if outcome.api is not None:
            attributes["leap.api"] = outcome.api
        provider = outcome.provider
        if provider is not None:
            attributes["gen_ai.provider.name"] = provider
        if model:
            attributes["gen_ai.request.model"] = model
        error = outcome.error
        if error is not None:
            kind = type(error).__name__
        elif outcome.gone:
            kind = "client_closed"
        else:
            kind = None
        if kind is not None:
            self._duration.record(latency, {**attributes, "error.type": kind})
        else:
            self._duration.record(latency, attributes)
        if not outcome.usage_estimated and (outcome.prompt_tokens or outcome.completion_tokens):
            self._tokens.record(outcome.prompt_tokens, {**attributes, "gen_ai.token.type": "input"})
            output = {**attributes, "gen_ai.token.type": "output"}
            self._tokens.record(outcome.completion_tokens, output)
        if kind is None and ttft is not None:
            self._ttft.record(ttft, attributes)
            if outcome.completion_tokens > 1:
                per_token = (latency - ttft) / (outcome.completion_tokens - 1)
                self._tpot.record(per_token, attributes)
