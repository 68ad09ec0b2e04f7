"""The chat tool in process: what it sends, what it returns, progress, failover and its errors."""

from __future__ import annotations

import json
import logging
import re
from typing import Any

import pytest

from leapasgi.config import AliasConfig
from leapasgi.providers.mock import Fault
from leapasgi.types import ResponseFormatJSONObject, SystemMessage, UserMessage
from leapmcp import build_server
from tests.mcp.support import (
    connect,
    fast_routing,
    make_gateway,
    mock_config,
    mock_of,
    structured,
    text,
)

pytestmark = pytest.mark.anyio

PREFIX = "Error executing tool chat: "


@pytest.fixture(params=["auto", "legacy"])
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def call(gateway: Any, arguments: dict[str, Any], mode: str = "auto") -> Any:
    async with connect(build_server(gateway), mode) as client:
        return await client.call_tool("chat", arguments)


async def error_of(gateway: Any, arguments: dict[str, Any], mode: str = "auto") -> str:
    result = await call(gateway, arguments, mode)
    assert result.is_error
    message = text(result)
    assert message.startswith(PREFIX)
    return message.removeprefix(PREFIX)


async def test_chat_answers_with_provider_model_usage_and_trail(
    mode: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="leapasgi.access")
    answer = structured(await call(make_gateway(), {"model": "mock-chat", "prompt": "hi"}, mode))
    request_id = answer.pop("request_id")
    # The mock sends no request id of its own: the gateway's, the one in its access log line.
    assert re.fullmatch(r"req_[0-9a-f]{24}", request_id)
    (line,) = [r.getMessage() for r in caplog.records if r.name == "leapasgi.access"]
    # Over stdio nobody is identified: the anonymous caller, accounted.
    assert line.startswith("chat model=mock-chat provider=mock status=200 tenant=anonymous ")
    assert f" id={request_id} " in f"{line} "
    assert answer == {
        "reply": "You said: hi",
        "provider": "mock",
        "model": "mock-chat",
        "finish_reason": "stop",
        "usage": {"prompt_tokens": 1, "completion_tokens": 3, "total_tokens": 4},
        "attempts": [
            {
                "provider": "mock",
                "model": "mock-chat",
                "outcome": "ok",
                "status": None,
                "latency_ms": 0.0,
                "message": None,
                "skipped": False,
            }
        ],
    }


async def test_chat_streams_the_request_it_builds_from_the_arguments(mode: str) -> None:
    gateway = make_gateway()
    arguments = {
        "model": "mock-chat",
        "prompt": "give me json",
        "system": "Be terse.",
        "temperature": 0.2,
        "max_tokens": 50,
        "json_mode": True,
    }
    answer = structured(await call(gateway, arguments, mode))
    [request] = mock_of(gateway).requests
    assert [type(m) for m in request.messages] == [SystemMessage, UserMessage]
    assert [m.content for m in request.messages] == ["Be terse.", "give me json"]
    assert request.temperature == 0.2
    assert request.max_tokens == 50
    assert isinstance(request.response_format, ResponseFormatJSONObject)
    assert request.stream is True
    assert request.include_usage
    assert json.loads(answer["reply"]) == {"reply": "You said: give me json"}


async def test_chat_takes_a_whole_conversation(mode: str) -> None:
    gateway = make_gateway()
    messages = [
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "noted"},
        {"role": "user", "content": "second"},
    ]
    answer = structured(await call(gateway, {"model": "mock-chat", "messages": messages}, mode))
    assert answer["reply"] == "You said: second"
    [request] = mock_of(gateway).requests
    assert [m.role for m in request.messages] == ["user", "assistant", "user"]


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        ({"model": "mock-chat"}, "Give prompt (one user message) or messages (a conversation)"),
        (
            {"model": "mock-chat", "prompt": "a", "messages": [{"role": "user", "content": "b"}]},
            "Give either prompt (one user message) or messages, not both",
        ),
        ({"model": "mock-chat", "prompt": "a", "temperature": 3}, "less than or equal to 2"),
        ({"model": "mock-chat", "prompt": "a", "max_tokens": 0}, "greater than or equal to 1"),
        ({"model": "", "prompt": "a"}, "at least 1 character"),
        ({"model": "mock-chat", "messages": [{"role": "robot", "content": "b"}]}, "role"),
        ({"model": "mock-chat", "messages": []}, "at least 1 item"),
    ],
)
async def test_bad_arguments_are_tool_errors(arguments: dict[str, Any], expected: str) -> None:
    gateway = make_gateway()
    assert expected in await error_of(gateway, arguments)
    assert mock_of(gateway).requests == []


