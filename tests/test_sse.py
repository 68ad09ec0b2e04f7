from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from leapasgi.sse import DONE, PING, SSEDecoder, SSEEvent, encode_data, encode_json

STREAM = (
    b": ping\n\n"
    b'data: {"a": 1}\n\n'
    b"event: message\nid: 7\nretry: 1500\ndata: first\ndata: second\n\n"
    b"data:no-space\n\n"
    b"data: [DONE]\n\n"
)
EXPECTED = [
    SSEEvent('{"a": 1}'),
    SSEEvent("first\nsecond", event="message", id="7", retry=1500),
    SSEEvent("no-space", id="7", retry=1500),
    SSEEvent("[DONE]", id="7", retry=1500),
]


def decode(*reads: bytes) -> list[SSEEvent]:
    decoder = SSEDecoder()
    events: list[SSEEvent] = []
    for read in reads:
        events += decoder.feed(read)
    return events + decoder.close()


def test_a_whole_stream_in_one_read() -> None:
    assert decode(STREAM) == EXPECTED


@pytest.mark.parametrize("size", [1, 2, 3, 5, 7, 13])
def test_events_split_across_reads_of_any_size(size: int) -> None:
    reads = [STREAM[i : i + size] for i in range(0, len(STREAM), size)]
    assert decode(*reads) == EXPECTED


@pytest.mark.parametrize("newline", [b"\r\n", b"\r"])
def test_crlf_and_cr_line_ends(newline: bytes) -> None:
    stream = STREAM.replace(b"\n", newline)
    assert decode(stream) == EXPECTED
    # A CR at the end of one read and its LF at the start of the next are one line end.
    one_byte = [stream[i : i + 1] for i in range(len(stream))]
    assert decode(*one_byte) == EXPECTED


def test_comment_lines_and_empty_events_dispatch_nothing() -> None:
    assert decode(b": ping\n\n: keep-alive\n\n\n\nevent: x\n\n") == []


def test_multibyte_utf8_split_across_reads() -> None:
    data = 'data: {"t": "héllo ✓"}\n\n'.encode()
    split = data.index("✓".encode()) + 1
    assert decode(data[:split], data[split:]) == [SSEEvent('{"t": "héllo ✓"}')]


def test_a_missing_blank_line_at_the_end_still_dispatches_complete_lines() -> None:
    assert decode(b"data: last\n") == [SSEEvent("last")]


def test_an_unterminated_last_line_is_dropped_as_cut() -> None:
    assert decode(b'data: {"a": 1}\n\ndata: {"b"') == [SSEEvent('{"a": 1}')]


def test_empty_data_is_not_an_event() -> None:
    assert decode(b"data:\n\ndata: \n\n") == []


def test_a_field_without_colon_and_unknown_fields_are_ignored() -> None:
    assert decode(b"data\nfoo: bar\ndata: x\n\n") == [SSEEvent("\nx")]


def test_encoding_matches_what_the_sdk_reads() -> None:
    assert encode_data("hello") == b"data: hello\n\n"
    assert encode_data("a\nb") == b"data: a\ndata: b\n\n"
    assert encode_json({"x": [1, 2]}) == b'data: {"x":[1,2]}\n\n'
    assert DONE == b"data: [DONE]\n\n"
    assert PING.startswith(b":")
    assert decode(encode_data("a\nb") + encode_json({"x": 1}) + PING + DONE) == [
        SSEEvent("a\nb"),
        SSEEvent('{"x":1}'),
        SSEEvent("[DONE]"),
    ]


_text = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n"), max_size=20
)


@given(
    events=st.lists(st.lists(_text, min_size=1, max_size=3), min_size=1, max_size=5),
    newline=st.sampled_from(["\n", "\r\n", "\r"]),
    cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=8),
)
def test_any_split_of_any_stream_decodes_to_the_same_events(
    events: list[list[str]], newline: str, cuts: list[int]
) -> None:
    body = "".join(
        "".join(f"data: {line}{newline}" for line in lines) + newline for lines in events
    ).encode()
    points = sorted({min(c, len(body)) for c in cuts} | {0, len(body)})
    reads = [body[a:b] for a, b in itertools.pairwise(points)]
    # An event whose data is empty is not dispatched (WHATWG rule), so the SDK never sees it.
    expected = [SSEEvent("\n".join(lines)) for lines in events if "\n".join(lines)]
    assert decode(*reads) == expected
