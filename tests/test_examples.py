from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
BODY = {"model": "default", "messages": [{"role": "user", "content": "hi"}]}


def clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
    env.pop("LEAP_PRESET", None)
    return env


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until_up(url: str, process: subprocess.Popen[str]) -> None:
    for _ in range(200):
        if process.poll() is not None:
            raise AssertionError(f"server exited: {process.communicate()}")
        try:
            if httpx.get(url, timeout=0.5).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.05)
    raise AssertionError("server did not come up")


@pytest.fixture
def served() -> Iterator[tuple[str, subprocess.Popen[str]]]:
    yield from serve(EXAMPLES / "gateway.toml")


def serve(config: Path) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    port = free_port()
    command = [sys.executable, "-m", "leapasgi", "serve", "--config"]
    command += [str(config), "--port", str(port)]
    process = subprocess.Popen(
        command, env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        wait_until_up(f"http://127.0.0.1:{port}/health", process)
        yield f"http://127.0.0.1:{port}", process
    finally:
        if process.poll() is None:
            process.terminate()
            process.wait(timeout=10)


def test_the_quickstart_answers_through_the_mock_provider_without_keys() -> None:
    out = subprocess.run(
        [sys.executable, str(EXAMPLES / "quickstart.py")],
        capture_output=True,
        text=True,
        check=True,
        env=clean_env(),
        timeout=60,
    )
    assert "chat: You said: What is an LLM gateway?" in out.stdout
    assert "stream: You said: Stream me a short answer." in out.stdout
    assert "tool call: get_weather({'city':" in out.stdout
    assert out.stderr == ""


def test_leapasgi_serve_answers_the_openai_client_example_and_logs_no_prompts(
    served: tuple[str, subprocess.Popen[str]],
) -> None:
    url, process = served
    env = {**clean_env(), "LEAP_URL": f"{url}/v1"}
    out = subprocess.run(
        [sys.executable, str(EXAMPLES / "openai_client.py")],
        capture_output=True,
        text=True,
        check=True,
        env=env,
        timeout=60,
    )
    assert "chat: You said: Say hello" in out.stdout
    assert "stream: You said: Say hello" in out.stdout
    assert "tool call: get_weather {'city':" in out.stdout
    assert "json: {'reply':" in out.stdout
    assert "image: You said: What is this?" in out.stdout
    process.send_signal(signal.SIGINT)
    _, log = process.communicate(timeout=30)
    assert process.returncode == 0
    access = [line for line in log.splitlines() if "leapasgi.access" in line]
    assert len(access) == 5
    assert all("status=200" in line for line in access)
    assert "Say hello" not in log
    assert "What is this" not in log


def test_leapasgi_check_lists_the_providers_it_would_register() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "leapasgi", "check", "--config", str(EXAMPLES / "gateway.toml")],
        capture_output=True,
        text=True,
        check=True,
        env=clean_env(),
        timeout=60,
    )
    assert "1 provider(s) would be registered" in out.stdout
    assert "mock: mock, in process" in out.stdout
    assert "openai: skipped" in out.stdout


def test_a_bad_config_fails_with_the_file_and_key(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[routing]\nstrategy = "fastest"\n')
    out = subprocess.run(
        [sys.executable, "-m", "leapasgi", "check", "--config", str(bad)],
        capture_output=True,
        text=True,
        env=clean_env(),
        timeout=60,
    )
    assert out.returncode == 2
    assert "bad.toml" in out.stderr
    assert "routing.strategy" in out.stderr
    assert "Traceback" not in out.stderr


@pytest.mark.parametrize("module", ["fastapi_mount", "starlette_mount", "middleware"])
def test_the_mounting_examples_serve_chat(module: str) -> None:
    sys.path.insert(0, str(ROOT))
    try:
        app = __import__(f"examples.{module}", fromlist=["app"]).app
    finally:
        sys.path.remove(str(ROOT))
    prefix = "/v1" if module == "middleware" else "/llm/v1"
    transport = httpx.ASGITransport(app=app)

    async def run() -> tuple[int, str]:
        async with httpx.AsyncClient(transport=transport, base_url="http://host") as client:
            response = await client.post(f"{prefix}/chat/completions", json=BODY)
            home = await client.get("/")
            return response.status_code, home.text

    import asyncio

    status, home = asyncio.run(run())
    assert status == 200
    assert home


def test_a_sigterm_shutdown_loses_no_log_line(
    served: tuple[str, subprocess.Popen[str]],
) -> None:
    url, process = served
    response = httpx.post(f"{url}/v1/chat/completions", json=BODY, timeout=10)
    assert response.status_code == 200
    # At once: the access line is still waiting for the log writer's next batch.
    process.send_signal(signal.SIGTERM)
    _, log = process.communicate(timeout=30)
    assert [line for line in log.splitlines() if "leapasgi.access" in line]
    assert "Finished server process" in log


def test_the_json_log_format_writes_one_object_per_line(tmp_path: Path) -> None:
    config = tmp_path / "gateway.toml"
    text = (EXAMPLES / "gateway.toml").read_text()
    config.write_text(f'[server]\nlog_format = "json"\n\n{text}')
    served = serve(config)
    url, process = next(served)
    try:
        prompt = {"role": "user", "content": "zebra quartz prompt"}
        body = {**BODY, "messages": [prompt]}
        response = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=10)
        assert response.status_code == 200
        process.send_signal(signal.SIGINT)
        _, log = process.communicate(timeout=30)
    finally:
        served.close()
    lines = [json.loads(line) for line in log.splitlines()]  # every line, uvicorn's too
    assert {line["logger"] for line in lines} >= {"leapasgi.access", "uvicorn.error"}
    (access,) = [line for line in lines if line["logger"] == "leapasgi.access"]
    assert access["request_id"] == response.headers["x-request-id"]
    assert access["trail"] == "mock:ok"
    assert access["status"] == 200
    assert access["model"] == "default"
    assert "zebra" not in log
