"""Streamed chunks: in batches as upstream reads deliver them, and mended into what the
official openai SDK accepts.

Providers bend the streaming rules (Ollama repeats ``role`` and tool-call ids on every delta,
Together puts usage on the finish chunk, some omit ``object``); ``ChunkNormalizer`` mends each
chunk so that clients folding the stream get what OpenAI itself would have sent.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Iterator

from .exceptions import StreamInterruptedError
from .types import (
    CHUNK_CHOICE_CORE,
    CHUNK_CORE,
    ChatCompletion,
    ChatCompletionChunk,
    ChoiceDelta,
    ChoiceDeltaFunctionCall,
    ChoiceDeltaToolCall,
    ChunkChoice,
    Usage,
)

__all__ = [
    "ChunkBatch",
    "ChunkNormalizer",
    "batches_of",
    "chunks_from_completion",
    "chunks_of",
]

_CHUNK_OBJECT = "chat.completion.chunk"


class ChunkBatch:
    """The chunks of one upstream read, with the upstream's own JSON of each chunk that
    normalization left as it was, so a relay can send them on without re-serializing.
    Iterating a batch gives its chunks."""

    __slots__ = ("chunks", "request_id", "usage", "wire")

    def __init__(
        self,
        chunks: list[ChatCompletionChunk],
        wire: list[bytes | None] | None = None,
        *,
        request_id: str | None = None,
        usage: Usage | None = None,
    ) -> None:
        self.chunks = chunks
        # Parallel to chunks: the JSON as received, or None where it must be serialized again.
        self.wire: list[bytes | None] = wire if wire is not None else [None] * len(chunks)
        # The upstream's x-request-id, on the first batch of a stream that sent one.
        self.request_id = request_id
        # Usage the upstream reported that the client did not ask for (so not in a chunk):
        # the gateway's accounting reads it, the client never sees it.
        self.usage = usage

    def __iter__(self) -> Iterator[ChatCompletionChunk]:
        return iter(self.chunks)

    def __len__(self) -> int:
        return len(self.chunks)

    def sse(self) -> bytes:
        """Every chunk as one SSE ``data:`` event, ready to send in one write."""
        return b"".join(
            [
                b"data: " + (raw if raw is not None else chunk.to_wire_json()) + b"\n\n"
                for chunk, raw in zip(self.chunks, self.wire, strict=True)
            ]
        )

    def __repr__(self) -> str:
        return f"ChunkBatch({len(self.chunks)} chunks)"


async def batches_of(
    chunks: AsyncGenerator[ChatCompletionChunk, None],
) -> AsyncGenerator[ChunkBatch, None]:
    """A chunk stream as batches of one, for providers that produce one chunk at a time;
    closing the batches closes ``chunks``."""
    try:
        async for chunk in chunks:
            yield ChunkBatch([chunk], [None])
    finally:
        await chunks.aclose()


async def chunks_of(
    batches: AsyncGenerator[ChunkBatch, None],
) -> AsyncGenerator[ChatCompletionChunk, None]:
    """A batched stream one chunk at a time; closing the chunks closes ``batches``."""
    try:
        async for batch in batches:
            for chunk in batch.chunks:
                yield chunk
    finally:
        await batches.aclose()


class ChunkNormalizer:
    """Mends one stream's chunks to the OpenAI rules; one instance per stream."""

    __slots__ = (
        "_finished",
        "_identity",
        "_include_usage",
        "_provider",
        "_started",
        "_tool_ids",
        "_usage",
        "_usage_sent",
        "mended",
    )

    def __init__(self, *, include_usage: bool, provider: str | None = None) -> None:
        self._include_usage = include_usage
        self._provider = provider
        self._identity: tuple[str, int, str] | None = None
        self._started: set[int] = set()
        self._finished: set[int] = set()
        # (choice index, tool-call index) -> tool-call id, for calls whose head was sent.
        self._tool_ids: dict[tuple[int, int], str | None] = {}
        self._usage: Usage | None = None
        self._usage_sent = False
        # Whether the last pushed chunk was changed (or lacks a field it must carry).
        self.mended = False

    @property
    def complete(self) -> bool:
        """True once every choice seen so far has sent its finish_reason."""
        return bool(self._started) and self._finished >= self._started

    def push(self, chunk: ChatCompletionChunk) -> ChatCompletionChunk | None:
        """The mended chunk, or None when nothing of it is left to send; afterwards
        ``mended`` says whether it differs from what the upstream sent."""
        mended = False
        if chunk.object != _CHUNK_OBJECT:
            chunk.object = _CHUNK_OBJECT
            mended = True
        identity = self._identity
        if identity is None:
            self._identity = (chunk.id, chunk.created, chunk.model)
        elif (chunk.id, chunk.created, chunk.model) != identity:
            chunk.id, chunk.created, chunk.model = identity
            mended = True
        if chunk.usage is not None:
            self._usage = chunk.usage
            if chunk.choices or not self._include_usage:
                chunk.usage = None
                mended = True
            else:
                self._usage_sent = True
                self.mended = mended or not chunk.__pydantic_fields_set__ >= CHUNK_CORE
                return chunk
        if not chunk.choices:
            return None
        for choice in chunk.choices:
            if self._mend_choice(choice.index, choice.delta):
                mended = True
            if choice.finish_reason == "":
                choice.finish_reason = None
                mended = True
            elif choice.finish_reason is not None:
                self._finished.add(choice.index)
            if not choice.__pydantic_fields_set__ >= CHUNK_CHOICE_CORE:
                mended = True  # the upstream left out a field every chunk carries
        fields = chunk.__pydantic_fields_set__
        if self._include_usage:
            if "usage" not in fields:
                chunk.usage = None
                mended = True
        elif "usage" in fields:
            # Without include_usage the key is left out altogether, as OpenAI does.
            fields.discard("usage")
            mended = True
        self.mended = mended or not fields >= CHUNK_CORE
        return chunk

    @property
    def withheld(self) -> Usage | None:
        """The usage the upstream reported and the client did not ask for."""
        return None if self._include_usage else self._usage

    def finish(self) -> ChatCompletionChunk | None:
        """The usage chunk still owed at the end; raises when the stream was cut short."""
        if not self.complete:
            raise StreamInterruptedError(
                "The upstream stream ended before the completion finished", provider=self._provider
            )
        if not self._include_usage or self._usage_sent or self._usage is None:
            return None
        chunk_id, created, model = self._identity or ("", 0, "")
        self._usage_sent = True
        return ChatCompletionChunk(
            id=chunk_id,
            object=_CHUNK_OBJECT,
            created=created,
            model=model,
            choices=[],
            usage=self._usage,
        )

    def _mend_choice(self, index: int, delta: ChoiceDelta) -> bool:
        mended = False
        if index in self._started:
            if delta.role is not None:
                delta.role = None
                delta.__pydantic_fields_set__.discard("role")
                mended = True
        else:
            self._started.add(index)
            if delta.role != "assistant":
                delta.role = "assistant"
                mended = True
        if delta.tool_calls:
            mended = self._mend_tool_calls(index, delta) or mended
        return mended

    def _mend_tool_calls(self, choice: int, delta: ChoiceDelta) -> bool:
        assert delta.tool_calls is not None
        mended = False
        for position, call in enumerate(delta.tool_calls):
            if call.index is None:
                call.index = self._infer_index(choice, call.id, position)
                mended = True
            key = (choice, call.index)
            if key not in self._tool_ids:
                self._tool_ids[key] = call.id
                if call.type is None:
                    call.type = "function"
                    mended = True
                continue
            for name in ("id", "type"):
                if getattr(call, name) is not None:
                    setattr(call, name, None)
                    call.__pydantic_fields_set__.discard(name)
                    mended = True
            function = call.function
            if function is not None and function.name is not None:
                function.name = None
                function.__pydantic_fields_set__.discard("name")
                mended = True
        return mended

    def _infer_index(self, choice: int, call_id: str | None, position: int) -> int:
        known = [i for (c, i) in self._tool_ids if c == choice]
        if call_id is not None:
            for (c, i), seen in self._tool_ids.items():
                if c == choice and seen == call_id:
                    return i
            return max(known, default=-1) + 1
        return max(known, default=position)


