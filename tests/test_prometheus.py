from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass, field

import pytest

from leapasgi.clock import FakeClock
from leapasgi.exceptions import UpstreamUnavailableError
from leapasgi.health import DEFAULT_BASE_EJECTION, DEFAULT_FAILURE_THRESHOLD
from leapasgi.limits import Acquired
from leapasgi.prometheus import (
    CONTENT_TYPE,
    DEFAULT_BUCKETS,
    MAX_SERIES,
    OTHER,
    OVERHEAD_BUCKETS,
    Counter,
    GatewayMetrics,
    Histogram,
)
from leapasgi.providers.mock import MockProvider
from leapasgi.registry import ProviderEntry, ProviderStatus, Registry, RouteSettings

Labels = frozenset[tuple[str, str]]

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$")
_UNESCAPE = {"\\": "\\", '"': '"', "n": "\n"}
_SUFFIXES = {"counter": ("",), "gauge": ("",), "histogram": ("_bucket", "_sum", "_count")}


@dataclass
class Exposition:
    help: dict[str, str] = field(default_factory=dict)
    types: dict[str, str] = field(default_factory=dict)
    samples: dict[tuple[str, Labels], float] = field(default_factory=dict)

    def value(self, name: str, **labels: str) -> float:
        return self.samples[name, frozenset(labels.items())]

    def series(self, name: str) -> dict[Labels, float]:
        return {labels: v for (n, labels), v in self.samples.items() if n == name}


def parse_labels(text: str) -> dict[str, str]:
    labels: dict[str, str] = {}
    i = 0
    while i < len(text):
        eq = text.index("=", i)
        name = text[i:eq]
        assert text[eq + 1] == '"'
        j, value = eq + 2, []
        while text[j] != '"':
            if text[j] == "\\":
                value.append(_UNESCAPE[text[j + 1]])
                j += 2
            else:
                assert text[j] != "\n"
                value.append(text[j])
                j += 1
        assert name not in labels
        labels[name] = "".join(value)
        j += 1
        if j < len(text):
            assert text[j] == ","
            j += 1
        i = j
    return labels


def parse(text: str) -> Exposition:
    """A strict reader of the 0.0.4 text format as we write it: one family block at a time."""
    assert text.endswith("\n")
    out = Exposition()
    family: str | None = None
    for line in text.splitlines():
        if line.startswith("# HELP "):
            name, _, doc = line[len("# HELP ") :].partition(" ")
            assert name not in out.help, f"HELP twice for {name}"
            out.help[name] = doc
            family = None
        elif line.startswith("# TYPE "):
            name, _, kind = line[len("# TYPE ") :].partition(" ")
            assert name not in out.types, f"TYPE twice for {name}"
            assert name in out.help
            out.types[name] = kind
            family = name
        else:
            match = _SAMPLE.match(line)
            assert match, f"not a sample line: {line!r}"
            name, labels, value = match.groups()
            assert family is not None
            assert name in {family + s for s in _SUFFIXES[out.types[family]]}, line
            key = (name, frozenset(parse_labels(labels or "").items()))
            assert key not in out.samples, f"duplicate sample {line!r}"
            out.samples[key] = float(value)
    return out


def buckets(exp: Exposition, name: str, **labels: str) -> list[tuple[float, float]]:
    rows = []
    for (n, label_set), v in exp.samples.items():
        found = dict(label_set)
        le = found.pop("le", None)
        if n == f"{name}_bucket" and found == labels:
            assert le is not None
            rows.append((float(le), v))
    return sorted(rows)


def make_registry() -> tuple[Registry, FakeClock]:
    clock = FakeClock()
    return Registry(clock=clock), clock


def eject(entry: ProviderEntry) -> None:
    for _ in range(DEFAULT_FAILURE_THRESHOLD):
        entry.failed(UpstreamUnavailableError("down", provider=entry.name, upstream_status=503), 1)


def record(metrics: GatewayMetrics, **overrides: object) -> None:
    args: dict[str, object] = {
        "provider": "groq",
        "model": "llama",
        "status": 200,
        "latency": 0.3,
        "overhead": 0.0004,
    }
    args.update(overrides)
    metrics.record(**args)  # type: ignore[arg-type]


def test_the_content_type_is_the_text_format() -> None:
    assert CONTENT_TYPE == "text/plain; version=0.0.4; charset=utf-8"


