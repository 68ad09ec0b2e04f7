"""Handing a batch over to a provider's own batch API: a client for an OpenAI-compatible
upstream's Files and Batches API (upload the input file, create, retrieve, cancel, find, and
read the output and error files as checked results), and which presets have one.

Each call is one upstream request under the provider's clocks (connect, first byte, idle, and
its total), with errors translated once (``_upstream.py``) and the key scrubbed from whatever
the upstream sends back. Nothing is retried here: the batch runner polls and retries, and
``find`` recovers a batch whose creation was answered by a timeout.
"""

from __future__ import annotations

import asyncio
import io
import json
import urllib.parse
from collections.abc import AsyncGenerator, Iterable, Mapping
from types import TracebackType
from typing import Any

import aiohttp
from aiohttp.abc import AbstractResolver

from .. import __version__
from ..clock import Clock, SystemClock
from ..exceptions import (
    DeadlineExceededError,
    FirstByteTimeoutError,
    IdleTimeoutError,
    InvalidRequestError,
    LeapError,
    MalformedResponseError,
    ResponseTooLargeError,
)
from ..redact import Redactor, public_url
from ._upstream import MAX_ERROR_BODY, error_from_response, translate_client_error
from ._watch import Expired, ReadWatch
from .batch_results import BatchResult, ResultFileReader, ResultTally
from .batch_wire import (
    CHAT_COMPLETIONS_ENDPOINT,
    COMPLETION_WINDOW,
    InputLine,
    UploadedFile,
    UpstreamBatch,
    check_id,
    check_metadata,
    encode_input,
    parse_batch,
    parse_file,
)
from .compatible import OpenAICompatibleProvider
from .settings import ProviderSettings
from .urls import GuardedResolver

__all__ = [
    "FIRST_POLL_DELAY",
    "MAX_FIND_PAGES",
    "MAX_OBJECT_BYTES",
    "MAX_POLL_DELAY",
    "NATIVE_BATCH_PRESETS",
    "BatchAPIClient",
    "native_batch_support",
    "poll_delay",
]

# Presets whose service has an OpenAI-compatible Files + Batches API the gateway hands
# batches to, at the batch rate in prices.toml's [batch]. Groq's API has the same shape but
# the copies of its docs disagree on its discount (25% or 50%); Together's takes purpose
# "batch-api" and answers in a {"job": ...} envelope; Anthropic, Gemini and Mistral have
# batch APIs of their own shapes. None of those is handed over.
NATIVE_BATCH_PRESETS = frozenset({"openai"})
# How often the runner asks: soon after creating (small batches finish in minutes), then
# every minute at most (a batch may take its whole 24 h window).
FIRST_POLL_DELAY = 5.0
MAX_POLL_DELAY = 60.0
# A batch or file object, or a page of batches: small JSON, read at most this far.
MAX_OBJECT_BYTES = 4 * 1024 * 1024
# Pages of 100 batches ``find`` looks through, newest first.
MAX_FIND_PAGES = 10
_PAGE_SIZE = 100
_KEEPALIVE_SECONDS = 30.0


def native_batch_support(preset: str | None) -> bool:
    """True when the service of ``preset`` takes whole batches through its own API."""
    return preset is not None and preset.lower() in NATIVE_BATCH_PRESETS


def poll_delay(polls: int) -> float:
    """Seconds to wait before asking about a batch again, after ``polls`` questions: 5 s
    doubling to a minute."""
    return min(FIRST_POLL_DELAY * 2.0 ** min(max(polls, 0), 8), MAX_POLL_DELAY)


