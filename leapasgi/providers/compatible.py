"""The client for any OpenAI-compatible upstream, over one pooled aiohttp session."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import urllib.parse
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterator
from types import TracebackType
from typing import Any

import aiohttp
from aiohttp.abc import AbstractResolver
from pydantic import ValidationError

from .. import __version__
from ..clock import Clock, SystemClock
from ..deadline import Deadline
from ..exceptions import (
    ConfigurationError,
    DeadlineExceededError,
    FirstByteTimeoutError,
    IdleTimeoutError,
    LeapError,
    MalformedResponseError,
    MalformedStreamError,
    ResponseTooLargeError,
    StreamInterruptedError,
)
from ..native import EventBatch, NativeCall, NativeReply, WireProtocol
from ..params import ParamPolicy
from ..redact import Redactor, credential_name, public_url
from ..sse import EventTooLarge, SSEDecoder
from ..streaming import (
    ChunkBatch,
    ChunkNormalizer,
    chunks_from_completion,
)
from ..tracing import TRACE_HEADERS
from ..types import ChatCompletion, ChatCompletionChunk, ChatCompletionRequest, Model, ModelList
from ..types.request import StreamOptions
from ._native import NativeStreamReader, reply_usage
from ._upstream import (
    MAX_ERROR_BODY,
    error_from_payload,
    error_from_response,
    parse_event,
    translate_client_error,
    upstream_request_id,
)
from ._watch import Expired, ReadWatch
from .base import Capabilities
from .settings import ProviderSettings
from .urls import GuardedResolver

__all__ = ["UPSTREAM_HEADERS", "OpenAICompatibleProvider"]

# The allow-list: every header an upstream request carries besides the provider's configured
# ``headers``. Requests are built from fixed sets, so nothing of the client's request (its
# Authorization, Cookie, X-Forwarded-*, hop-by-hop headers) is ever passed on. aiohttp adds
# Host, Accept, Accept-Encoding and Content-Length.
UPSTREAM_HEADERS = frozenset(
    {
        "accept",
        "accept-encoding",
        "authorization",
        "content-length",
        "content-type",
        "host",
        "user-agent",
    }
)

# What native Messages calls say when the client named no version.
ANTHROPIC_VERSION = "2023-06-01"
_KEEPALIVE_SECONDS = 30.0
# What a stream asks for when the client did not ask for usage (the gateway's accounting).
_WITH_USAGE = StreamOptions(include_usage=True)
_DRAIN_SECONDS = 1.0
# Request bodies over this are sent from a buffer: aiohttp warns about bytes bodies over 1 MiB.
LARGE_BODY = 1 << 20


class OpenAICompatibleProvider:
    """Chat completions, streams, model lists and free health checks against one upstream.

    One ``aiohttp.ClientSession`` per provider, created on first use and closed by ``aclose()``.
    Each call is one upstream request, bounded by the provider's clocks and the deadline it is
    given; retrying is the caller's (the dispatcher's, or ``Retrying`` for standalone use).
    """

    def __init__(
        self,
        settings: ProviderSettings,
        *,
        clock: Clock | None = None,
        resolver: AbstractResolver | None = None,
    ) -> None:
        self.settings = settings
        self.name = settings.name
        self._clock = clock or SystemClock()
        self._resolver = resolver
        self._session: aiohttp.ClientSession | None = None
        base = urllib.parse.urlsplit(settings.base_url)
        self._chat_url = self._url(base, "/chat/completions")
        self._models_url = self._url(base, "/models")
        key = settings.api_key.get_secret_value() if settings.api_key else None
        self._params = ParamPolicy(settings.params) if settings.params else None
        self._capabilities = Capabilities(
            features=settings.features,
            protocols=settings.protocols,
            honors_deadline=True,
            params=self._params,
        )
        self._native_urls = {
            WireProtocol.RESPONSES: self._url(base, "/responses"),
            WireProtocol.MESSAGES: self._url(base, "/messages"),
            WireProtocol.EMBEDDINGS: self._url(base, "/embeddings"),
        }
        self._redact = Redactor(self.secrets())
        headers = {"User-Agent": f"leapasgi/{__version__}", **settings.headers}
        if key:
            headers["Authorization"] = f"Bearer {key}"
        self._json_headers = {**headers, "Content-Type": "application/json"}
        self._sse_headers = {**self._json_headers, "Accept": "text/event-stream"}
        self._get_headers = headers
        # Native Messages calls: the key as Anthropic's API takes it, and a default version.
        messages = {**self._json_headers, "anthropic-version": ANTHROPIC_VERSION}
        if key:
            messages["x-api-key"] = key
            if settings.key_header == "x-api-key":
                del messages["Authorization"]
        self._messages_headers = messages

    @staticmethod
    def _url(base: urllib.parse.SplitResult, path: str) -> str:
        return urllib.parse.urlunsplit(base._replace(path=base.path.rstrip("/") + path))

    def __repr__(self) -> str:
        shown = public_url(self.settings.base_url)
        return f"{type(self).__name__}(name={self.name!r}, base_url={shown!r})"

    @property
    def capabilities(self) -> Capabilities:
        """The configured features; calls stop at their deadline by themselves."""
        return self._capabilities

    def secrets(self) -> Iterator[str]:
        """The key, the base URL's user info, and the query values and configured headers
        whose names say they hold a credential (``?key=``, ``x-api-key``...). Other values
        (``api-version=2024-06-01``) are not secrets: scrubbing them would garble answers."""
        settings = self.settings
        if settings.api_key is not None:
            yield settings.api_key.get_secret_value()
        url = urllib.parse.urlsplit(settings.base_url)
        if url.password:
            yield url.password
            yield f"{url.username}:{url.password}"  # as Basic auth sends it
        for name, value in urllib.parse.parse_qsl(url.query):
            if credential_name(name):
                yield value
        for name, value in settings.headers.items():
            if credential_name(name):
                yield value

    async def __aenter__(self) -> OpenAICompatibleProvider:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the pooled connections; the next call opens a new pool."""
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    def _client(self) -> aiohttp.ClientSession:
        session = self._session
        if session is None or session.closed:
            connector = aiohttp.TCPConnector(
                limit=self.settings.max_connections,
                keepalive_timeout=_KEEPALIVE_SECONDS,
                # The address connected to is checked, not only the URL's spelling.
                resolver=GuardedResolver(self._resolver),
            )
            timeout = aiohttp.ClientTimeout(
                total=None, connect=None, sock_connect=self.settings.timeouts.connect
            )
            session = aiohttp.ClientSession(
                connector=connector,
                timeout=timeout,
                cookie_jar=aiohttp.DummyCookieJar(),
                trust_env=False,
                auto_decompress=True,
            )
            self._session = session
        return session

    async def chat(
        self, request: ChatCompletionRequest, *, deadline: Deadline | None = None
    ) -> ChatCompletion:
        """One non-streaming completion."""
        body = self._encode(request, stream=False)
        until = self._until(deadline)
        async with await self._send("POST", self._chat_url, body, until) as response:
            data = await self._read_body(response, until)
            request_id = upstream_request_id(response.headers, self._redact)
        return self._completion(data).with_request_id(request_id)

    async def stream(
        self, request: ChatCompletionRequest, *, deadline: Deadline | None = None
    ) -> AsyncGenerator[ChunkBatch, None]:
        """A streamed completion a read at a time: the chunks each upstream read completed,
        with the upstream's own JSON of those normalization left alone (the gateway relays
        them as is). The first batch carries the upstream's x-request-id."""
        body = self._encode(request, stream=True)
        until = self._until(deadline)
        normalizer = ChunkNormalizer(include_usage=request.include_usage, provider=self.name)
        async with await self._send("POST", self._chat_url, body, until, sse=True) as response:
            request_id = upstream_request_id(response.headers, self._redact)
            push = normalizer.push
            if not response.content_type.endswith("event-stream"):
                # Some upstreams ignore "stream": true and answer with one JSON completion.
                whole = self._completion(await self._read_body(response, until))
                mended = [
                    chunk
                    for chunk in chunks_from_completion(whole, include_usage=True)
                    if push(chunk) is not None
                ]
                if mended:
                    yield ChunkBatch(mended, request_id=request_id)
                    request_id = None
            else:
                # One flat loop: every chunk of every stream passes through here.
                decoder = SSEDecoder()
                read = response.content.readany
                name = self.name
                redact = self._redact
                watch = self._watch(until)
                budget = self.settings.max_response_bytes
                done = False
                with self._reading(watch):
                    while not done and (data := await watch.read(read)):
                        budget -= len(data)
                        if budget < 0:
                            raise self._too_large()
                        chunks: list[ChatCompletionChunk] = []
                        wire: list[bytes | None] = []
                        failure: LeapError | None = None
                        for event in decoder.feed(data):
                            try:
                                parsed = parse_event(event, provider=name, redact=redact)
                            except LeapError as exc:
                                failure = exc  # after the chunks that came before it
                                break
                            if parsed is None:
                                done = True
                                break
                            if push(parsed) is not None:
                                chunks.append(parsed)
                                text = event.data
                                wire.append(
                                    None
                                    if normalizer.mended or "\n" in text or "\r" in text
                                    else text.encode()
                                )
                        if chunks:
                            yield ChunkBatch(chunks, wire, request_id=request_id)
                            request_id = None
                        if failure is not None:
                            raise failure
                if not done:
                    last: list[ChatCompletionChunk] = []
                    for event in decoder.close():
                        chunk = parse_event(event, provider=name, redact=redact)
                        if chunk is None:
                            done = True
                            break
                        if push(chunk) is not None:
                            last.append(chunk)
                    if last:
                        yield ChunkBatch(last, request_id=request_id)
                        request_id = None
                    if not done:
                        # Whatever came before, a stream cut before [DONE] may lack its end
                        # (the usage chunk, say): never passed off as a clean end.
                        raise StreamInterruptedError(
                            f"Provider {name!r} ended the stream without [DONE]", provider=name
                        )
                await _drain(response)
        tail = normalizer.finish()
        if tail is not None:
            yield ChunkBatch([tail], request_id=request_id)
        elif (withheld := normalizer.withheld) is not None:
            yield ChunkBatch([], request_id=request_id, usage=withheld)

    async def send(self, call: NativeCall, *, deadline: Deadline | None = None) -> NativeReply:
        """One whole answer in a protocol the upstream speaks, passed through."""
        until = self._until(deadline)
        url, headers = self._native_target(call, sse=False)
        async with await self._send("POST", url, call.encode(), until, headers=headers) as response:
            raw = await self._read_body(response, until)
            request_id = upstream_request_id(response.headers, self._redact)
        try:
            data = json.loads(raw)
        except ValueError:
            raise self._malformed(raw) from None
        if not isinstance(data, dict):
            raise self._malformed(raw)
        if data.get("type") == "error" or (data.get("error")):
            raise error_from_payload(data, provider=self.name, redact=self._redact)
        return NativeReply(data, raw, request_id=request_id, usage=reply_usage(data))

    async def open(
        self, call: NativeCall, *, deadline: Deadline | None = None
    ) -> AsyncGenerator[EventBatch, None]:
        """A native stream a read at a time; the protocol's preamble is held back until the
        first content event, so an error before it raises and the request fails over."""
        until = self._until(deadline)
        url, headers = self._native_target(call, sse=True)
        name = self.name
        reader = NativeStreamReader(call.protocol, provider=name, redact=self._redact)
        async with await self._send("POST", url, call.encode(), until, headers=headers) as response:
            request_id = upstream_request_id(response.headers, self._redact)
            if not response.content_type.endswith("event-stream"):
                raise self._malformed(await self._read_body(response, until), wanted="a stream")
            decoder = SSEDecoder()
            read = response.content.readany
            watch = self._watch(until)
            budget = self.settings.max_response_bytes
            with self._reading(watch):
                while not reader.done and (data := await watch.read(read)):
                    budget -= len(data)
                    if budget < 0:
                        raise self._too_large()
                    events = reader.feed(decoder.feed(data))
                    if events:
                        yield EventBatch(events, request_id=request_id, usage=reader.usage)
                        request_id = None
                    if reader.failure is not None:
                        raise reader.failure
                if not reader.done:
                    events = reader.feed(decoder.close())
                    if events:
                        yield EventBatch(events, request_id=request_id, usage=reader.usage)
                    if reader.failure is not None:
                        raise reader.failure
            reader.finish()
            await _drain(response)

    @contextlib.contextmanager
    def _reading(self, watch: ReadWatch) -> Iterator[None]:
        """While a stream's body is read: its failures as LeapErrors, and the watch closed."""
        name = self.name
        try:
            yield
        except aiohttp.ClientError as exc:
            raise translate_client_error(exc, provider=name, in_body=True) from exc
        except Expired as expired:
            raise self._timeout(expired.kind, "the next part of the response") from None
        except EventTooLarge as exc:
            raise MalformedStreamError(
                f"Provider {name!r} sent a stream event that is too large ({exc})", provider=name
            ) from None
        finally:
            watch.close()

    def _native_target(self, call: NativeCall, *, sse: bool) -> tuple[str, dict[str, str]]:
        url = self._native_urls.get(call.protocol)
        if url is None or call.protocol not in self._capabilities.protocols:
            raise ConfigurationError(
                f"Provider {self.name!r} does not speak the {call.protocol} API natively",
                provider=self.name,
            )
        if call.endpoint is not None:
            url = f"{url}/{call.endpoint}"
        if call.protocol is WireProtocol.MESSAGES:
            headers = {**self._messages_headers, **call.headers}
        else:
            headers = {**self._json_headers, **call.headers}
        if sse:
            headers["Accept"] = "text/event-stream"
        return url, headers

    async def list_models(self) -> list[Model]:
        """The upstream's models from ``GET /models``."""
        return await self._models_once(self._until(None))

    async def check_health(self) -> None:
        """One ``GET /models`` (free, never billed); raises the error that made it fail."""
        timeouts = self.settings.timeouts
        deadline = self._clock.monotonic() + timeouts.connect + timeouts.first_byte
        await self._models_once(deadline)

    def _completion(self, data: bytes) -> ChatCompletion:
        try:
            completion = ChatCompletion.model_validate_json(data)
        except ValidationError:
            raise self._malformed(data) from None
        if not completion.choices:
            extra = completion.model_extra
            if extra and "error" in extra:
                raise error_from_payload(extra, provider=self.name, redact=self._redact)
            raise MalformedResponseError(
                f"Provider {self.name!r} answered with no choices", provider=self.name
            )
        return completion

    async def _models_once(self, deadline: float) -> list[Model]:
        async with await self._send("GET", self._models_url, None, deadline) as response:
            data = await self._read_body(response, deadline)
        try:
            payload = json.loads(data)
            if isinstance(payload, list):
                payload = {"data": payload}
            return ModelList.model_validate(payload).data
        except (ValueError, ValidationError):
            raise self._malformed(data) from None

    async def _send(
        self,
        method: str,
        url: str,
        body: bytes | None,
        deadline: float,
        *,
        sse: bool = False,
        headers: dict[str, str] | None = None,
    ) -> aiohttp.ClientResponse:
        """Send a request and wait for its headers; error statuses raise, with the body read."""
        if headers is None:
            headers = (
                self._sse_headers if sse else (self._json_headers if body else self._get_headers)
            )
        traced = TRACE_HEADERS.get()
        if traced is not None:
            headers = {**headers, **traced}
        session = self._client()
        limit, stage = self._budget(self.settings.timeouts.first_byte, deadline)
        data = io.BytesIO(body) if body is not None and len(body) > LARGE_BODY else body
        try:
            async with asyncio.timeout(limit):
                response = await session.request(
                    method, url, data=data, headers=headers, allow_redirects=False
                )
        except aiohttp.ClientError as exc:
            raise translate_client_error(exc, provider=self.name) from exc
        except TimeoutError:
            raise self._timeout(stage, "the response headers") from None
        if response.status >= 300:
            async with response:
                data = await self._read_body(response, deadline, limit=MAX_ERROR_BODY)
            raise error_from_response(
                response.status,
                response.headers,
                data,
                provider=self.name,
                now=self._clock.time(),
                redact=self._redact,
            )
        return response

    async def _read_body(
        self, response: aiohttp.ClientResponse, deadline: float, *, limit: int | None = None
    ) -> bytes:
        """The whole body, decompressed, up to ``max_response_bytes`` (ResponseTooLargeError
        past it); with ``limit``, its first ``limit`` bytes and no more (error bodies)."""
        parts: list[bytes] = []
        size = 0
        most = self.settings.max_response_bytes
        read = response.content.readany
        watch = self._watch(deadline)
        try:
            while data := await self._read(watch, read):
                parts.append(data)
                size += len(data)
                if limit is not None and size >= limit:
                    break
                if size > most:
                    raise self._too_large()
        finally:
            watch.close()
        return b"".join(parts)

    def _too_large(self) -> LeapError:
        return ResponseTooLargeError(
            f"Provider {self.name!r} sent an answer larger than "
            f"{self.settings.max_response_bytes} bytes",
            provider=self.name,
        )

    def _until(self, deadline: Deadline | None) -> float:
        """The monotonic time this call must end by: its total timeout, or the request's
        deadline when that comes first."""
        total = self.settings.timeouts.total
        seconds = total if deadline is None else deadline.within(total)
        return self._clock.monotonic() + seconds

    def _watch(self, deadline: float) -> ReadWatch:
        remaining = max(deadline - self._clock.monotonic(), 0.0)
        return ReadWatch(idle=self.settings.timeouts.idle, remaining=remaining)

    async def _read(self, watch: ReadWatch, read: Callable[[], Awaitable[bytes]]) -> bytes:
        try:
            return await watch.read(read)
        except aiohttp.ClientError as exc:
            raise translate_client_error(exc, provider=self.name, in_body=True) from exc
        except Expired as expired:
            raise self._timeout(expired.kind, "the next part of the response") from None

    def _budget(self, stage_timeout: float, deadline: float) -> tuple[float, str]:
        remaining = deadline - self._clock.monotonic()
        if remaining <= stage_timeout:
            return max(remaining, 0.0), "deadline"
        return stage_timeout, "stage"

    def _timeout(self, stage: str, waiting_for: str) -> LeapError:
        timeouts = self.settings.timeouts
        if stage == "deadline":  # the total deadline ran out before the stage's own clock
            return DeadlineExceededError(
                f"Provider {self.name!r} did not finish within the {timeouts.total:g} s deadline",
                provider=self.name,
                retryable=False,
            )
        if waiting_for == "the response headers":
            return FirstByteTimeoutError(
                f"Provider {self.name!r} sent no response within {timeouts.first_byte:g} s",
                provider=self.name,
            )
        return IdleTimeoutError(
            f"Provider {self.name!r} went silent for {timeouts.idle:g} s", provider=self.name
        )

    def _malformed(self, data: bytes, *, wanted: str = "JSON") -> LeapError:
        return MalformedResponseError(
            f"Provider {self.name!r} answered with something other than {wanted} "
            f"({len(data)} bytes)",
            provider=self.name,
        )

    def _encode(self, request: ChatCompletionRequest, *, stream: bool) -> bytes:
        updates: dict[str, Any] = {}
        exclude: set[str] = set()
        if stream:
            updates["stream"] = True
            params = self._params.for_model(request.model) if self._params else None
            if params is not None and params.omits("stream_options"):
                # Refused upstream: neither the client's nor the gateway's is sent.
                exclude.add("stream_options")
            elif not request.include_usage and self.settings.stream_usage:
                # Asked for the gateway's accounting; the client's stream goes without it.
                options = request.stream_options
                updates["stream_options"] = (
                    _WITH_USAGE
                    if options is None
                    else options.model_copy(update={"include_usage": True})
                )
        else:
            exclude.add("stream_options")
            if request.stream:
                updates["stream"] = False
        if updates:
            request = request.model_copy(update=updates)
        return request.model_dump_json(
            exclude_unset=True, by_alias=True, exclude=exclude or None
        ).encode()


async def _drain(response: aiohttp.ClientResponse) -> None:
    """Read what follows ``[DONE]`` (the end of the chunked body), so the pooled connection is
    reused instead of closed; an upstream that keeps talking is cut after a moment."""
    content = response.content
    if content.at_eof():
        return
    with contextlib.suppress(TimeoutError, aiohttp.ClientError):
        async with asyncio.timeout(_DRAIN_SECONDS):
            while await content.readany():
                pass
