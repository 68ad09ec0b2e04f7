"""A chat completion, a streamed one and a tool call through the built-in mock provider.

    python examples/quickstart.py

No keys and no network: the mock provider answers like a model. To try a real service instead,
set LEAP_PRESET (openai, groq, together, ollama, ...) and LEAP_MODEL, plus that service's key
variable (``leapasgi presets`` lists them).
"""

from __future__ import annotations

import asyncio
import json
import os

from leapasgi import (
    ChatCompletionRequest,
    MockProvider,
    OpenAICompatibleProvider,
    Provider,
    ProviderSettings,
    Retrying,
    chunks_of,
)

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    },
}


def choose_provider() -> tuple[Provider, str]:
    preset = os.environ.get("LEAP_PRESET")
    if preset:
        settings = ProviderSettings.from_preset(preset)
        # A provider makes one attempt per call; on its own, Retrying adds retries.
        provider = Retrying(OpenAICompatibleProvider(settings))
        return provider, os.environ.get("LEAP_MODEL", "")
    return MockProvider(), "mock-chat"


def request(model: str, prompt: str, **fields: object) -> ChatCompletionRequest:
    body = {"model": model, "messages": [{"role": "user", "content": prompt}], **fields}
    return ChatCompletionRequest.model_validate(body)


async def main() -> None:
    provider, model = choose_provider()
    print(f"provider: {provider.name}, model: {model}\n")

    reply = await provider.chat(request(model, "What is an LLM gateway?"))
    print("chat:", reply.choices[0].message.content)
    assert reply.usage is not None
    print(f"      usage: {reply.usage.prompt_tokens} in, {reply.usage.completion_tokens} out\n")

    print("stream: ", end="")
    streamed = request(model, "Stream me a short answer.", stream=True)
    async for chunk in chunks_of(provider.stream(streamed)):  # the stream comes in batches
        if chunk.choices:
            print(chunk.choices[0].delta.content or "", end="", flush=True)
    print("\n")

    forced = {"type": "function", "function": {"name": "get_weather"}}
    called = await provider.chat(
        request(model, "Weather in Paris?", tools=[WEATHER_TOOL], tool_choice=forced)
    )
    for call in called.choices[0].message.tool_calls or ():
        arguments = json.loads(call.function.arguments)
        print(f"tool call: {call.function.name}({arguments}) id={call.id}")

    await provider.aclose()


if __name__ == "__main__":
    asyncio.run(main())
