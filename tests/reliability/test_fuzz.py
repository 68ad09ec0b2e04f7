"""Row 23, fuzzing: schemathesis against the gateway's own /openapi.json, and hypothesis on the
parsers that read untrusted input (SSE decoder, Retry-After, config loader, key redactor).

Schemathesis runs in process over ASGI against a gateway with the mock provider, keys and
[oauth] on (its protected resource metadata is documented only then), 200 examples per
operation, positive and negative. Every response must be below 500, every error must carry the
OpenAI error body, and the gateway must log no unhandled exception.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import string
import time
import urllib.parse
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from pydantic import SecretStr
from schemathesis.python import asgi as schemathesis_asgi
from schemathesis.specs.openapi import checks as openapi_checks

from leapasgi import Gateway
from leapasgi.config import (
    GatewayConfig,
    HealthConfig,
    OAuthConfig,
    ServerConfig,
    load_config,
    parse_config,
)
from leapasgi.exceptions import ConfigurationError
from leapasgi.redact import REDACTED, Redactor
from leapasgi.retry import parse_retry_after
from leapasgi.sse import SSEDecoder, SSEEvent
from tests.asgi.live_server import mock_config
from tests.reliability.harness import Figures

ROW = "23"
KEY = "sk-fuzz-0123456789abcdef"
EXAMPLES = 200
MODEL = "mock-chat"
SPARE = "spare"
# The document's operations but GET /openapi.json, which schemathesis reads and never fuzzes;
# checked so that a route cannot silently drop out.
OPERATIONS = 24
# Operations with no input at all (no parameter, body or key: the probes and the protected
# resource's metadata): hypothesis runs out of distinct examples at once.
NO_INPUT = frozenset(
    {"GET /health", "GET /health/ready", "GET /.well-known/oauth-protected-resource"}
)
PROPERTY_EXAMPLES = 200
# The same examples on every run, so CI is repeatable; LEAP_FUZZ_RANDOM=1 explores new ones.
DERANDOMIZE = os.environ.get("LEAP_FUZZ_RANDOM") != "1"

# Tallies of the schemathesis run, by operation, read by the summary test that follows it.
_cases: Counter[str] = Counter()
_problems: list[str] = []
_started: list[float] = []
# The virtual key the valid cases of /v1/keys/{key_id} name, made by the first one.
_key_ids: list[str] = []


class _Unhandled(logging.Handler):
    """Collects log records that carry an exception: the gateway's unhandled errors."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info:
            self.records.append(record)


_unhandled = _Unhandled()
logging.getLogger("leapasgi").addHandler(_unhandled)


def _fuzzed_gateway() -> Gateway:
    config = GatewayConfig(
        providers=[mock_config(), mock_config(SPARE)],
        health=HealthConfig(interval=0),
        # One key for the API and the admin routes, so every operation can be reached.
        server=ServerConfig(api_keys=[SecretStr(KEY)], admin_key=SecretStr(KEY)),
        # Never asked: the fuzzer's key is not an access token.
        oauth=OAuthConfig(issuer="https://issuer.example", audience=["leapasgi"]),
    )
    return Gateway(config=config)


# Loaded at import: schemathesis's lazy fixture loader does not work with pytest 9 (it reads
# the node's private ``_nodeid``). The gateway starts in schemathesis's ASGI thread here, and
# stops in test_schemathesis_totals (or at exit when that test is not selected).
schema = schemathesis.openapi.from_asgi(
    "/openapi.json", _fuzzed_gateway().app, headers={"Authorization": f"Bearer {KEY}"}
)


@schema.parametrize()
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    derandomize=DERANDOMIZE,
    suppress_health_check=list(HealthCheck),
)
def test_schemathesis_finds_no_server_error_and_no_unshaped_error(case: Any) -> None:
    if not _cases:
        _started.append(time.perf_counter())
    _steer(case)
    _cases[case.operation.label] += 1
    try:
        response = case.call(headers=_auth(case))
        case.validate_response(
            response,
            # Arbitrary extra fields, names no tool has, unknown models: the schema accepts
            # them and the gateway refuses them with a 4xx, which is right.
            excluded_checks=[openapi_checks.positive_data_acceptance],
        )
        _check_error_body(response, anthropic=_anthropic(case))
    except BaseException as exc:
        _problems.append(f"{case.operation.label}: {type(exc).__name__}: {str(exc)[:500]}")
        raise