class BatchAPIClient:
    """Files and Batches calls against one OpenAI-compatible upstream, from its provider's
    settings (base URL, key, extra headers, timeouts, response cap). One aiohttp session,
    opened on first use and closed by ``aclose()``; use as an async context manager."""

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
        self._base = urllib.parse.urlsplit(settings.base_url)
        # What counts as a secret of these settings has one owner: the provider's secrets().
        self._redact = Redactor(OpenAICompatibleProvider(settings).secrets())
        headers = {"User-Agent": f"leapasgi/{__version__}", **settings.headers}
        if settings.api_key is not None:
            headers["Authorization"] = f"Bearer {settings.api_key.get_secret_value()}"
        self._headers = headers
        self._json_headers = {**headers, "Content-Type": "application/json"}

    def __repr__(self) -> str:
        shown = public_url(self.settings.base_url)
        return f"{type(self).__name__}(name={self.name!r}, base_url={shown!r})"

    async def __aenter__(self) -> BatchAPIClient:
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

    async def upload(
        self, lines: Iterable[InputLine], *, endpoint: str = CHAT_COMPLETIONS_ENDPOINT
    ) -> UploadedFile:
        """Upload ``lines`` as a batch's JSONL input file (purpose ``batch``); checked first
        (``encode_input``), so a batch the upstream would refuse is never sent."""
        data, _ = encode_input(lines, endpoint=endpoint)
        form = aiohttp.FormData()
        form.add_field("purpose", "batch")
        form.add_field(
            "file", io.BytesIO(data), filename="batch.jsonl", content_type="application/jsonl"
        )
        payload = await self._call("POST", self._url("files"), form=form)
        return parse_file(payload, provider=self.name)

    async def create(
        self,
        input_file_id: str,
        *,
        endpoint: str = CHAT_COMPLETIONS_ENDPOINT,
        metadata: Mapping[str, str] | None = None,
    ) -> UpstreamBatch:
        """Start a batch over an uploaded input file, with the 24 h completion window. Not
        idempotent: after a failure whose effect is unknown (a timeout), ``find`` tells
        whether the batch exists before another is created."""
        body: dict[str, Any] = {
            "input_file_id": _given_id(input_file_id, "input_file_id"),
            "endpoint": endpoint,
            "completion_window": COMPLETION_WINDOW,
        }
        if meta := check_metadata(metadata):
            body["metadata"] = meta
        batch = parse_batch(
            await self._call("POST", self._url("batches"), body=body), provider=self.name
        )
        if batch.input_file_id != input_file_id:
            raise self._mismatch("a batch over another input file")
        return batch

    async def retrieve(self, batch_id: str) -> UpstreamBatch:
        """The batch as it is now: status, request counts, output and error files."""
        url = self._url("batches", _given_id(batch_id, "batch_id"))
        return self._same(batch_id, await self._call("GET", url))

    async def cancel(self, batch_id: str) -> UpstreamBatch:
        """Ask the upstream to stop the batch; it answers ``cancelling`` and later settles at
        ``cancelled``, with the results of what ran before."""
        url = self._url("batches", _given_id(batch_id, "batch_id"), "cancel")
        return self._same(batch_id, await self._call("POST", url))

    async def find(self, input_file_id: str) -> UpstreamBatch | None:
        """The batch made over ``input_file_id``, among the newest ``MAX_FIND_PAGES`` pages of
        the account's batches; None when there is none (the create never took effect)."""
        wanted = _given_id(input_file_id, "input_file_id")
        after: str | None = None
        for _ in range(MAX_FIND_PAGES):
            query = {"limit": str(_PAGE_SIZE), **({"after": after} if after else {})}
            page = await self._call("GET", self._url("batches", query=query))
            entries = page.get("data") if isinstance(page, dict) else None
            if not isinstance(entries, list):
                raise MalformedResponseError(
                    f"Provider {self.name!r} sent a list of batches without its data",
                    provider=self.name,
                )
            for entry in entries:
                if isinstance(entry, dict) and entry.get("input_file_id") == wanted:
                    return parse_batch(entry, provider=self.name)
            if not entries or page.get("has_more") is not True:
                return None
            last = entries[-1]
            after = check_id(
                last.get("id") if isinstance(last, dict) else None,
                what="batch",
                provider=self.name,
            )
        return None

    async def delete_file(self, file_id: str) -> bool:
        """Delete a file the upstream keeps (an input, output or error file, once its results
        are stored); True when the upstream says it is gone."""
        url = self._url("files", _given_id(file_id, "file_id"))
        payload = await self._call("DELETE", url)
        return isinstance(payload, dict) and payload.get("deleted") is True

    def tally(
        self,
        expected: Iterable[str],
        *,
        kept: Iterable[str] = (),
        max_line_bytes: int | None = None,
    ) -> ResultTally:
        """A tally of the custom ids that were submitted (``kept``: those whose answers the
        caller already stored), scrubbing this upstream's secrets from every line."""
        if max_line_bytes is None:
            return ResultTally(expected, kept=kept, redact=self._redact)
        return ResultTally(expected, kept=kept, max_line_bytes=max_line_bytes, redact=self._redact)

    async def results(
        self, batch: UpstreamBatch, tally: ResultTally, *, max_bytes: int | None = None
    ) -> AsyncGenerator[BatchResult, None]:
        """The answers in a finished batch's output file, then its error file, each checked
        by ``tally`` (whose ``problems`` and ``missing()`` tell the rest). The two files
        together are read up to ``max_bytes`` (default ``tally.default_cap()``): past it,
        ResponseTooLargeError. The provider's total timeout bounds each file's download,
        the consumer's time included: store the answers, do not serve them from the loop."""
        if not batch.status.has_results:
            raise InvalidRequestError(
                f"Batch {batch.id!r} has no results while {batch.status}", provider=self.name
            )
        budget = [tally.default_cap() if max_bytes is None else max_bytes]
        for file_id, reader in (
            (batch.output_file_id, tally.reader("output")),
            (batch.error_file_id, tally.reader("error")),
        ):
            if file_id is not None:
                async for result in self._download(file_id, reader, budget):
                    yield result

    async def _download(
        self, file_id: str, reader: ResultFileReader, budget: list[int]
    ) -> AsyncGenerator[BatchResult, None]:
        until = self._until()
        url = self._url("files", check_id(file_id, what="file", provider=self.name), "content")
        async with await self._send("GET", url, until) as response:
            watch = self._watch(until)
            read = response.content.readany
            try:
                while data := await watch.read(read):
                    budget[0] -= len(data)
                    if budget[0] < 0:
                        raise ResponseTooLargeError(
                            f"Provider {self.name!r} sent batch results larger than the cap",
                            provider=self.name,
                        )
                    for result in reader.feed(data):
                        yield result
            except aiohttp.ClientError as exc:
                raise translate_client_error(exc, provider=self.name, in_body=True) from exc
            except Expired as expired:
                raise self._timeout(expired.kind, headers=False) from None
            finally:
                watch.close()
        for result in reader.close():
            yield result

    def _url(self, *segments: str, query: Mapping[str, str] | None = None) -> str:
        base = self._base
        path = base.path.rstrip("/") + "".join(
            "/" + urllib.parse.quote(s, safe="") for s in segments
        )
        params = urllib.parse.parse_qsl(base.query) + list((query or {}).items())
        return urllib.parse.urlunsplit(
            base._replace(path=path, query=urllib.parse.urlencode(params))
        )

    def _same(self, batch_id: str, payload: Any) -> UpstreamBatch:
        batch = parse_batch(payload, provider=self.name)
        if batch.id != batch_id:
            raise self._mismatch("another batch than the one asked for")
        return batch

    def _mismatch(self, what: str) -> LeapError:
        return MalformedResponseError(
            f"Provider {self.name!r} answered with {what}", provider=self.name
        )

    async def _call(
        self,
        method: str,
        url: str,
        *,
        body: dict[str, Any] | None = None,
        form: aiohttp.FormData | None = None,
    ) -> Any:
        """One request whose answer is a small JSON object, scrubbed before it is parsed."""
        until = self._until()
        data = json.dumps(body).encode() if body is not None else form
        async with await self._send(method, url, until, data=data) as response:
            raw = await self._read(response, until, limit=self._object_cap(), strict=True)
        try:
            return json.loads(self._redact(raw.decode()))
        except (ValueError, RecursionError):
            raise MalformedResponseError(
                f"Provider {self.name!r} answered with something other than JSON "
                f"({len(raw)} bytes)",
                provider=self.name,
            ) from None

    async def _send(
        self,
        method: str,
        url: str,
        until: float,
        *,
        data: bytes | aiohttp.FormData | None = None,
    ) -> aiohttp.ClientResponse:
        """Send a request and wait for its headers; error statuses raise, with the body read.
        An upload's headers may wait for the whole file to be sent: its clock is the total."""
        uploading = isinstance(data, aiohttp.FormData)
        headers = self._json_headers if isinstance(data, bytes) else self._headers
        stage = until - self._clock.monotonic() if uploading else self.settings.timeouts.first_byte
        limit, clock = self._budget(stage, until)
        try:
            async with asyncio.timeout(limit):
                response = await self._client().request(
                    method, url, data=data, headers=headers, allow_redirects=False
                )
        except aiohttp.ClientError as exc:
            raise translate_client_error(exc, provider=self.name) from exc
        except TimeoutError:
            raise self._timeout(clock, headers=True) from None
        if response.status >= 300:
            async with response:
                body = await self._read(response, until, limit=MAX_ERROR_BODY, strict=False)
            raise error_from_response(
                response.status,
                response.headers,
                body,
                provider=self.name,
                now=self._clock.time(),
                redact=self._redact,
            )
        return response

    async def _read(
        self, response: aiohttp.ClientResponse, until: float, *, limit: int, strict: bool
    ) -> bytes:
        """The body up to ``limit`` bytes: past it, ResponseTooLargeError when ``strict``,
        else the first ``limit`` bytes (error bodies)."""
        parts: list[bytes] = []
        size = 0
        watch = self._watch(until)
        read = response.content.readany
        try:
            while data := await watch.read(read):
                parts.append(data)
                size += len(data)
                if size > limit:
                    if strict:
                        raise ResponseTooLargeError(
                            f"Provider {self.name!r} sent an answer larger than {limit} bytes",
                            provider=self.name,
                        )
                    break
        except aiohttp.ClientError as exc:
            raise translate_client_error(exc, provider=self.name, in_body=True) from exc
        except Expired as expired:
            raise self._timeout(expired.kind, headers=False) from None
        finally:
            watch.close()
        return b"".join(parts)[:limit]

    def _client(self) -> aiohttp.ClientSession:
        # The provider's session, as OpenAICompatibleProvider opens it: the address connected
        # to is checked, no cookies, no proxy from the environment.
        session = self._session
        if session is None or session.closed:
            connector = aiohttp.TCPConnector(
                limit=self.settings.max_connections,
                keepalive_timeout=_KEEPALIVE_SECONDS,
                resolver=GuardedResolver(self._resolver),
            )
            session = aiohttp.ClientSession(
                connector=connector,
                timeout=aiohttp.ClientTimeout(
                    total=None, connect=None, sock_connect=self.settings.timeouts.connect
                ),
                cookie_jar=aiohttp.DummyCookieJar(),
                trust_env=False,
                auto_decompress=True,
            )
            self._session = session
        return session

    def _object_cap(self) -> int:
        return min(MAX_OBJECT_BYTES, self.settings.max_response_bytes)

    def _until(self) -> float:
        return self._clock.monotonic() + self.settings.timeouts.total

    def _watch(self, until: float) -> ReadWatch:
        remaining = max(until - self._clock.monotonic(), 0.0)
        return ReadWatch(idle=self.settings.timeouts.idle, remaining=remaining)

    def _budget(self, stage: float, until: float) -> tuple[float, str]:
        remaining = until - self._clock.monotonic()
        if remaining <= stage:
            return max(remaining, 0.0), "deadline"
        return stage, "stage"

    def _timeout(self, clock: str, *, headers: bool) -> LeapError:
        timeouts = self.settings.timeouts
        name = self.name
        if clock == "deadline":
            return DeadlineExceededError(
                f"Provider {name!r} did not finish within the {timeouts.total:g} s deadline",
                provider=name,
            )
        if headers:
            return FirstByteTimeoutError(
                f"Provider {name!r} sent no response within {timeouts.first_byte:g} s",
                provider=name,
            )
        return IdleTimeoutError(
            f"Provider {name!r} went silent for {timeouts.idle:g} s", provider=name
        )


def _given_id(value: str, param: str) -> str:
    """An id the caller passes, checked before it goes into a URL path."""
    try:
        return check_id(value, what=param, provider=None)
    except MalformedResponseError:
        raise InvalidRequestError(f"{param} is not a plain id", param=param) from None
