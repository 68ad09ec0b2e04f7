"""OpenAI's Responses API over the chat completions core: the request, its translation to chat,
and the answer (a Response object or its event stream) built from chat results. Pure data
conversion, no I/O.

    responses_request   ResponsesRequest, parse_responses_request, input_items
    responses_chat      responses_to_chat: a request and its history as one chat request
    responses_output    response_from_chat, output_items, ids, usage
    responses_stream    ResponsesStreamWriter: chat chunks -> Responses SSE events
    responses_native    classify_event: what a native upstream's stream event means
"""

from __future__ import annotations

from .responses_chat import responses_to_chat
from .responses_native import EventKind, classify_event
from .responses_output import (
    new_call_id,
    new_function_call_id,
    new_message_id,
    new_response_id,
    output_items,
    response_from_chat,
)
from .responses_request import ResponsesRequest, input_items, item_type, parse_responses_request
from .responses_stream import ResponsesStreamWriter

__all__ = [
    "EventKind",
    "ResponsesRequest",
    "ResponsesStreamWriter",
    "classify_event",
    "input_items",
    "item_type",
    "new_call_id",
    "new_function_call_id",
    "new_message_id",
    "new_response_id",
    "output_items",
    "parse_responses_request",
    "response_from_chat",
    "responses_to_chat",
]