def test_request_counters_add_up() -> None:
    metrics = GatewayMetrics()
    for _ in range(3):
        record(metrics, prompt_tokens=10, completion_tokens=4)
    record(metrics, stream=True, prompt_tokens=5)
    record(metrics, status=429)
    record(metrics, provider="mock", model="m")
    exp = parse(metrics.render([]))
    total = "leap_requests_total"
    assert exp.value(total, provider="groq", model="llama", status="200", stream="false") == 3
    assert exp.value(total, provider="groq", model="llama", status="200", stream="true") == 1
    assert exp.value(total, provider="groq", model="llama", status="429", stream="false") == 1
    assert exp.value(total, provider="mock", model="m", status="200", stream="false") == 1
    assert sum(exp.series(total).values()) == 6
    tokens = "leap_tokens_total"
    assert exp.value(tokens, provider="groq", model="llama", direction="prompt") == 35
    assert exp.value(tokens, provider="groq", model="llama", direction="completion") == 12
    # No tokens, no series.
    assert not any(dict(labels)["provider"] == "mock" for labels in exp.series(tokens))
    assert exp.value("leap_request_duration_seconds_count", provider="groq", model="llama") == 5
    assert exp.value("leap_gateway_overhead_seconds_count") == 6
    assert exp.types[total] == "counter"


def test_an_unusual_status_is_still_a_label() -> None:
    metrics = GatewayMetrics()
    record(metrics, status=799)
    exp = parse(metrics.render([]))
    labels = {"provider": "groq", "model": "llama", "status": "799", "stream": "false"}
    assert exp.value("leap_requests_total", **labels) == 1


def test_time_to_first_token_is_recorded_only_when_given() -> None:
    metrics = GatewayMetrics()
    record(metrics)
    record(metrics, ttft=0.2, stream=True)
    exp = parse(metrics.render([]))
    name = "leap_time_to_first_token_seconds"
    assert exp.value(f"{name}_count", provider="groq", model="llama") == 1
    assert exp.value(f"{name}_sum", provider="groq", model="llama") == pytest.approx(0.2)
    assert exp.types[name] == "histogram"


def test_errors_are_counted_by_provider_and_kind() -> None:
    metrics = GatewayMetrics()
    metrics.record_error(provider="groq", kind="RateLimitError")
    metrics.record_error(provider="groq", kind="RateLimitError")
    metrics.record_error(provider="", kind="none")
    exp = parse(metrics.render([]))
    assert exp.value("leap_errors_total", provider="groq", kind="RateLimitError") == 2
    assert exp.value("leap_errors_total", provider="", kind="none") == 1
    assert 'leap_errors_total{provider="",kind="none"} 1\n' in metrics.render([])


def test_histogram_buckets_are_cumulative_with_inf_equal_to_count() -> None:
    metrics = GatewayMetrics()
    latencies = [0.001, 0.007, 0.05, 0.3, 0.3, 2.0, 45.0, 500.0]
    for latency in latencies:
        record(metrics, latency=latency)
    exp = parse(metrics.render([]))
    name = "leap_request_duration_seconds"
    rows = buckets(exp, name, provider="groq", model="llama")
    assert [le for le, _ in rows] == [*DEFAULT_BUCKETS, math.inf]
    counts = [c for _, c in rows]
    assert counts == sorted(counts)
    for le, count in rows:
        assert count == sum(1 for x in latencies if x <= le)
    assert counts[-1] == exp.value(f"{name}_count", provider="groq", model="llama") == 8
    total = exp.value(f"{name}_sum", provider="groq", model="llama")
    assert total == pytest.approx(sum(latencies))


def test_a_value_on_a_bound_falls_in_that_bucket() -> None:
    histogram = Histogram("h_seconds", "Test.", (), (0.1, 1.0))
    for value in (0.1, 1.0, 1.0000001):
        histogram.observe(value)
    exp = parse(histogram.render())
    assert buckets(exp, "h_seconds") == [(0.1, 1), (1.0, 2), (math.inf, 3)]


def test_the_overhead_histogram_has_no_labels_and_shows_zeros_before_any_request() -> None:
    metrics = GatewayMetrics()
    exp = parse(metrics.render([]))
    name = "leap_gateway_overhead_seconds"
    assert buckets(exp, name) == [(le, 0) for le in (*OVERHEAD_BUCKETS, math.inf)]
    assert exp.value(f"{name}_sum") == 0
    assert exp.value(f"{name}_count") == 0
    record(metrics, overhead=0.0003)
    record(metrics, overhead=0.2)
    exp = parse(metrics.render([]))
    assert exp.value(f"{name}_bucket", le="0.0005") == 1
    assert exp.value(f"{name}_bucket", le="0.1") == 1
    assert exp.value(f"{name}_bucket", le="+Inf") == 2
    assert exp.value(f"{name}_sum") == pytest.approx(0.2003)


def test_label_values_are_escaped() -> None:
    metrics = GatewayMetrics()
    model = 'we"ird\\model\nname'
    record(metrics, model=model, prompt_tokens=1)
    text = metrics.render([])
    assert 'model="we\\"ird\\\\model\\nname"' in text
    assert all(line.startswith(("#", "leap_")) for line in text.splitlines())
    exp = parse(text)
    labels = {"provider": "groq", "model": model, "status": "200", "stream": "false"}
    assert exp.value("leap_requests_total", **labels) == 1
    assert exp.value("leap_tokens_total", provider="groq", model=model, direction="prompt") == 1