def _auth(case: Any) -> dict[str, str]:
    """The key, but for a negative case that leaves out the key its operation asks for."""
    if case.operation.schema.is_security_param_negated(case):
        return {}
    return {"Authorization": f"Bearer {KEY}"}


def _steer(case: Any) -> None:
    """Most valid cases name what exists (the mock's model, the spare provider), so that the
    answers past the lookups get fuzzed too; the rest keep their random names."""
    if case.meta is not None and case.meta.generation.mode.is_negative:
        return
    if len(str(case.body)) % 4 == 0:
        return
    body, path = case.body, case.path_parameters
    if isinstance(body, dict) and ("messages" in body or "input" in body):
        body["model"] = MODEL
    if path and "model_id" in path:
        path["model_id"] = MODEL
    if path and "name" in path:
        # Not "mock": taking it out of service would fail the chat requests that follow.
        path["name"] = SPARE
    if path and "key_id" in path:
        # Revoked or changed by the cases before, the key is still there to be shown.
        path["key_id"] = _key_id(case)


def _key_id(case: Any) -> str:
    """A virtual key's id, the key made the first time one is asked for."""
    if not _key_ids:
        make = case.operation.schema["/v1/keys"]["POST"].Case(body={"tenant": "fuzz"})
        made = make.call(headers={"Authorization": f"Bearer {KEY}"})
        assert made.status_code == 201, made.text
        _key_ids.append(made.json()["id"])
    return _key_ids[0]


def _anthropic(case: Any) -> bool:
    """Whether the gateway answers this case in Anthropic's shape: the Messages routes, and
    the model routes when the request names an ``anthropic-version``."""
    if case.path.startswith("/v1/messages"):
        return True
    headers = {k.lower() for k in (case.headers or {})}
    return case.path.startswith("/v1/models") and "anthropic-version" in headers


def _check_error_body(response: Any, *, anthropic: bool = False) -> None:
    if response.status_code >= 500:
        raise AssertionError(f"server error {response.status_code}: {response.text[:300]}")
    if response.status_code < 400:
        return
    body = response.json()
    if anthropic:
        assert isinstance(body, dict), f"not an Anthropic error body: {response.text[:300]}"
        assert body.get("type") == "error", f"not an Anthropic error body: {response.text[:300]}"
        assert isinstance(body["error"].get("type"), str)
        assert isinstance(body["error"].get("message"), str)
        return
    error = body.get("error") if isinstance(body, dict) else None
    assert isinstance(error, dict), f"not an OpenAI error body: {response.text[:300]}"
    assert isinstance(error.get("message"), str)
    assert isinstance(error.get("type"), str)
    assert {"param", "code"} <= error.keys()


def test_schemathesis_totals(figures: Figures) -> None:
    schemathesis_asgi.shutdown_lifespans()
    logging.getLogger("leapasgi").removeHandler(_unhandled)
    if not _cases:
        pytest.skip("the schemathesis test did not run (deselected)")
    seconds = time.perf_counter() - _started[0]
    unhandled = [f"{r.name}: {r.getMessage()}" for r in _unhandled.records]
    fewest = min(n for label, n in _cases.items() if label not in NO_INPUT)
    figures.record(
        ROW,
        "schemathesis operations",
        len(_cases),
        passed=len(_cases) == OPERATIONS,
        target=f"every operation of /openapi.json ({OPERATIONS})",
    )
    figures.record(
        ROW,
        "schemathesis cases (fewest for one operation)",
        f"{sum(_cases.values())} ({fewest}) in {seconds:.0f} s",
        passed=fewest >= EXAMPLES,
        target=f">= {EXAMPLES} per operation that takes input",
    )
    figures.record(ROW, "schemathesis failures", len(_problems), passed=not _problems, target="0")
    figures.record(
        ROW, "gateway unhandled exceptions", len(unhandled), passed=not unhandled, target="0"
    )
    assert not _problems, _problems[:5]
    assert not unhandled, unhandled[:5]
    assert len(_cases) == OPERATIONS, sorted(_cases)
    assert fewest >= EXAMPLES, _cases


