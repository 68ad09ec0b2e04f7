"""What a hook is, and the request as every hook sees it whatever its protocol."""

from __future__ import annotations

import time
from random import getrandbits
from typing import TYPE_CHECKING, Any

from ..native import NativeEvent, NativeReply, ProtocolRequest, WireProtocol
from ..types import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionMessage,
    ChatCompletionRequest,
    Choice,
    Usage,
)
from .texts import Rewrite, chat_texts, native_texts, rewrite_chat, rewrite_native

if TYPE_CHECKING:
    from ..exceptions import LeapError
    from ..tenants.policy import Tenant

__all__ = ["Answer", "Chunk", "Hook", "HookContext"]

# A whole answer (None after a stream that ended well), and one streamed chunk or event.
Answer = ChatCompletion | NativeReply | None
Chunk = ChatCompletionChunk | NativeEvent


class HookContext:
    """One request as hooks see it: its model, protocol, tenant and text, never its headers.
    ``state`` is the hooks' own, kept from ``before`` to the request's end; ``answered_by``
    names the hook that answered the request itself (None: a provider did)."""

    __slots__ = ("_request", "answered_by", "protocol", "state", "stream", "tenant")

    def __init__(
        self,
        request: ChatCompletionRequest | ProtocolRequest,
        *,
        stream: bool,
        tenant: Tenant | None,
    ) -> None:
        self._request = request
        self.protocol = (
            request.native.protocol
            if isinstance(request, ProtocolRequest)
            else WireProtocol.CHAT_COMPLETIONS
        )
        self.stream = stream
        self.tenant = tenant
        self.state: dict[str, Any] = {}
        self.answered_by: str | None = None

    @property
    def model(self) -> str:
        """The model (or alias) the client asked for."""
        return self._request.model

    @property
    def request(self) -> ChatCompletionRequest | ProtocolRequest:
        """The request as the dispatcher will route it (after earlier hooks' changes)."""
        return self._request

    def texts(self) -> list[str]:
        """The text parts of the prompt, in order (see ``hooks.texts`` for where they are)."""
        request = self._request
        if isinstance(request, ProtocolRequest):
            return native_texts(request.native)
        return chat_texts(request)

    def rewrite_texts(self, rewrite: Rewrite) -> None:
        """Replace each text part with ``rewrite(text)``: in the native body and in its chat
        form alike, so every provider receives the same text."""
        request = self._request
        if isinstance(request, ProtocolRequest):
            native = rewrite_native(request.native, rewrite)
            if native is not request.native:
                self._request = request.rewritten(native, lambda chat: rewrite_chat(chat, rewrite))
        else:
            self._request = rewrite_chat(request, rewrite)

    def reply(self, content: str, *, finish_reason: str = "stop") -> ChatCompletion:
        """A chat completion saying ``content``, for a ``before`` hook to answer with (no
        tokens used: its usage is zero)."""
        return ChatCompletion(
            id=f"chatcmpl-hook{getrandbits(64):016x}",
            created=int(time.time()),
            model=self.model,
            choices=[
                Choice(message=ChatCompletionMessage(content=content), finish_reason=finish_reason)
            ],
            usage=Usage(),
        )


class Hook:
    """A request hook: override any of these, sync or async. Hooks run in the order they
    were given; ``name`` names one in the trail and the log (the class name by default).

    ``before`` may change the request (``ctx.rewrite_texts``), refuse it by raising a
    LeapError (the client gets it in its protocol's error shape), or answer it by returning
    a ChatCompletion (``ctx.reply(text)``; no provider is called, later ``before`` hooks do not
    run, and a Responses or Messages client gets it translated); ``after`` sees a whole
    answer (None when a stream ended well), ``on_chunk`` each streamed chunk or native event,
    ``on_error`` the error a request ends with. Any other exception a hook raises ends that
    request with a 500 ``hook_failed`` naming the hook.
    """

    name: str = ""

    def before(self, ctx: HookContext) -> Any:
        """Called before the request is routed; a ChatCompletion returned (or awaited) is the
        request's answer."""

    def after(self, ctx: HookContext, answer: Answer) -> Any:
        """Called with the answer."""

    def on_chunk(self, ctx: HookContext, chunk: Chunk) -> Any:
        """Called with each streamed chunk (read-only)."""

    def on_error(self, ctx: HookContext, error: LeapError) -> Any:
        """Called with the error the request ends with; what it raises is logged, ignored."""