async def test_chat_reports_progress_while_the_answer_streams(mode: str) -> None:
    gateway = make_gateway(mock_config(chunks=20))
    reports: list[tuple[float, float | None, str | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        reports.append((progress, total, message))

    async with connect(build_server(gateway), mode) as client:
        arguments = {"model": "mock-chat", "prompt": "one two three four five six seven"}
        result = await client.call_tool("chat", arguments, progress_callback=on_progress)
    assert structured(result)["reply"] == "You said: one two three four five six seven"
    assert [done for done, _, _ in reports] == [1, 8, 16]
    assert all(total is None for _, total, _ in reports)
    assert reports[-1][2] is not None
    assert reports[-1][2].startswith("mock is answering: ")


async def test_a_failed_provider_fails_over_and_the_trail_says_why(mode: str) -> None:
    gateway = make_gateway(mock_config("a"), mock_config("b"))
    mock_of(gateway, "a").inject(Fault.status(503, message="overloaded"))
    answer = structured(await call(gateway, {"model": "mock-chat", "prompt": "hi"}, mode))
    assert answer["provider"] == "b"
    assert [(a["provider"], a["outcome"], a["message"]) for a in answer["attempts"]] == [
        ("a", "UpstreamUnavailableError", "overloaded"),
        ("b", "ok", None),
    ]
    assert answer["attempts"][0]["status"] == 503


async def test_an_unknown_model_lists_the_models_to_use_instead(mode: str) -> None:
    routing = fast_routing(aliases={"default": AliasConfig(targets=["mock-chat"])})
    message = await error_of(
        make_gateway(routing=routing), {"model": "gpt-9", "prompt": "hi"}, mode
    )
    assert message == (
        "The model `gpt-9` does not exist or no configured provider serves it. "
        "Models and aliases you can use: default, mock-chat."
    )


async def test_no_provider_available_says_so_and_when_to_retry() -> None:
    gateway = make_gateway(mock_config("a"), mock_config("b"))
    for name in ("a", "b"):
        gateway.manager.registry.set_status(name, "maintenance", cause="test")
    message = await error_of(gateway, {"model": "mock-chat", "prompt": "hi"})
    assert message == (
        "No provider can serve this request right now. list_providers shows each one's "
        "status and breaker. Retry after 5 s."
    )


async def test_a_refused_request_is_not_retried_elsewhere() -> None:
    gateway = make_gateway(mock_config("a"), mock_config("b"))
    mock_of(gateway, "a").inject(Fault.status(400, message="context length exceeded"))
    message = await error_of(gateway, {"model": "mock-chat", "prompt": "hi"})
    assert message == (
        "The request was refused: context length exceeded. Attempts: "
        "1. a/mock-chat: InvalidRequestError (400): context length exceeded."
    )
    assert mock_of(gateway, "b").requests == []


async def test_when_every_provider_fails_the_error_lists_every_attempt() -> None:
    routing = fast_routing(max_attempts=3)
    gateway = make_gateway(mock_config("a", max_retries=1), mock_config("b"), routing=routing)
    for name in ("a", "b"):
        mock_of(gateway, name).fail_always(Fault.status(502))
    message = await error_of(gateway, {"model": "mock-chat", "prompt": "hi"})
    assert message == (
        "The chat failed: Mock fault: HTTP 502. Attempts: "
        "1. a/mock-chat: UpstreamUnavailableError (502): Mock fault: HTTP 502; "
        "2. b/mock-chat: UpstreamUnavailableError (502): Mock fault: HTTP 502; "
        "3. a/mock-chat: UpstreamUnavailableError (502): Mock fault: HTTP 502."
    )


async def test_a_stream_cut_after_its_first_chunk_is_a_tool_error() -> None:
    gateway = make_gateway(mock_config("a", chunks=5), mock_config("b"))
    mock_of(gateway, "a").inject(Fault.cut(after_chunks=2))
    message = await error_of(gateway, {"model": "mock-chat", "prompt": "one two three"})
    assert message.startswith("The chat failed: Provider 'a' closed the stream early (mock fault).")
    assert "1. a/mock-chat: StreamInterruptedError: " in message
    assert mock_of(gateway, "b").requests == []


async def test_a_provider_that_cannot_stream_answers_in_one_piece(mode: str) -> None:
    gateway = make_gateway(mock_config(features=["system_messages"]))
    answer = structured(await call(gateway, {"model": "mock-chat", "prompt": "hi"}, mode))
    assert answer["reply"] == "You said: hi"
    assert answer["usage"]["total_tokens"] == 4
    assert not mock_of(gateway).requests[0].stream


async def test_json_mode_no_provider_supports_is_refused() -> None:
    gateway = make_gateway(mock_config(features=["streaming"]))
    arguments = {"model": "mock-chat", "prompt": "hi", "json_mode": True}
    assert await error_of(gateway, arguments) == (
        "The request was refused: No provider serving `mock-chat` supports what this request "
        "needs (json_mode)."
    )


async def test_a_preferred_provider_serves_first(mode: str) -> None:
    gateway = make_gateway(mock_config("a"), mock_config("b"))
    arguments = {"model": "mock-chat", "prompt": "hi", "provider": "b"}
    answer = structured(await call(gateway, arguments, mode))
    assert answer["provider"] == "b"
    assert mock_of(gateway, "a").requests == []


async def test_a_failing_preferred_provider_hands_over_to_the_others() -> None:
    gateway = make_gateway(mock_config("a"), mock_config("b", max_retries=0))
    mock_of(gateway, "b").inject(Fault.connect_error())
    arguments = {"model": "mock-chat", "prompt": "hi", "provider": "b"}
    answer = structured(await call(gateway, arguments))
    assert answer["provider"] == "a"
    assert [(a["provider"], a["outcome"]) for a in answer["attempts"]] == [
        ("b", "ConnectRefusedError"),
        ("a", "ok"),
    ]


async def test_a_preferred_provider_follows_an_alias_to_its_model() -> None:
    routing = fast_routing(aliases={"default": AliasConfig(targets=["a/mock-chat", "b/other"])})
    gateway = make_gateway(mock_config("a"), mock_config("b", models=("other",)), routing=routing)
    answer = structured(await call(gateway, {"model": "default", "prompt": "hi", "provider": "b"}))
    assert (answer["provider"], answer["model"]) == ("b", "other")


async def test_a_preferred_provider_must_exist_and_serve_the_model() -> None:
    gateway = make_gateway(mock_config("a"), mock_config("b", models=("other",)))
    unknown = await error_of(gateway, {"model": "mock-chat", "prompt": "hi", "provider": "zz"})
    not_serving = await error_of(gateway, {"model": "mock-chat", "prompt": "hi", "provider": "b"})
    assert unknown == "No provider named 'zz'. Providers: a, b"
    assert not_serving == "Provider 'b' does not serve `mock-chat`; these do: a"


async def test_chats_are_counted_in_the_gateway_metrics() -> None:
    gateway = make_gateway()
    structured(await call(gateway, {"model": "mock-chat", "prompt": "hi"}))
    await error_of(gateway, {"model": "nope", "prompt": "hi"})
    metrics = gateway.metrics.render(gateway.manager.registry.snapshots())
    assert 'provider="mock",model="mock-chat",status="200"' in metrics
    assert 'status="404"' in metrics


async def test_a_provider_refusing_the_gateway_key_says_which() -> None:
    gateway = make_gateway(mock_config("a"), mock_config("b"))
    mock_of(gateway, "a").inject(Fault.status(401, message="bad key [redacted]"))
    assert await error_of(gateway, {"model": "mock-chat", "prompt": "hi"}) == (
        "Provider 'a' refused the gateway's credentials: bad key [redacted]. Attempts: "
        "1. a/mock-chat: AuthenticationError (401): bad key [redacted]."
    )
