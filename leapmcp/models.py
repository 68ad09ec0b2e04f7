"""What the tools take and return, as pydantic models: each becomes a JSON Schema MCP clients see.

Times are Unix seconds, latencies milliseconds. Nothing here holds a key or a secret.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

__all__ = [
    "AttemptInfo",
    "ChatMessage",
    "ChatResult",
    "HealthCheckInfo",
    "HealthCheckResult",
    "LatencyPercentiles",
    "ModelInfo",
    "ModelsResult",
    "ProviderInfo",
    "ProvidersResult",
    "StatsResult",
    "StatusChange",
    "TokenUsage",
]

Status = Literal["active", "inactive", "unhealthy", "maintenance"]
AdminStatus = Literal["active", "inactive", "maintenance"]
Health = Literal["healthy", "unhealthy", "unknown"]
Breaker = Literal["closed", "open", "half_open"]


class ChatMessage(BaseModel):
    """One message of a conversation."""

    role: Literal["system", "developer", "user", "assistant"]
    content: str


class TokenUsage(BaseModel):
    """Tokens the provider counted for one answer."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class AttemptInfo(BaseModel):
    """One try of one provider while serving a chat."""

    provider: str
    model: str = Field(description="The model name sent to this provider")
    outcome: str = Field(
        description='"ok", the error kind (RateLimitError...), or "ejected" when it was skipped'
    )
    status: int | None = Field(description="The provider's HTTP status, when it answered one")
    latency_ms: float
    message: str | None = Field(description="Why the attempt failed")
    skipped: bool = Field(description="True when the provider was not called (breaker open)")


class ChatResult(BaseModel):
    """A model's answer and how the gateway got it."""

    reply: str = Field(description="The answer's text")
    provider: str = Field(description="The provider that served the answer")
    model: str = Field(description="The model that answered, as the provider names it")
    finish_reason: str | None = Field(description='"stop", "length" (max_tokens reached)...')
    usage: TokenUsage | None
    request_id: str = Field(description="The request's id, as in the gateway's access log")
    attempts: list[AttemptInfo] = Field(
        description="The routing trail: every provider tried, in order; the last one served"
    )


class LatencyPercentiles(BaseModel):
    """Latency percentiles in milliseconds over the recent requests."""

    p50: float
    p95: float
    p99: float


class StatusChange(BaseModel):
    """A status transition: when, to what, and why."""

    at: float
    status: Status
    cause: str


class ProviderInfo(BaseModel):
    """One provider: what it serves, whether it takes traffic, and how it has been doing."""

    name: str
    kind: str = Field(description='"openai_compatible", "mock" or a custom kind')
    preset: str | None
    status: Status = Field(
        description="active takes traffic; inactive and maintenance take none; unhealthy is "
        "ejected by its circuit breaker until a probe succeeds"
    )
    health: Health
    breaker: Breaker
    times_ejected: int
    ejected_until: float | None
    features: list[str]
    models: list[str]
    priority: int
    weight: float
    last_check_at: float | None
    last_check_ok: bool | None
    requests: int
    successes: int
    errors: dict[str, int] = Field(description="Failed requests by error kind")
    consecutive_errors: int
    in_flight: int
    success_rate: float | None
    latency_ewma_ms: float | None
    latency_ms: LatencyPercentiles | None
    ttft_ms: LatencyPercentiles | None = Field(description="Time to the first streamed token")
    prompt_tokens: int
    completion_tokens: int
    last_error: str | None
    recent_changes: list[StatusChange] = Field(description="The latest status transitions")


class ProvidersResult(BaseModel):
    """Every registered provider."""

    providers: list[ProviderInfo]


class ModelInfo(BaseModel):
    """A model name a chat can ask for."""

    name: str
    alias: bool = Field(description="True for a gateway alias that stands for other models")
    targets: list[str] = Field(description="An alias's targets in preference order")
    providers: list[str] = Field(description="The providers that can serve it")


class ModelsResult(BaseModel):
    """Every model and alias the gateway can route."""

    models: list[ModelInfo]


class HealthCheckInfo(BaseModel):
    """The outcome of one provider's health check."""

    provider: str
    ok: bool
    latency_ms: float
    error: str | None
    status: Status = Field(description="The provider's status after the check")
    health: Health


class HealthCheckResult(BaseModel):
    """Health checks just run."""

    results: list[HealthCheckInfo]
    healthy: int
    unhealthy: int


class StatsResult(BaseModel):
    """Totals over every provider."""

    providers: int
    active: int
    healthy: int
    in_flight: int
    requests: int
    successes: int
    errors: int
    success_rate: float | None
