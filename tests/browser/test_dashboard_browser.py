"""The dashboard in a real headless Chromium (Debian's ``chromium``), driven over the DevTools
protocol with the ``websockets`` client the gateway already depends on: it loads with no
console errors, shows the providers, its plots move under load, and putting a provider in
maintenance from the keyboard shows at once."""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
from pydantic import SecretStr
from websockets.sync.client import ClientConnection, connect

from leapasgi.config import ServerConfig
from tests.asgi.live_server import live_gateway

CHAT = "/v1/chat/completions"
BODY: dict[str, Any] = {"model": "mock-chat", "messages": [{"role": "user", "content": "hi"}]}
KEY = "admin-secret"
WAIT = 15.0
# Tries at showing a status change before the next snapshot (one may land in between).
ATTEMPTS = 3
# Set to a path to save a screenshot of the loaded dashboard (the README's).
SCREENSHOT = os.environ.get("LEAP_DASHBOARD_SCREENSHOT")


class Page:
    """One Chromium tab over the DevTools protocol; keeps every event it hears."""

    def __init__(self, socket: ClientConnection) -> None:
        self.socket = socket
        self.ids = itertools.count(1)
        self.events: list[dict[str, Any]] = []

    def send(self, method: str, **params: Any) -> dict[str, Any]:
        call = next(self.ids)
        self.socket.send(json.dumps({"id": call, "method": method, "params": params}))
        while True:
            message = json.loads(self.socket.recv(timeout=WAIT))
            if message.get("id") == call:
                assert "error" not in message, message
                return dict(message.get("result", {}))
            self.events.append(message)

    def eval(self, expression: str) -> Any:
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True)
        assert "exceptionDetails" not in result, result
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = WAIT) -> Any:
        until = time.monotonic() + timeout
        while time.monotonic() < until:
            value = self.eval(expression)
            if value:
                return value
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {expression}")

    def key(self, key: str, code: int) -> None:
        for kind in ("keyDown", "keyUp"):
            self.send(
                "Input.dispatchKeyEvent",
                type=kind,
                key=key,
                code=key,
                windowsVirtualKeyCode=code,
                **({"text": "\r"} if kind == "keyDown" and key == "Enter" else {}),
            )

    def errors(self) -> list[Any]:
        """Console errors, uncaught exceptions and failed loads the page reported."""
        found: list[Any] = []
        for event in self.events:
            method, params = event.get("method"), event.get("params", {})
            if method == "Runtime.consoleAPICalled" and params["type"] in ("error", "assert"):
                found.append(params["args"])
            elif method == "Runtime.exceptionThrown":
                found.append(params["exceptionDetails"])
            elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
                found.append(params["entry"])
        return found


@contextlib.contextmanager
def chromium(profile: Path) -> Iterator[Page]:
    """A headless Chromium with one blank tab."""
    binary = shutil.which("chromium")
    if binary is None:
        raise AssertionError("chromium is missing: run tests/provision.sh")
    command = [
        binary,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--remote-debugging-port=0",
        "--window-size=1400,900",
        f"--user-data-dir={profile}",
        "about:blank",
    ]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        port_file = profile / "DevToolsActivePort"
        until = time.monotonic() + WAIT
        while not port_file.exists() or not port_file.read_text().strip():
            assert time.monotonic() < until, "Chromium did not start"
            time.sleep(0.05)
        port = port_file.read_text().split()[0]
        targets = httpx.get(f"http://127.0.0.1:{port}/json/list", timeout=WAIT).json()
        tab = next(t for t in targets if t["type"] == "page")
        with connect(tab["webSocketDebuggerUrl"], max_size=None) as socket:
            page = Page(socket)
            for domain in ("Runtime", "Log", "Page"):
                page.send(f"{domain}.enable")
            yield page
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


RATE_POINTS = (
    "document.querySelector('tr[data-provider=\"mock\"] svg.rate polyline')"
    "?.getAttribute('points') || ''"
)


def test_the_dashboard_in_chromium(tmp_path: Path) -> None:
    server = ServerConfig(dashboard=True, admin_key=SecretStr(KEY))
    with (
        live_gateway(server=server) as live,
        httpx.Client(base_url=f"http://127.0.0.1:{live.port}", timeout=10.0) as http,
        chromium(tmp_path / "profile") as page,
    ):
        page.send("Page.navigate", url=f"http://127.0.0.1:{live.port}/dashboard")
        page.wait_for(
            "document.readyState === 'complete' && !document.querySelector('#login').hidden"
        )
        assert page.eval("document.activeElement.id") == "key"  # asked for the key, focused
        page.send("Input.insertText", text=KEY)
        page.key("Enter", 13)
        page.wait_for("document.querySelector('tr[data-provider=\"mock\"]') !== null")
        assert "live" in page.eval("document.querySelector('#state').textContent")
        assert page.eval("getComputedStyle(document.querySelector('#login')).display") == "none"
        status = "document.querySelector('tr[data-provider=\"mock\"]').dataset.status"
        assert page.eval(status) == "active"
        before = page.wait_for(RATE_POINTS)

        stop = threading.Event()

        def load() -> None:
            with httpx.Client(base_url=http.base_url, timeout=10.0) as client:
                while not stop.is_set():
                    client.post(CHAT, json=BODY)

        loader = threading.Thread(target=load)
        loader.start()
        try:
            page.wait_for(f"({RATE_POINTS}) !== {json.dumps(before)}")
            page.wait_for("document.querySelectorAll('#requests tbody tr').length > 0")
        finally:
            stop.set()
            loader.join()
        trail = page.eval("document.querySelector('#requests tbody tr .trail').textContent")
        assert trail.startswith("mock/mock-chat: ok")
        assert "You said" not in page.eval("document.body.innerText")  # no content

        if SCREENSHOT:
            shot = page.send("Page.captureScreenshot", format="png")
            Path(SCREENSHOT).write_bytes(base64.b64decode(shot["data"]))

        # At once: drawn from the action's answer, before the next snapshot is. A snapshot
        # may land between the key press and the answer; then it is tried again.
        drawn = "document.querySelector('#board').dataset.snapshots"
        button = "document.querySelector('tr[data-provider=\"mock\"] button')"
        wanted = "active"
        for _ in range(ATTEMPTS):
            wanted = "maintenance" if wanted == "active" else "active"
            page.eval(f"{button}.focus()")
            before_press = page.eval(drawn)
            page.key("Enter", 13)
            page.wait_for(f"{status} === '{wanted}'")
            if page.eval(drawn) == before_press:
                break
        at_once = page.eval(drawn) == before_press
        assert live.gateway.manager.registry.snapshot("mock").status == wanted
        announced = page.eval("document.querySelector('#announce').textContent")
        assert announced == f"mock is now {wanted}."
        back = "Put mock back in service" if wanted == "maintenance" else "Put mock in maintenance"
        assert page.eval("document.activeElement.textContent") == back
        errors = page.errors()
    assert errors == []
    assert at_once
