"""The reliability suite's setup: three fake providers U1-U3 on 127.0.0.1 behind one gateway
served by uvicorn, with test-scaled timeouts, and the figures each scenario records.

Timeouts are scaled down (connect 0.5 s, first byte 1 s, idle 1 s, total 3 s) and so are the
ejection times, so every scenario ends within seconds; every loop is bounded in count and time.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from leapasgi.config import HealthConfig, ProviderConfig, RoutingConfig
from tests.asgi.live_server import AppFactory, LiveGateway, live_gateway
from tests.fake_upstream import FakeUpstream

__all__ = [
    "CONNECT",
    "FIRST_BYTE",
    "IDLE",
    "TOTAL",
    "Figures",
    "provider_over",
    "reliability_gateway",
]

CONNECT = 0.5
FIRST_BYTE = 1.0
IDLE = 1.0
TOTAL = 3.0
# Ejection: after 3 consecutive failures, 0.5 s x n, at most 2 s.
FAILURE_THRESHOLD = 3
BASE_EJECTION = 0.5
MAX_EJECTION = 2.0
KEY_PREFIX = "sk-rel-"


def provider_over(name: str, fake: FakeUpstream, **options: Any) -> ProviderConfig:
    """A provider named ``name`` (u1, u2, u3) over a fake upstream serving ``m1``, with the
    suite's timeouts and a key of its own."""
    options.setdefault("models", ["m1"])
    options.setdefault("connect_timeout", CONNECT)
    options.setdefault("first_byte_timeout", FIRST_BYTE)
    options.setdefault("idle_timeout", IDLE)
    options.setdefault("total_timeout", TOTAL)
    options.setdefault("api_key", f"{KEY_PREFIX}{name}-0123456789abcdef")
    options.setdefault("base_url", fake.base_url)
    return ProviderConfig(name=name, **options)


@contextlib.contextmanager
def reliability_gateway(
    *,
    upstreams: Sequence[FakeUpstream] | None = None,
    provider_options: dict[str, dict[str, Any]] | None = None,
    routing: dict[str, Any] | None = None,
    health: dict[str, Any] | None = None,
    app: AppFactory | None = None,
    **options: Any,
) -> Iterator[LiveGateway]:
    """U1-U3 (fresh fakes unless given) behind a gateway served by uvicorn on 127.0.0.1, on
    uvloop, as ``leapasgi serve`` runs.

    ``provider_options`` maps "u1".."u3" to extra ProviderConfig fields; ``routing`` and
    ``health`` override RoutingConfig / HealthConfig fields; ``app`` wraps the gateway in a
    host app to serve instead; ``options`` are other GatewayConfig fields
    (``server=ServerConfig(...)``).
    """
    fakes = list(upstreams) if upstreams is not None else [FakeUpstream() for _ in range(3)]
    extra = provider_options or {}

    def providers(started: Sequence[FakeUpstream]) -> list[ProviderConfig]:
        return [
            provider_over(f"u{i + 1}", fake, **extra.get(f"u{i + 1}", {}))
            for i, fake in enumerate(started)
        ]

    routing_options: dict[str, Any] = {"request_timeout": TOTAL}
    routing_options.update(routing or {})
    health_options: dict[str, Any] = {
        "interval": 0,
        "failure_threshold": FAILURE_THRESHOLD,
        "base_ejection": BASE_EJECTION,
        "max_ejection": MAX_EJECTION,
    }
    health_options.update(health or {})
    with live_gateway(
        providers,
        upstreams=fakes,
        routing=RoutingConfig(**routing_options),
        health=HealthConfig(**health_options),
        app=app,
        loop="uvloop",
        **options,
    ) as live:
        yield live


@dataclass
class Figures:
    """What each scenario measured, keyed by its row in the RELIABILITY.md table."""

    rows: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def record(self, row: str, name: str, value: Any, *, passed: bool, target: str = "") -> None:
        """Note one figure; ``passed`` is whether it meets the row's pass figure."""
        with self._lock:
            self.rows.setdefault(row, []).append(
                {"name": name, "value": value, "passed": passed, "target": target}
            )