# Hypothesis on the parsers. Each test records its examples and failures (0 when it passes).

_PROPERTY = settings(
    max_examples=PROPERTY_EXAMPLES, deadline=None, database=None, derandomize=DERANDOMIZE
)


def _record(figures: Figures, name: str, examples: int) -> None:
    figures.record(ROW, f"hypothesis {name}: examples, failures", f"{examples}, 0", passed=True)


def _decode(stream: bytes, cuts: list[int]) -> list[SSEEvent]:
    decoder = SSEDecoder()
    events: list[SSEEvent] = []
    start = 0
    for cut in sorted({c % (len(stream) + 1) for c in cuts}):
        events += decoder.feed(stream[start:cut])
        start = cut
    events += decoder.feed(stream[start:])
    return events + decoder.close()


_SSE_PIECES = st.sampled_from(
    [b"data: ", b"data:", b"event: x", b"id: 1", b"retry: 5", b": c", b"\n", b"\r\n", b"\r"]
)
_SSE_BYTES = st.lists(st.one_of(_SSE_PIECES, st.binary(max_size=12)), max_size=30).map(b"".join)


def test_sse_decoder_takes_any_bytes_split_anywhere(figures: Figures) -> None:
    seen = 0

    @_PROPERTY
    @given(stream=_SSE_BYTES, cuts=st.lists(st.integers(min_value=0), max_size=8))
    def check(stream: bytes, cuts: list[int]) -> None:
        nonlocal seen
        seen += 1
        split = _decode(stream, cuts)
        # However the bytes arrive, the same events come out; nothing raises.
        assert split == _decode(stream, [])
        assert all(isinstance(e.data, str) and e.data for e in split)

    check()
    _record(figures, "SSE decoder", seen)


def test_sse_decoder_round_trips_data_lines(figures: Figures) -> None:
    seen = 0
    text = st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\r\n"), min_size=1)

    @_PROPERTY
    @given(payloads=st.lists(text, min_size=1, max_size=5), cuts=st.lists(st.integers(0)))
    def check(payloads: list[str], cuts: list[int]) -> None:
        nonlocal seen
        seen += 1
        stream = b"".join(b"data: " + p.encode() + b"\n\n" for p in payloads)
        assert [e.data for e in _decode(stream, cuts)] == payloads

    check()
    _record(figures, "SSE decoder round trip", seen)


_HEADER_TEXT = st.one_of(
    st.text(max_size=40),
    st.from_regex(r"-?[0-9]{0,12}(\.[0-9]{0,6})?([eE][+-]?[0-9]{1,4})?", fullmatch=True),
    st.sampled_from(["inf", "nan", "-0", "1e309", "Wed, 21 Oct 2015 07:28:00 GMT", "9999"]),
)


def test_retry_after_parser_never_raises_and_never_goes_negative(figures: Figures) -> None:
    seen = 0

    @_PROPERTY
    @given(
        seconds=st.one_of(st.none(), _HEADER_TEXT),
        millis=st.one_of(st.none(), _HEADER_TEXT),
        now=st.floats(min_value=0, max_value=4e9),
    )
    def check(seconds: str | None, millis: str | None, now: float) -> None:
        nonlocal seen
        seen += 1
        headers = {}
        if seconds is not None:
            headers["Retry-After"] = seconds
        if millis is not None:
            headers["retry-after-ms"] = millis
        value = parse_retry_after(headers, now=now)
        assert value is None or (value >= 0 and value == value and value != float("inf"))

    check()
    _record(figures, "Retry-After parser", seen)


def _words(text: str) -> tuple[str, ...]:
    return tuple(text.split())


_PROVIDER_KEYS = _words(
    "name type base_url api_key api_key_env api_key_file models timeout preset connect_timeout "
    "max_retries "
    "weight priority max_connections headers optional reply chunks chunk_delay x"
)
_SECTIONS = {
    "routing": _words("strategy max_attempts request_timeout first_token_timeout x"),
    "routing.aliases": _words("fast m1 x"),
    "health": _words("interval timeout failure_threshold base_ejection max_ejection"),
    "server": _words("host port api_keys admin_key max_body_bytes mcp x"),
}
_TOML_VALUES = st.one_of(
    st.integers(-5, 70000).map(str),
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
    st.sampled_from(
        _words(
            '"mock" "openai_compatible" "http://127.0.0.1:1/v1" "file:///etc" "groq" true [] '
            '"round_robin" ["m1","p/m2"] {a="b"} nan inf 0 "${NOPE}" "${NOPE:-x}" "$${x}" '
            '"${NOPE:-}" "http://[::1" "" "key.txt" "."'
        )
    ),
    # A TOML basic string: JSON escapes control characters the way TOML does.
    st.text(st.characters(exclude_categories=["Cs"]), max_size=12).map(
        lambda text: json.dumps(text, ensure_ascii=False)
    ),
)


