"""Render RELIABILITY.md from the figures a run of the reliability suite recorded.

LEAP_FIGURES=figures.json python -m pytest tests/reliability
python -m tests.reliability.report figures.json [--out RELIABILITY.md]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]

# Row -> (scenario, pass figure), as the issue states them.
ROWS: dict[str, tuple[str, str]] = {
    "1": (
        "U1 returns 500 for 10 s under 100-200 req/s",
        "0 client-visible errors; U1 gets <= 10 requests in the fault window; "
        "upstream attempts <= 1.2x client requests",
    ),
    "2": (
        "U1 fails, then heals",
        "ejections grow (base x n, capped); U1 serves again when its ejection ends, and stays in",
    ),
    "3": (
        "all upstreams 503",
        "every client gets an OpenAI-shaped 503 with Retry-After within the deadline; "
        "attempts within the budget; never a hang",
    ),
    "4": (
        "every status, refused, reset, timeout",
        "retried / failed over exactly for connection errors, resets and timeouts before the "
        "first byte, 408, 409, 429, 5xx; exactly 1 upstream attempt for the others",
    ),
    "5": (
        "backoff",
        "with a fake clock and a seeded RNG, 10,000 delays per attempt stay within the window "
        "and the deadline",
    ),
    "6": (
        "429 with Retry-After as seconds, ms, HTTP date, garbage, 9999",
        "U1 gets 0 requests before the hint; others serve meanwhile with 0 errors; all 429 -> "
        "client gets 429 with the smallest hint",
    ),
    "7": ("U1 10x slower", "U1's share <= 5% after warm-up under least-latency; U1 still probed"),
    "8": ("U1 fails fast (503 in 1 ms)", "U1's share <= 5%; 0 client errors"),
    "9": (
        "more concurrent clients than a provider's limit",
        "the provider never sees more than its limit; overflow fails fast with 503 + "
        "Retry-After; local overflow never ejects a provider",
    ),
    "10": (
        "adaptive concurrency: an upstream with a capacity of 8 (latency grows with its queue) "
        "offered 64 concurrent clients for 30 s",
        "the limit converges between 6 and 16 within 10 s; the upstream's p99 stays under 2x "
        "its unloaded p99; shed requests fail within 10 ms",
    ),
    "11": (
        "hedged requests: U1 answers in 2 s for 10% of requests and 50 ms otherwise, hedge at "
        "300 ms, 100 req/s non-streaming",
        "p99 under 500 ms; extra upstream requests at most 12%; the losing attempt cancelled "
        "(the upstream sees the close within 100 ms)",
    ),
    "12": (
        "client disconnects (mid-stream, before the first token, non-streaming, mounted under "
        "BaseHTTPMiddleware)",
        "the upstream sees the close within 1 s in every variant; in-flight gauge back to 0",
    ),
    "13": (
        "upstream dies mid-stream: reset, no [DONE], stall, malformed line, error as first event",
        "before the first byte: invisible failover; after: 0 retries, 0 duplicated chunks, "
        "exactly one error event, and the openai SDK raises APIError",
    ),
    "14": (
        "timeouts: never-accepting listener, never-answering upstream, silence after 2 chunks, "
        "1 byte per 0.8 s",
        "each fires at its value +10%; the drip is stopped by the total deadline",
    ),
    "15": (
        "slow readers (1 KB/s) beside normal traffic",
        "RSS growth < 10 MB per slow stream; normal traffic's p99 barely moves",
    ),
    "16": (
        "two gateway processes sharing state through a real redis-server, over U1-U3: an "
        "ejection, an RPM limit, cached answers, identical misses at once, another tenant; Redis "
        "frozen (SIGSTOP 8 s) and killed under 20 req/s",
        "ejection seen by the other replica within 1 s; RPM 100 across both lets exactly 100 of "
        "160 through; cached plain and streamed answers served by the other replica; 30 "
        "identical misses make 1 upstream call; another tenant misses; 0 hung requests and 0 "
        "errors caused by the store; shared limits back within 5 s",
    ),
    "17": (
        "canary provider keys, upstreams echoing keys in 401 bodies, DEBUG logging",
        "0 occurrences, raw, URL-encoded or base64, in any response, log line, metric, repr, "
        "admin or MCP output",
    ),
    "18": (
        "canary prompts and completions",
        "0 occurrences in logs and metrics unless content logging is switched on",
    ),
    "19": (
        "every route with no, wrong and non-admin keys when auth is on",
        "100% 401/403 with OpenAI-shaped bodies; 0 upstream calls",
    ),
    "20": (
        "api_base/base_url in the body; bad config URLs; an upstream that redirects",
        "body fields rejected with 400 and never forwarded; bad config URLs refused at load; "
        "redirects not followed",
    ),
    "21": (
        "oversized bodies, deep JSON, huge arrays, CR/LF in headers, hop-by-hop and client "
        "Authorization headers",
        "413 before the body is read; 400 in < 50 ms without a crash; 0 5xx; upstream gets only "
        "allow-listed headers and the provider's own key",
    ),
    "22": (
        "MCP over HTTP: bad Origin, bad Host, no key, default bind",
        "403 / 421 or 403 / 401; listens on 127.0.0.1 by default",
    ),
    "23": (
        "fuzzing: schemathesis on /openapi.json; hypothesis on the SSE decoder, Retry-After "
        "parser, config loader and key redactor",
        "0 failures and 0 uncaught exceptions",
    ),
    "24": (
        "soak: steady 70% non-streaming, 30% streaming",
        "0 errors; RSS drift <= 10 MB after the first 10 s; fds and tasks back to baseline",
    ),
    "25": (
        "chaos: seeded random faults on U1-U3",
        "every request ends within its deadline + 1 s as a success or one well-formed error; "
        "0 duplicated or interleaved chunks; attempt counters equal what upstreams saw",
    ),
    "26": (
        "request heads that never end (8 KB header lines, one endless line, 500 headers) on "
        "leapasgi serve and leapmcp --http",
        "a 431 (or a close) and bounded memory on every way the gateway is served",
    ),
    "27": (
        "256 half-sent request heads with the open-file limit at 256; an idle keep-alive "
        "connection",
        "health probes still served; a head not complete in time is closed; idle keep-alive "
        "connections are closed",
    ),
    "28": (
        "a keyless gateway on loopback: text/plain POST from a foreign Origin, a foreign Host "
        "(DNS rebinding); a deployment's allowed origin",
        "foreign origins 403 and foreign Hosts 421 on every route, 0 upstream calls; the "
        "page's own site, loopback pages and non-browser clients pass; CORS (preflight and "
        "Access-Control-* on answers and streams) only for configured origins",
    ),
    "29": (
        "an upstream echoes its key where the old 500-byte cut fell on it, and in x-request-id",
        "the whole text is scrubbed before any cut; relayed headers are checked and scrubbed: "
        "0 characters of the key reach the client",
    ),
    "30": (
        "a password in a provider's base_url (http://user:pass@host/v1), echoed by the upstream",
        "user info is a secret like a key: 0 occurrences, raw or as Basic base64, in answers, "
        "admin output or reprs",
    ),
    "31": (
        "leapmcp at --log-level debug, over stdio and Streamable HTTP",
        "0 prompts or completions in the log at any level, from any logger",
    ),
    "32": (
        "model names with a newline, escape codes, 200 KB, a Unicode line separator",
        "no access log line can be forged: control characters escaped, fields capped",
    ),
    "33": (
        "an MCP reply quoting a provider's api-version, organization and project values",
        "only real secrets are scrubbed: the reply comes back unchanged",
    ),
    "34": (
        "decompression bomb (0.2 MB gzip -> 200 MB); a stream past its provider's cap",
        "every upstream body is bounded after decompression: 502 (or failover), memory "
        "bounded; a stream past the cap ends with one in-band error",
    ),
    "35": (
        "an SSE line without a newline (20 MB, 0.2 MB gzipped)",
        "decoded in linear time, one event bounded: an error for that stream only; other "
        "requests are not held up",
    ),
    "36": (
        "non-UTF-8 bytes in an upstream's X-Request-Id",
        "the answer is never lost: a completed answer is 200, a 429 keeps its Retry-After",
    ),
    "37": (
        "a stream cut after its finish chunk, before the usage chunk and [DONE]",
        "an interruption (one in-band error), never a clean end",
    ),
    "38": (
        "a 200 with choices [] (JSON and streaming)",
        "treated as the upstream's failure: the next provider serves",
    ),
    "39": (
        "a base URL whose name resolves to a link-local or metadata address",
        "refused on the address actually connected to, not only the spelling; loopback and "
        "LAN names still work",
    ),
    "40": (
        "100 requests with 10 KB made-up model names under u1/",
        "only listed models become labels (capped length): /metrics does not grow",
    ),
    "41": (
        "an API key over /mcp and over HTTP: provider listing, totals, health checks",
        "one rule for both: the admin key may, an API key may not (403 over HTTP, a tool "
        "error over MCP); both may chat and list models",
    ),
    "42": (
        "LeapMiddleware under a root_path",
        "the gateway's requests reach the gateway, never the host app",
    ),
    "43": (
        "a path with a trailing slash and a foreign Host header",
        "no redirect built from the Host header: a plain 404",
    ),
    "44": (
        "budgets over two replicas sharing Redis: 100 requests at once on a budget for 10; "
        "streams cancelled after their first chunk; a key revoked; a replica killed with "
        "requests in flight",
        "at most 10 + 1 served, the rest 429 budget_exceeded; spend <= budget + one answer; "
        "0 phantom 429s after cancellations; the revoked key refused by the other replica "
        "within 1 s; a dead replica's reservations lapse with their lease",
    ),
    "45": (
        "OAuth2 access tokens from a local issuer: valid, expired, not yet valid, wrong "
        "audience, wrong issuer, alg=none, HMAC with the public key, unknown kid, tampered",
        "valid tokens accepted; every bad one refused with 401 and WWW-Authenticate naming "
        "the resource metadata; 0 upstream calls for refused tokens",
    ),
    "46": (
        "interactive requests beside a running batch: U1 answers in 50 +- 10 ms, 8 in flight "
        "at most; 200 interactive requests at 50 req/s from 4 clients, alone, then beside a "
        "1,200-line batch with 64 lines in flight",
        "interactive p95 beside the batch <= 1.5x its p95 alone + 25 ms; 0 interactive "
        "errors; the batch completes, every line answered once",
    ),
}


def _value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def render(payload: dict[str, Any]) -> str:
    """The Markdown of RELIABILITY.md for one run's figures."""
    rows: dict[str, list[dict[str, Any]]] = payload.get("rows", {})
    lines = [
        "# Reliability and security scorecard",
        "",
        f"Measured {payload.get('date', '?')} on {payload.get('machine', '?')}, by",
        "`python -m pytest tests/reliability` (which writes `build/reliability-figures.json`)",
        "and `python -m tests.reliability.report`. Every figure is from that run.",
        "",
        "| # | scenario | pass figure | measured | result |",
        "|---|---|---|---|---|",
    ]
    for row, (scenario, target) in ROWS.items():
        found = rows.get(row, [])
        measured = "<br>".join(f"{f['name']}: {_value(f['value'])}" for f in found) or "not run"
        result = "pass" if all(f["passed"] for f in found) else "FAIL"
        if not found:
            result = "not run"
        lines.append(f"| {row} | {scenario} | {target} | {measured} | {result} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "figures", type=Path, nargs="?", default=ROOT / "build" / "reliability-figures.json"
    )
    parser.add_argument("--out", type=Path, help="default: RELIABILITY.md; - prints it")
    args = parser.parse_args()
    payload = json.loads(args.figures.read_text())
    text = render(payload)
    if args.out is not None and str(args.out) == "-":
        print(text, end="")
        return
    out = args.out or ROOT / "RELIABILITY.md"
    out.write_text(text)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
