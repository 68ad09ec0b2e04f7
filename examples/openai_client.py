"""The official openai SDK against the gateway: chat, a stream, tools, JSON mode, an image.

leapasgi serve --config examples/gateway.toml &
python examples/openai_client.py            # LEAP_URL=http://127.0.0.1:8000/v1 by default
"""

from __future__ import annotations

import json
import os

from openai import OpenAI
from openai.types.chat import (
    ChatCompletionContentPartParam,
    ChatCompletionMessageParam,
    ChatCompletionToolParam,
)

# A 1x1 PNG, so the example needs no file.
PIXEL = (
    "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8"
    "z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
)
WEATHER: ChatCompletionToolParam = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}


def main() -> None:
    client = OpenAI(
        base_url=os.environ.get("LEAP_URL", "http://127.0.0.1:8000/v1"),
        api_key=os.environ.get("LEAP_KEY", "not-needed-without-gateway-auth"),
    )
    model = os.environ.get("LEAP_MODEL", "default")
    hello: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Say hello"}]

    reply = client.chat.completions.create(model=model, messages=hello)
    print("chat:", reply.choices[0].message.content)

    print("stream: ", end="")
    for chunk in client.chat.completions.create(model=model, messages=hello, stream=True):
        if chunk.choices:
            print(chunk.choices[0].delta.content or "", end="", flush=True)
    print()

    called = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "What is the weather in Paris?"}],
        tools=[WEATHER],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
    )
    call = (called.choices[0].message.tool_calls or [])[0]
    print("tool call:", call.function.name, json.loads(call.function.arguments))  # type: ignore[union-attr]

    as_json = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "Answer in JSON"}],
        response_format={"type": "json_object"},
    )
    print("json:", json.loads(as_json.choices[0].message.content or "{}"))

    image: list[ChatCompletionContentPartParam] = [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": PIXEL}},
    ]
    look: ChatCompletionMessageParam = {"role": "user", "content": image}
    seen = client.chat.completions.create(model=model, messages=[look])
    print("image:", seen.choices[0].message.content)


if __name__ == "__main__":
    main()
