"""The built-in mock provider: deterministic, scriptable answers with no keys and no network.

It answers every request shape the way a real model would (tools, JSON modes, ``n``, stop
sequences, token limits, usage) and fails on cue with the same errors the OpenAI-compatible
client raises, so the gateway and its fault tests can run entirely in process.
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncGenerator, Iterable, Iterator
from dataclasses import dataclass
from typing import Literal

from ..clock import Clock, SystemClock
from ..deadline import Deadline
from ..exceptions import (
    ConnectRefusedError,
    FirstByteTimeoutError,
    IdleTimeoutError,
    InvalidRequestError,
    LeapError,
    LeapTimeoutError,
    MalformedStreamError,
    ModelNotFoundError,
    StreamInterruptedError,
    error_for_status,
)
from ..features import ALL_FEATURES, Feature, required_features
from ..native import EventBatch, NativeCall, NativeReply, WireProtocol
from ..params import ParamPolicy, ParamRules
from ..streaming import ChunkBatch
from ..types import (
    ChatCompletion,
    ChatCompletionRequest,
    Model,
)
from ..types.embeddings import (
    Embedding,
    EmbeddingRequest,
    EmbeddingResponse,
    EmbeddingUsage,
    deterministic_embedding,
    parse_embedding_request,
)
from ._mock_answers import DEFAULT_REPLY, Answer, answer_for, chunks_of, completion_of
from .base import Capabilities, Timeouts

__all__ = ["DEFAULT_MODELS", "DEFAULT_REPLY", "Fault", "FaultKind", "MockProvider"]

DEFAULT_MODELS = ("mock-chat", "mock-embed")
# The length of the mock's embedding vectors unless a request asks for fewer, and the most
# a request may ask for.
EMBEDDING_DIMENSIONS = 1536
MAX_EMBEDDING_DIMENSIONS = 3072
_PROTOCOLS = frozenset({WireProtocol.CHAT_COMPLETIONS, WireProtocol.EMBEDDINGS})

FaultKind = Literal["status", "connect_error", "delay", "stall", "cut", "malformed"]
_MID_STREAM: frozenset[str] = frozenset({"stall", "cut", "malformed"})


@dataclass(frozen=True, slots=True)
class Fault:
    """One scripted failure for a request; build it with the class methods."""

    kind: FaultKind
    code: int = 0
    seconds: float = 0.0
    after_chunks: int = 0
    retry_after: float | None = None
    message: str | None = None

    @classmethod
    def status(
        cls, code: int, *, retry_after: float | None = None, message: str | None = None
    ) -> Fault:
        """The upstream answers HTTP ``code`` (429 with ``retry_after`` as its hint)."""
        return cls("status", code=code, retry_after=retry_after, message=message)

    @classmethod
    def connect_error(cls) -> Fault:
        """The upstream refuses the connection."""
        return cls("connect_error")

    @classmethod
    def delay(cls, seconds: float) -> Fault:
        """The first byte comes ``seconds`` late; past the first-byte timeout, that fires."""
        return cls("delay", seconds=seconds)

    @classmethod
    def stall(cls, after_chunks: int, seconds: float) -> Fault:
        """The body goes silent for ``seconds`` after ``after_chunks`` chunks."""
        return cls("stall", seconds=seconds, after_chunks=after_chunks)

    @classmethod
    def cut(cls, after_chunks: int) -> Fault:
        """The connection drops after ``after_chunks`` chunks."""
        return cls("cut", after_chunks=after_chunks)

    @classmethod
    def malformed(cls, after_chunks: int) -> Fault:
        """An unreadable event follows ``after_chunks`` chunks."""
        return cls("malformed", after_chunks=after_chunks)


class MockProvider:
    """An in-process provider that answers like a model, fails on cue and records requests.

    ``reply=None`` echoes the last user message, or quotes a tool result. Faults queued with
    ``inject`` apply one per request (chat or stream), then ``fail_always`` applies while the
    queue is empty. A mid-stream fault whose ``after_chunks`` exceeds the stream fires at its end.
    """

    def __init__(
        self,
        *,
        name: str = "mock",
        models: Iterable[str] | None = None,
        reply: str | None = None,
        chunks: int | None = None,
        chunk_delay: float = 0.0,
        features: Iterable[Feature | str] | None = None,
        faults: Iterable[Fault | None] | None = None,
        timeouts: Timeouts | None = None,
        clock: Clock | None = None,
        params: Iterable[ParamRules] | None = None,
    ) -> None:
        if chunks is not None and chunks < 1:
            raise ValueError("chunks must be at least 1")
        self.name = name
        self.models: tuple[str, ...] = DEFAULT_MODELS if models is None else tuple(models)
        self.reply = reply
        self.chunks = chunks
        self.chunk_delay = chunk_delay
        self.features: frozenset[str] = ALL_FEATURES if features is None else frozenset(features)
        # Parameter rules, as an upstream's preset declares them (the dispatcher applies them).
        rules = tuple(params or ())
        self._params = ParamPolicy(rules) if rules else None
        self._capabilities = self._declared()
        self.timeouts = timeouts or Timeouts()
        self.clock: Clock = clock or SystemClock()
        self.requests: list[ChatCompletionRequest] = []
        self.embedding_requests: list[EmbeddingRequest] = []
        self.closed = False
        self._faults: deque[Fault | None] = deque(faults or ())
        self._persistent: Fault | None = None
        self._served = 0

    def inject(self, *faults: Fault | None) -> None:
        """Queue faults for the next requests, one each; None answers normally."""
        self._faults.extend(faults)

    def fail_always(self, fault: Fault | None) -> None:
        """Apply ``fault`` to every request while the queue is empty; None stops it."""
        self._persistent = fault

    @property
    def capabilities(self) -> Capabilities:
        """The configured features. Its own timeouts, not the deadline, stop its calls."""
        if self._capabilities.features != self.features:
            self._capabilities = self._declared()
        return self._capabilities

    def _declared(self) -> Capabilities:
        return Capabilities(features=self.features, protocols=_PROTOCOLS, params=self._params)

    def secrets(self) -> Iterator[str]:
        """None: the mock holds no key."""
        return iter(())

    async def chat(
        self, request: ChatCompletionRequest, *, deadline: Deadline | None = None
    ) -> ChatCompletion:
        """One non-streaming completion."""
        fault = await self._begin(request)
        answer = self._answer(request)
        if fault is not None and fault.kind in _MID_STREAM:
            await self._interrupt(fault)
        return completion_of(answer)

    async def stream(
        self, request: ChatCompletionRequest, *, deadline: Deadline | None = None
    ) -> AsyncGenerator[ChunkBatch, None]:
        """A streamed completion whose chunks (one per batch) add up to what ``chat`` returns."""
        fault = await self._begin(request)
        pending = fault if fault is not None and fault.kind in _MID_STREAM else None
        answer = self._answer(request)
        for sent, chunk in enumerate(chunks_of(answer, request.include_usage, self.chunks)):
            if pending is not None and sent >= pending.after_chunks:
                await self._interrupt(pending)
                pending = None
            elif sent and self.chunk_delay > 0:
                await self.clock.sleep(self.chunk_delay)
            yield ChunkBatch([chunk])
        if pending is not None:
            await self._interrupt(pending)
        if not request.include_usage and answer.usage is not None:
            # Reported as an upstream asked for it would be; the client's stream goes without.
            yield ChunkBatch([], usage=answer.usage)

    async def send(self, call: NativeCall, *, deadline: Deadline | None = None) -> NativeReply:
        """Embeddings: a deterministic unit vector per input (the same input, the same vector,
        on every run), with the same faults as chat."""
        if call.protocol is not WireProtocol.EMBEDDINGS:
            raise InvalidRequestError(
                f"Provider '{self.name}' speaks only chat and embeddings natively",
                provider=self.name,
            )
        request = parse_embedding_request(dict(call.body))
        self.embedding_requests.append(request)
        fault = await self._fault()
        self._check_model(request.model)
        if fault is not None and fault.kind in _MID_STREAM:
            await self._interrupt(fault)
        dimensions = request.dimensions or EMBEDDING_DIMENSIONS
        if dimensions > MAX_EMBEDDING_DIMENSIONS:
            raise InvalidRequestError(
                f"dimensions must be at most {MAX_EMBEDDING_DIMENSIONS}", param="dimensions"
            )
        inputs = request.texts()
        tokens = sum(len(t) if isinstance(t, list) else max(1, len(t) // 4) for t in inputs)
        response = EmbeddingResponse(
            data=[
                Embedding(index=i, embedding=deterministic_embedding(text, dimensions))
                for i, text in enumerate(inputs)
            ],
            model=request.model,
            usage=EmbeddingUsage(prompt_tokens=tokens, total_tokens=tokens),
        ).encoded(request.encoding_format)
        raw = response.to_wire_json()
        return NativeReply(response.model_dump(mode="json"), raw, usage=(tokens, 0, 0))

    async def open(
        self, call: NativeCall, *, deadline: Deadline | None = None
    ) -> AsyncGenerator[EventBatch, None]:
        """Nothing streams natively here: Responses and Messages reach the mock as chat."""
        raise InvalidRequestError(
            f"Provider '{self.name}' streams only chat completions", provider=self.name
        )
        yield EventBatch([])  # pragma: no cover - makes this an async generator

    async def list_models(self) -> list[Model]:
        """The configured models."""
        created = int(self.clock.time())
        return [Model(id=m, object="model", created=created, owned_by="mock") for m in self.models]

    async def check_health(self) -> None:
        """Raise the persistent status or connection fault, if one is set."""
        error = self._refusal(self._persistent) if self._persistent is not None else None
        if error is not None:
            raise error

    async def aclose(self) -> None:
        """Mark the provider closed; there is nothing to release."""
        self.closed = True

    async def _begin(self, request: ChatCompletionRequest) -> Fault | None:
        """Record the request, apply any fault that strikes before the first byte, validate."""
        self.requests.append(request)
        fault = await self._fault()
        self._check_model(request.model)
        missing = required_features(request) - self.features
        if missing:
            raise InvalidRequestError(
                f"Provider '{self.name}' does not support: {', '.join(sorted(missing))}",
                provider=self.name,
            )
        return fault

    async def _fault(self) -> Fault | None:
        """The request's fault; one that strikes before the first byte strikes now."""
        fault = self._faults.popleft() if self._faults else self._persistent
        if fault is not None:
            error = self._refusal(fault)
            if error is not None:
                raise error
            if fault.kind == "delay":
                await self._wait(fault.seconds, self.timeouts.first_byte, FirstByteTimeoutError)
        return fault

    def _check_model(self, model: str) -> None:
        if model not in self.models:
            raise ModelNotFoundError(
                f"The model '{model}' does not exist on provider '{self.name}'",
                provider=self.name,
            )

    def _refusal(self, fault: Fault) -> LeapError | None:
        if fault.kind == "connect_error":
            return ConnectRefusedError(
                f"Provider '{self.name}' refused the connection (mock fault)", provider=self.name
            )
        if fault.kind == "status":
            message = fault.message or f"Mock fault: HTTP {fault.code}"
            return error_for_status(
                fault.code, message, provider=self.name, retry_after=fault.retry_after
            )
        return None

    async def _interrupt(self, fault: Fault) -> None:
        if fault.kind == "stall":
            await self._wait(fault.seconds, self.timeouts.idle, IdleTimeoutError)
        elif fault.kind == "cut":
            raise StreamInterruptedError(
                f"Provider '{self.name}' closed the stream early (mock fault)", provider=self.name
            )
        else:
            raise MalformedStreamError(
                f"Provider '{self.name}' sent an unreadable event (mock fault)", provider=self.name
            )

    async def _wait(self, seconds: float, limit: float, error: type[LeapTimeoutError]) -> None:
        if seconds > limit:
            await self.clock.sleep(limit)
            raise error(f"Provider '{self.name}' sent nothing for {limit:g}s", provider=self.name)
        await self.clock.sleep(seconds)

    def _answer(self, request: ChatCompletionRequest) -> Answer:
        self._served += 1
        created = int(self.clock.time())
        return answer_for(request, serial=self._served, created=created, reply=self.reply)
