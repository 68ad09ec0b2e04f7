"""Row 28: cross-site requests to a keyless gateway on this machine (the Quick start). A page on
another site posting text/plain, a page reaching the gateway under a name of its own (DNS
rebinding), and CORS for the origins a deployment allows."""

from __future__ import annotations

import contextlib
import functools
import html
import http.server
import mimetypes
import re
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from leapasgi.config import ServerConfig
from tests.asgi.live_server import live_gateway
from tests.fake_upstream import Behavior, text_stream
from tests.reliability.harness import Figures, reliability_gateway

CHAT = "/v1/chat/completions"
BODY: dict[str, Any] = {"model": "m1", "messages": [{"role": "user", "content": "hi"}]}
APP = "https://app.example"
# What the openai JS SDK asks for in its preflight.
SDK_HEADERS = "authorization,content-type,x-stainless-os,x-stainless-lang,x-stainless-retry-count"


BROWSER = Path(__file__).resolve().parents[1] / "browser"
# The page's site: a name of its own, which Chromium maps to 127.0.0.1 (no DNS).
PAGE_HOST = "app.example"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    f"--host-resolver-rules=MAP {PAGE_HOST} 127.0.0.1",
    "--virtual-time-budget=20000",
]


@contextlib.contextmanager
def _page_site() -> Iterator[int]:
    """tests/browser served on 127.0.0.1 (the page and the openai JS SDK); yields the port."""
    if not (BROWSER / "node_modules" / "openai").is_dir():
        raise AssertionError("the openai JS SDK is missing: run tests/provision.sh")
    mimetypes.add_type("text/javascript", ".mjs")

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            return

    handler = functools.partial(Quiet, directory=str(BROWSER))
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler) as site:
        thread = threading.Thread(target=site.serve_forever, daemon=True)
        thread.start()
        try:
            yield site.server_address[1]
        finally:
            site.shutdown()