def test_help_text_is_escaped() -> None:
    counter = Counter("c_total", "back\\slash\nnewline", ())
    assert counter.render().splitlines()[0] == "# HELP c_total back\\\\slash\\nnewline"


def test_gauges_come_from_registry_snapshots() -> None:
    registry, _ = make_registry()
    fast = registry.register(MockProvider(name="fast"))
    registry.register(MockProvider(name="idle"))
    drained = registry.register(MockProvider(name="drained"))
    fast.lease(expires_at=float("inf"))  # still in flight
    fast.lease(expires_at=float("inf")).succeeded(0.25)
    failing = UpstreamUnavailableError("down", provider="drained", upstream_status=503)
    drained.failed(failing, 0.5)
    drained.failed(failing, 0.5)
    registry.set_status("drained", ProviderStatus.MAINTENANCE, cause="test")
    snapshots = registry.snapshots()
    exp = parse(GatewayMetrics().render(snapshots))

    assert exp.series("leap_provider_in_flight") == {
        frozenset({("provider", "fast")}): 1,
        frozenset({("provider", "idle")}): 0,
        frozenset({("provider", "drained")}): 0,
    }
    assert exp.value("leap_provider_up", provider="fast") == 1
    assert exp.value("leap_provider_up", provider="idle") == 1
    assert exp.value("leap_provider_up", provider="drained") == 0
    assert exp.value("leap_provider_consecutive_errors", provider="drained") == 2
    assert exp.value("leap_provider_consecutive_errors", provider="fast") == 0
    by_name = {s.name: s for s in snapshots}
    assert by_name["fast"].latency_ewma is not None
    assert exp.value("leap_provider_latency_ewma_seconds", provider="fast") == pytest.approx(
        by_name["fast"].latency_ewma
    )
    # Latency unknown: no sample rather than a made-up zero.
    assert by_name["idle"].latency_ewma is None
    assert frozenset({("provider", "idle")}) not in exp.series("leap_provider_latency_ewma_seconds")
    for name in (
        "leap_provider_in_flight",
        "leap_provider_up",
        "leap_provider_breaker_state",
        "leap_provider_latency_ewma_seconds",
        "leap_provider_consecutive_errors",
    ):
        assert exp.types[name] == "gauge"


def test_the_breaker_state_is_one_hot() -> None:
    registry, clock = make_registry()
    registry.register(MockProvider(name="closed"))
    eject(registry.register(MockProvider(name="open")))
    probing = registry.register(MockProvider(name="probing"))
    eject(probing)
    clock.advance(DEFAULT_BASE_EJECTION)
    assert probing.breaker.allow()
    exp = parse(GatewayMetrics().render(registry.snapshots()))
    name = "leap_provider_breaker_state"
    for provider, current in (("closed", "closed"), ("open", "open"), ("probing", "half_open")):
        states = {
            dict(labels)["state"]: v
            for labels, v in exp.series(name).items()
            if dict(labels)["provider"] == provider
        }
        assert states == {s: float(s == current) for s in ("closed", "open", "half_open")}
    assert exp.value("leap_provider_up", provider="open") == 0
    assert exp.value("leap_provider_up", provider="probing") == 0
    assert exp.value("leap_provider_up", provider="closed") == 1


def test_new_series_beyond_the_cap_fold_into_other() -> None:
    metrics = GatewayMetrics(max_series=3)
    for i in range(10):
        record(metrics, model=f"m{i}", prompt_tokens=1)
    record(metrics, model="m0")
    exp = parse(metrics.render([]))
    requests = exp.series("leap_requests_total")
    assert len(requests) == 4
    assert (
        exp.value("leap_requests_total", provider="groq", model="m0", status="200", stream="false")
        == 2
    )
    assert (
        exp.value("leap_requests_total", provider=OTHER, model=OTHER, status=OTHER, stream=OTHER)
        == 7
    )
    assert sum(requests.values()) == 11
    assert exp.value("leap_request_duration_seconds_count", provider=OTHER, model=OTHER) == 7
    assert len(exp.series("leap_request_duration_seconds_count")) == 4
    assert exp.value("leap_tokens_total", provider=OTHER, model=OTHER, direction=OTHER) == 7


def test_the_default_cap_bounds_a_family() -> None:
    counter = Counter("c_total", "Test.", ("model",))
    for i in range(MAX_SERIES + 500):
        counter.inc(f"m{i}")
    counter.inc("m0")
    exp = parse(counter.render())
    assert len(exp.series("c_total")) == MAX_SERIES + 1
    assert exp.value("c_total", model=OTHER) == 500
    assert exp.value("c_total", model="m0") == 2