def _table(keys: tuple[str, ...]) -> st.SearchStrategy[dict[str, str]]:
    return st.dictionaries(st.sampled_from(keys), _TOML_VALUES, max_size=6)


def _lines(table: dict[str, str]) -> str:
    return "".join(f"{key} = {value}\n" for key, value in table.items())


@st.composite
def _toml_documents(draw: st.DrawFn) -> str:
    """Mostly well-formed TOML with the config's own keys and odd values; now and then not."""
    parts = []
    for i in range(draw(st.integers(0, 3))):
        provider = draw(_table(_PROVIDER_KEYS))
        if draw(st.integers(0, 4)):
            # Usually a valid name, so that the other fields get checked too.
            provider.setdefault("name", f'"p{i}"')
        parts.append("[[providers]]\n" + _lines(provider))
    for name, keys in _SECTIONS.items():
        if draw(st.booleans()):
            parts.append(f"[{name}]\n" + _lines(draw(_table(keys))))
    if draw(st.integers(0, 9)) == 0:
        parts.insert(draw(st.integers(0, len(parts))), draw(st.text(max_size=30)))
    return "\n".join(parts)


def test_config_loader_raises_only_configuration_error(figures: Figures, tmp_path: Path) -> None:
    seen = 0
    path = tmp_path / "gateway.toml"

    @_PROPERTY
    @given(text=_toml_documents())
    def check(text: str) -> None:
        nonlocal seen
        seen += 1
        path.write_text(text, encoding="utf-8")
        loads: tuple[Callable[[], GatewayConfig], ...] = (
            lambda: parse_config(text, env={}),
            lambda: load_config(path, env={}),
        )
        for load in loads:
            try:
                config = load()
            except ConfigurationError:
                continue
            assert isinstance(config, GatewayConfig)

    check()
    _record(figures, "config loader", seen)


_SECRET = st.text(
    alphabet=string.ascii_letters + string.digits + "-_.~+/=:@%&?# ", min_size=6, max_size=48
)


def _needles(secret: str, offset: int) -> list[str]:
    """What must not survive: the key raw, URL-encoded, and the base64 characters made only
    of its bits when it sits ``offset`` bytes into an encoded string."""
    raw = secret.encode()
    encoded = base64.b64encode(b"\0" * offset + raw).decode()
    middle = encoded[(8 * offset + 5) // 6 : 8 * (offset + len(raw)) // 6]
    found = [secret, urllib.parse.quote(secret, safe=""), urllib.parse.quote_plus(secret), middle]
    return [n for n in found if len(n) >= 6]


def test_redactor_removes_every_variant_of_every_key(figures: Figures) -> None:
    seen = 0

    @_PROPERTY
    @given(
        secrets=st.lists(_SECRET, min_size=1, max_size=3),
        around=st.tuples(st.text(max_size=20), st.text(max_size=20)),
        prefix=st.binary(max_size=5),
    )
    def check(secrets: list[str], around: tuple[str, str], prefix: bytes) -> None:
        nonlocal seen
        # A key spelling part of the marker itself would be "found" in every redacted text.
        assume(all(secret not in REDACTED for secret in secrets))
        seen += 1
        redact = Redactor(secrets)
        for secret in secrets:
            embedded = base64.b64encode(prefix + secret.encode() + b"tail").decode()
            shown = [*_needles(secret, 0)[:3], base64.b64encode(secret.encode()).decode()]
            for text in (*shown, embedded):
                redacted = redact(around[0] + text + around[1])
                for needle in _needles(secret, 0) + _needles(secret, len(prefix)):
                    assert needle not in redacted

    check()
    _record(figures, "key redactor", seen)