def chunks_from_completion(
    completion: ChatCompletion, *, include_usage: bool
) -> list[ChatCompletionChunk]:
    """A whole completion as stream chunks, for upstreams that ignore ``"stream": true``."""
    identity = {
        "id": completion.id,
        "object": _CHUNK_OBJECT,
        "created": completion.created,
        "model": completion.model,
    }
    chunks: list[ChatCompletionChunk] = []
    for choice in completion.choices:
        message = choice.message
        calls = [
            ChoiceDeltaToolCall(
                index=i,
                id=call.id,
                type="function",
                function=ChoiceDeltaFunctionCall(
                    name=call.function.name, arguments=call.function.arguments
                ),
            )
            for i, call in enumerate(message.tool_calls or ())
        ]
        delta = ChoiceDelta(role="assistant", content=message.content, tool_calls=calls or None)
        if message.refusal is not None:
            delta.refusal = message.refusal
        finish = ChunkChoice(
            index=choice.index, delta=ChoiceDelta(), finish_reason=choice.finish_reason or "stop"
        )
        for part in (ChunkChoice(index=choice.index, delta=delta, finish_reason=None), finish):
            chunks.append(ChatCompletionChunk(**identity, choices=[part]))
    if include_usage and completion.usage is not None:
        chunks.append(ChatCompletionChunk(**identity, choices=[], usage=completion.usage))
    return chunks