def _run_page(page_port: int, gateway_port: int, profile: Path) -> str:
    """What the page reports after using the gateway from headless Chromium."""
    chromium = shutil.which("chromium")
    if chromium is None:
        raise AssertionError("chromium is missing: run tests/provision.sh")
    url = f"http://{PAGE_HOST}:{page_port}/page.html?gateway=http://127.0.0.1:{gateway_port}/v1"
    command = [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--dump-dom", url]
    done = subprocess.run(command, capture_output=True, text=True, timeout=90, check=False)
    found = re.search(r'<pre id="result">(.*?)</pre>', done.stdout, re.S)
    assert found is not None, done.stderr[-2000:]
    return html.unescape(found.group(1))


def test_row28_the_openai_js_sdk_in_chromium(tmp_path: Path, figures: Figures) -> None:
    with _page_site() as page_port:
        origin = f"http://{PAGE_HOST}:{page_port}"
        outcomes: dict[str, str] = {}
        for name, allowed in (("not allowed", []), ("allowed", [origin])):
            server = ServerConfig(allowed_origins=allowed)
            with live_gateway(server=server, loop="uvloop") as live:
                outcomes[name] = _run_page(page_port, live.port, tmp_path / name)
                served = len(live.mock().requests)
            outcomes[name] += f" ({served} requests reached the provider)"
    figures.record(
        "28",
        "the openai JS SDK on another site, in headless Chromium: not allowed; allowed",
        "; ".join(f"{name}: {text}" for name, text in outcomes.items()),
        passed=outcomes["allowed"].startswith("OK|You said: hi|You said: hi")
        and outcomes["not allowed"].startswith("ERROR|"),
    )
    assert outcomes["not allowed"].startswith("ERROR|APIConnectionError")  # refused, blocked
    assert outcomes["not allowed"].endswith("(0 requests reached the provider)")
    assert outcomes["allowed"] == "OK|You said: hi|You said: hi (2 requests reached the provider)"


def _calls(live: Any) -> int:
    return sum(len(fake.chat_requests) for fake in live.upstreams)


def test_row28_foreign_sites_cannot_use_a_keyless_gateway(figures: Figures) -> None:
    with (
        reliability_gateway() as live,
        httpx.Client(base_url=f"http://127.0.0.1:{live.port}", timeout=10.0) as http,
    ):
        plain = {"Content-Type": "text/plain", "Origin": "http://evil.example"}
        cross_site = http.post(
            CHAT, content=httpx.Request("POST", "/", json=BODY).content, headers=plain
        )
        rebound = http.post(CHAT, json=BODY, headers={"Host": "evil.example:8000"})
        rebound_get = http.get("/v1/models", headers={"Host": "evil.example:8000"})
        rebound_mcp = http.post("/mcp", json={}, headers={"Host": "evil.example:8000"})
        calls_refused = _calls(live)
        own_page = http.post(CHAT, json=BODY, headers={"Origin": f"http://127.0.0.1:{live.port}"})
        local_page = http.post(CHAT, json=BODY, headers={"Origin": "http://localhost:3000"})
        sdk = http.post(CHAT, json=BODY)  # no Origin: not a browser
    figures.record(
        "28",
        "text/plain POST from a foreign Origin; POST and GET with a foreign Host: statuses",
        f"{cross_site.status_code}, {rebound.status_code}, {rebound_get.status_code}",
        passed=(cross_site.status_code, rebound.status_code, rebound_get.status_code)
        == (403, 421, 421),
    )
    figures.record("28", "upstream calls they made", calls_refused, passed=calls_refused == 0)
    figures.record(
        "28",
        "the page's own site, a loopback page, an SDK without Origin: statuses",
        f"{own_page.status_code}, {local_page.status_code}, {sdk.status_code}",
        passed=own_page.status_code == local_page.status_code == sdk.status_code == 200,
    )
    assert cross_site.status_code == 403
    assert cross_site.json()["error"]["code"] == "origin_not_allowed"
    assert (rebound.status_code, rebound_get.status_code, rebound_mcp.status_code) == (
        421,
        421,
        421,
    )
    assert rebound.json()["error"]["code"] == "invalid_host"
    assert calls_refused == 0
    assert own_page.status_code == local_page.status_code == sdk.status_code == 200
    assert "access-control-allow-origin" not in own_page.headers  # no CORS unless configured


def test_row28_cors_for_the_origins_a_deployment_allows(figures: Figures) -> None:
    server = ServerConfig(allowed_origins=[APP])
    with (
        reliability_gateway(server=server) as live,
        httpx.Client(base_url=f"http://127.0.0.1:{live.port}", timeout=10.0) as http,
    ):
        for fake in live.upstreams:
            fake.default = Behavior(events=text_stream(["hi"]))
        preflight = http.options(
            CHAT,
            headers={
                "Origin": APP,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": SDK_HEADERS,
            },
        )
        streamed = http.post(CHAT, json={**BODY, "stream": True}, headers={"Origin": APP})
        models = http.get("/v1/models", headers={"Origin": APP})
        other = http.options(
            CHAT,
            headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
        )
        unconfigured = http.options(CHAT)  # no preflight: a plain OPTIONS
    allowed = preflight.headers.get("access-control-allow-headers", "")
    figures.record(
        "28",
        "allowed origin: preflight status, then the stream's and /v1/models' CORS origin",
        f"{preflight.status_code}, {streamed.headers.get('access-control-allow-origin')}, "
        f"{models.headers.get('access-control-allow-origin')}",
        passed=preflight.status_code == 204
        and streamed.headers.get("access-control-allow-origin") == APP,
    )
    figures.record(
        "28",
        "another origin's preflight: status",
        other.status_code,
        passed=other.status_code == 403,
    )
    assert preflight.status_code == 204
    assert preflight.headers["access-control-allow-origin"] == APP
    assert "POST" in preflight.headers["access-control-allow-methods"]
    assert allowed == SDK_HEADERS
    assert streamed.status_code == 200
    assert streamed.headers["content-type"].startswith("text/event-stream")
    assert streamed.headers["access-control-allow-origin"] == APP
    assert "x-request-id" in streamed.headers["access-control-expose-headers"]
    assert models.headers["access-control-allow-origin"] == APP
    assert other.status_code == 403
    assert unconfigured.status_code == 405