def test_the_output_is_deterministic() -> None:
    registry, _ = make_registry()
    for name in ("b", "a", "c"):
        registry.register(MockProvider(name=name)).succeeded(0.1)
    calls = [
        {"provider": p, "model": m, "status": s, "stream": st, "ttft": 0.05 if st else None}
        for p in ("a", "b")
        for m in ("x", "y")
        for s in (200, 500)
        for st in (False, True)
    ]
    texts = set()
    for seed in range(5):
        random.Random(seed).shuffle(calls)
        metrics = GatewayMetrics()
        for call in calls:
            record(metrics, latency=0.5, overhead=0.001, **call)
            metrics.record_error(provider=str(call["provider"]), kind="Timeout")
        snapshots = registry.snapshots()
        random.Random(seed).shuffle(snapshots)
        texts.add(metrics.render(snapshots))
        assert metrics.render(snapshots) in texts
    assert len(texts) == 1


def test_help_and_type_appear_once_per_family_in_name_order() -> None:
    registry, _ = make_registry()
    registry.register(MockProvider(name="p")).succeeded(0.1)
    metrics = GatewayMetrics()
    record(metrics, ttft=0.1, prompt_tokens=1, completion_tokens=1)
    metrics.record_error(provider="p", kind="k")
    text = metrics.render(registry.snapshots())
    exp = parse(text)
    families = [line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")]
    assert families == sorted(families)
    assert (
        set(families)
        == set(exp.help)
        == {
            "leap_errors_total",
            "leap_gateway_overhead_seconds",
            "leap_provider_breaker_state",
            "leap_provider_concurrency_limit",
            "leap_provider_consecutive_errors",
            "leap_provider_in_flight",
            "leap_provider_latency_ewma_seconds",
            "leap_provider_overflows_total",
            "leap_provider_queue_wait_seconds",
            "leap_provider_shed_total",
            "leap_provider_up",
            "leap_provider_waiting",
            "leap_request_duration_seconds",
            "leap_requests_total",
            "leap_time_to_first_token_seconds",
            "leap_tokens_total",
        }
    )
    assert all(exp.help[name] for name in families)
    for name in families:
        assert text.count(f"# HELP {name} ") == 1
        assert text.count(f"# TYPE {name} ") == 1


def test_counters_and_families_check_their_inputs() -> None:
    counter = Counter("c_total", "Test.", ("a", "b"))
    with pytest.raises(ValueError, match="only goes up"):
        counter.inc("x", "y", amount=-1)
    with pytest.raises(ValueError, match="label values"):
        counter.inc("x")
    with pytest.raises(ValueError, match="metric name"):
        Counter("bad-name", "Test.", ())
    with pytest.raises(ValueError, match="label name"):
        Counter("c_total", "Test.", ("__reserved",))
    with pytest.raises(ValueError, match="duplicate"):
        Counter("c_total", "Test.", ("a", "a"))
    with pytest.raises(ValueError, match="le"):
        Histogram("h", "Test.", ("le",))
    with pytest.raises(ValueError, match="increasing"):
        Histogram("h", "Test.", (), (1.0, 0.5))
    # An explicit +Inf bound is the implicit one.
    assert Histogram("h", "Test.", (), (1.0, math.inf)).buckets == (1.0,)


def test_prometheus_client_reads_the_output() -> None:
    parser = pytest.importorskip("prometheus_client.parser")
    registry, _ = make_registry()
    registry.register(MockProvider(name="p")).succeeded(0.1)
    metrics = GatewayMetrics()
    record(metrics, model='q"u\\o\nte', ttft=0.1, prompt_tokens=2)
    families = {
        f.name: f
        for f in parser.text_string_to_metric_families(metrics.render(registry.snapshots()))
    }
    assert families["leap_requests"].type == "counter"
    assert families["leap_request_duration_seconds"].type == "histogram"
    assert any(s.labels.get("model") == 'q"u\\o\nte' for s in families["leap_requests"].samples)


@pytest.mark.anyio
async def test_a_limited_provider_shows_its_queue_and_overflows() -> None:
    registry, _ = make_registry()
    entry = registry.register(MockProvider(name="small"), RouteSettings(max_in_flight=1))
    assert entry.limit is not None
    assert await entry.limit.acquire(0.0) is Acquired.TAKEN  # the one slot
    assert await entry.limit.acquire(0.0) is Acquired.FULL  # no queue: turned away
    exp = parse(GatewayMetrics().render(registry.snapshots()))
    assert exp.value("leap_provider_overflows_total", provider="small") == 1
    assert exp.value("leap_provider_waiting", provider="small") == 0
    assert exp.value("leap_provider_concurrency_limit", provider="small") == 1
    assert exp.value("leap_provider_shed_total", provider="small") == 0
