"""server/sse.py: the incremental event-stream decoder and the framing Sluice emits.

Two hypothesis properties carry most of the weight: feeding a stream in pieces
decodes exactly as feeding it whole (whatever the cut points, inside a CRLF or
a BOM included), and a stream serialised from a list of events — every line
ending, optional space, comment and ignored field the WHATWG format allows —
decodes back to those events' data. The explicit cases pin what real
upstreams send (llama.cpp and sse-starlette keepalives, CR-only servers).
"""

from __future__ import annotations

import itertools
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from server.sse import DONE, DONE_EVENT, KEEPALIVE, EventTooLarge, SSEDecoder, frame

BOM = b"\xef\xbb\xbf"
LINE_ENDINGS = (b"\n", b"\r", b"\r\n")


def decode_whole(stream: bytes, *, max_event_bytes: int = 1 << 20) -> list[bytes]:
    return SSEDecoder(max_event_bytes=max_event_bytes).feed(stream)


def decode_pieces(pieces: list[bytes], *, max_event_bytes: int = 1 << 20) -> list[bytes]:
    decoder = SSEDecoder(max_event_bytes=max_event_bytes)
    events: list[bytes] = []
    for piece in pieces:
        events.extend(decoder.feed(piece))
    return events


def split_at(stream: bytes, cuts: list[int]) -> list[bytes]:
    """The stream cut at the given offsets (deduplicated, so no piece is empty)."""
    points = sorted({c for c in cuts if 0 < c < len(stream)})
    bounds = [0, *points, len(stream)]
    return [stream[a:b] for a, b in itertools.pairwise(bounds)]


def reference_decode(stream: bytes) -> list[bytes]:
    """An independent, whole-stream reading of the format, for comparison.

    Like the decoder (and unlike a strict WHATWG reading) an event whose only
    data line is empty is dispatched as ``b""``.
    """
    if stream.startswith(BOM):
        stream = stream[3:]
    lines = re.split(rb"\r\n|\r|\n", stream)
    lines.pop()  # the unterminated tail is never a complete line
    events: list[bytes] = []
    data: list[bytes] | None = None
    for line in lines:
        if not line:
            if data is not None:
                events.append(b"\n".join(data))
            data = None
        elif line.startswith(b":"):
            continue
        else:
            name, colon, value = line.partition(b":")
            if name != b"data":
                continue
            if colon and value.startswith(b" "):
                value = value[1:]
            data = [*(data or []), value]
    return events


# ---------------------------------------------------------------- strategies

# Bytes chosen to stress the parser: line endings, field names, colons,
# spaces, BOM bytes and some ordinary text.
_TOKENS = st.sampled_from([
    b"data", b"data:", b"data: ", b":", b" ", b"\r", b"\n", b"\r\n", BOM, b"\xef", b"\xbb",
    b"event: x", b"id: 1", b"retry: 10", b"x", b'{"a": 1}', b"[DONE]", b"\xff",
])
token_streams = st.lists(_TOKENS, max_size=40).map(b"".join)

line_text = st.one_of(
    st.binary(max_size=12).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"")),
    st.sampled_from([b"", b" ", b"  two spaces", b":", b"[DONE]", b'{"a": 1}', BOM, b"\xc3\xa9"]),
)


@st.composite
def serialised_events(draw: st.DrawFn) -> tuple[bytes, list[bytes]]:
    """A stream of random events and the payloads it must decode to."""
    lines: list[bytes] = []
    expected: list[bytes] = []
    events = draw(st.lists(st.lists(line_text, max_size=4), max_size=6))
    for data_lines in events:
        body: list[bytes] = []
        for value in data_lines:
            body.extend(draw(st.lists(_ignored_line(), max_size=2)))
            body.append(_data_line(draw, value))
        body.extend(draw(st.lists(_ignored_line(), max_size=2)))
        lines.extend(body)
        lines.append(b"")  # the blank line that dispatches
        if data_lines:
            expected.append(b"\n".join(data_lines))
    # An unterminated last event is discarded, whatever it holds.
    tail = draw(st.lists(line_text, max_size=2))
    lines.extend(_data_line(draw, value) for value in tail)

    stream = draw(st.sampled_from([b"", BOM]))
    previous_ending = b""
    for line in lines:
        ending = draw(st.sampled_from(LINE_ENDINGS))
        if previous_ending == b"\r" and not line and ending == b"\n":
            ending = b"\r\n"  # a CR then a bare LF would read as one CRLF line ending
        stream += line + ending
        previous_ending = ending
    return stream, expected


def _data_line(draw: st.DrawFn, value: bytes) -> bytes:
    if not value and draw(st.booleans()):
        return b"data"  # no colon: the field's value is empty
    if value.startswith(b" ") or draw(st.booleans()):
        return b"data: " + value
    return b"data:" + value  # the space after the colon is optional


def _ignored_line() -> st.SearchStrategy[bytes]:
    return st.one_of(
        line_text.map(lambda text: b":" + text),  # comment
        line_text.map(lambda text: b"event: " + text),
        line_text.map(lambda text: b"id:" + text),
        st.integers(0, 10_000).map(lambda n: b"retry: %d" % n),
        st.sampled_from([b"data : not data", b"Data: not data", b"unknown: field", b"datum"]),
    )


# ---------------------------------------------------------------- properties


@given(stream=token_streams, cuts=st.lists(st.integers(0, 400), max_size=12))
def test_split_reads_decode_like_one_read(stream: bytes, cuts: list[int]) -> None:
    pieces = split_at(stream, cuts)
    assert decode_pieces(pieces) == decode_whole(stream)


@given(stream=token_streams)
def test_whole_stream_matches_the_reference_reading(stream: bytes) -> None:
    assert decode_whole(stream) == reference_decode(stream)


@given(stream=token_streams)
def test_byte_at_a_time_decodes_like_one_read(stream: bytes) -> None:
    pieces = [stream[i:i + 1] for i in range(len(stream))]
    assert decode_pieces(pieces) == decode_whole(stream)


@given(case=serialised_events(), cuts=st.lists(st.integers(0, 600), max_size=10))
def test_serialised_events_decode_to_their_data(
    case: tuple[bytes, list[bytes]], cuts: list[int]
) -> None:
    stream, expected = case
    assert decode_whole(stream) == expected
    assert decode_pieces(split_at(stream, cuts)) == expected


@given(case=serialised_events())
def test_serialised_events_decode_byte_at_a_time(case: tuple[bytes, list[bytes]]) -> None:
    stream, expected = case
    assert decode_pieces([stream[i:i + 1] for i in range(len(stream))]) == expected


@given(payloads=st.lists(
    st.binary(max_size=40).map(lambda b: b.replace(b"\r", b"")), max_size=5))
def test_frame_round_trips_through_the_decoder(payloads: list[bytes]) -> None:
    # Payloads are CR-free: the decoder never produces a CR (CR ends a line),
    # so frame() only ever sees CR-free payloads in the relay.
    assert decode_whole(b"".join(frame(p) for p in payloads)) == payloads


# ------------------------------------------------------------ explicit cases


def test_the_docstring_example_waits_for_the_rest_of_a_line() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b'data: {"a": 1}\n\nda') == [b'{"a": 1}']
    assert decoder.feed(b'ta: {"b": 2}\n') == []
    assert decoder.feed(b"\n") == [b'{"b": 2}']


def test_several_events_in_one_read() -> None:
    assert decode_whole(b"data: 1\n\ndata: 2\n\ndata: 3\n\n") == [b"1", b"2", b"3"]


def test_data_lines_join_with_lf() -> None:
    assert decode_whole(b"data: a\ndata: b\ndata: c\n\n") == [b"a\nb\nc"]


@pytest.mark.parametrize(
    ("line", "payload"),
    [
        (b"data: x", b"x"),
        (b"data:x", b"x"),
        (b"data:  x", b" x"),  # only one space is optional
        (b"data: x ", b"x "),
        (b"data: a: b", b"a: b"),  # only the first colon separates
        (b"data:", b""),
        (b"data", b""),  # no colon: the whole line is the name, the value is empty
    ],
)
def test_data_field_value(line: bytes, payload: bytes) -> None:
    assert decode_whole(line + b"\n\n") == [payload]


def test_data_without_colon_contributes_an_empty_line() -> None:
    assert decode_whole(b"data\ndata: x\ndata\n\n") == [b"\nx\n"]


def test_comment_only_events_are_not_dispatched() -> None:
    assert decode_whole(b": hello\n\n:\n\n: a\n: b\n\n") == []


def test_comments_inside_an_event_are_ignored() -> None:
    assert decode_whole(b"data: a\n: note\ndata: b\n\n") == [b"a\nb"]


@pytest.mark.parametrize(
    "line",
    [b"event: message", b"id: 7", b"retry: 3000", b"foo: bar", b"data : x", b"Data: x",
     b"datax: y", b" data: x"],
)
def test_other_fields_carry_nothing(line: bytes) -> None:
    assert decode_whole(line + b"\n\n") == []
    assert decode_whole(line + b"\ndata: kept\n" + line + b"\n\n") == [b"kept"]


def test_blank_lines_without_data_dispatch_nothing() -> None:
    assert decode_whole(b"\n\n\r\n\r\r\n") == []


def test_trailing_unterminated_event_is_discarded() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: done\n\ndata: half\n") == [b"done"]
    assert decoder.feed(b"data: more") == []
    # The next event starts fresh only after a blank line; the half event is
    # simply never completed — the stream ends here.
    assert decode_whole(b"data: a\n\ndata: b") == [b"a"]
    assert decode_whole(b"data: a\n\ndata: b\n") == [b"a"]


@pytest.mark.parametrize(
    "keepalive",
    [
        b":\n\n",  # llama.cpp server
        b": ping - 2024-06-01 12:00:00.123456+00:00\n\n",  # sse-starlette (vLLM, FastAPI)
        b": ping\r\n\r\n",
        KEEPALIVE,  # Sluice's own, with no blank line
    ],
)
def test_keepalives_between_events_are_invisible(keepalive: bytes) -> None:
    stream = keepalive + b"data: 1\n\n" + keepalive * 3 + b"data: 2\n\n" + keepalive
    assert decode_whole(stream) == [b"1", b"2"]
    assert decode_pieces(split_at(stream, list(range(0, len(stream), 3)))) == [b"1", b"2"]


def test_sluice_keepalive_is_a_comment_line_without_blank_line() -> None:
    assert KEEPALIVE.startswith(b":")
    assert KEEPALIVE.endswith(b"\n")
    assert not KEEPALIVE.endswith(b"\n\n")
    # Inside an event it does not end the event either.
    assert decode_whole(b"data: a\n" + KEEPALIVE + b"data: b\n\n") == [b"a\nb"]


@pytest.mark.parametrize("ending", LINE_ENDINGS)
def test_every_line_ending(ending: bytes) -> None:
    stream = b"data: a" + ending + b"data: b" + ending + ending + b"data: c" + ending + ending
    assert decode_whole(stream) == [b"a\nb", b"c"]


def test_crlf_split_across_reads_is_one_line_ending() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\r") == []
    assert decoder.feed(b"\ndata: b\r") == []
    assert decoder.feed(b"\n\r") == [b"a\nb"]
    assert decoder.feed(b"\n") == []  # the LF of the dispatching CRLF, not another blank line
    assert decoder.feed(b"data: c\r\n\r\n") == [b"c"]


def test_cr_then_blank_line_in_the_next_read() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\r") == []
    assert decoder.feed(b"\r") == [b"a"]  # CR CR: the second CR is a blank line


def test_a_leading_bom_is_stripped_once() -> None:
    assert decode_whole(BOM + b"data: a\n\n") == [b"a"]
    # A second BOM belongs to the first line's name, which is then not "data".
    assert decode_whole(BOM + BOM + b"data: a\n\ndata: b\n\n") == [b"b"]
    # A BOM later in the stream is ordinary bytes.
    assert decode_whole(b"data: a\n\n" + BOM + b"data: b\n\n") == [b"a"]
    assert decode_whole(b"data: " + BOM + b"\n\n") == [BOM]


@pytest.mark.parametrize("cut", [1, 2, 3, 4])
def test_a_bom_split_across_reads_is_still_stripped(cut: int) -> None:
    stream = BOM + b"data: a\n\n"
    assert decode_pieces([stream[:cut], stream[cut:]]) == [b"a"]
    assert decode_pieces([stream[i:i + 1] for i in range(len(stream))]) == [b"a"]


def test_bom_prefix_that_is_not_a_bom_is_kept() -> None:
    # The decoder holds back b"\xef" in case a BOM follows; when none does, the
    # byte must stay part of the first line, which is then not a data line.
    decoder = SSEDecoder()
    assert decoder.feed(b"\xef") == []
    assert decoder.feed(b"data: a\n\ndata: b\n\n") == [b"b"]
    assert decode_pieces([b"\xef\xbb", b"data: a\n\n", b"data: b\n\n"]) == [b"b"]
    assert decode_whole(b"\xef\xbbdata: a\n\ndata: b\n\n") == [b"b"]


def test_empty_reads_return_nothing() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"") == []
    assert decoder.feed(b"data: a\n") == []
    assert decoder.feed(b"") == []
    assert decoder.feed(b"\n") == [b"a"]


def test_empty_read_between_cr_and_lf_keeps_the_crlf_whole() -> None:
    stream_pieces = [b"data: x\r", b"", b"\ndata: y\r\n\r\n"]
    assert decode_pieces(stream_pieces) == decode_whole(b"".join(stream_pieces)) == [b"x\ny"]


def test_done_event() -> None:
    assert decode_whole(DONE_EVENT) == [DONE]
    assert frame(DONE) == DONE_EVENT


# ---------------------------------------------------------------- bounds


def test_event_too_large_across_many_lines() -> None:
    decoder = SSEDecoder(max_event_bytes=100)
    with pytest.raises(EventTooLarge):
        decoder.feed(b"data: " + b"x" * 60 + b"\n" + b"data: " + b"y" * 60 + b"\n")


def test_event_too_large_across_many_reads() -> None:
    decoder = SSEDecoder(max_event_bytes=100)
    line = b"data: " + b"x" * 30 + b"\n"
    for _ in range(3):  # 93 bytes of data so far: under the bound
        assert decoder.feed(line) == []
    with pytest.raises(EventTooLarge):
        decoder.feed(line)


def test_unterminated_line_too_large() -> None:
    decoder = SSEDecoder(max_event_bytes=100)
    decoder.feed(b"data: " + b"x" * 50)
    with pytest.raises(EventTooLarge):
        decoder.feed(b"x" * 100)


def test_a_long_comment_line_is_bounded_too() -> None:
    # An unterminated line may grow to the bound plus the length of "data: "...
    decoder = SSEDecoder(max_event_bytes=100)
    for _ in range(5):  # a 105-byte unterminated line: under 100 + 6
        assert decoder.feed(b":" + b"c" * 20) == []
    with pytest.raises(EventTooLarge):  # ...and no further, even as a comment
        decoder.feed(b":" + b"c" * 20)


def test_events_under_the_bound_pass_and_the_bound_is_per_event() -> None:
    decoder = SSEDecoder(max_event_bytes=100)
    event = b"data: " + b"x" * 40 + b"\n\n"
    for _ in range(10):  # 400 bytes in all, but each event is small
        assert decoder.feed(event) == [b"x" * 40]


def test_default_bound_is_one_mebibyte() -> None:
    payload = b"x" * ((1 << 20) - 1024)
    assert decode_whole(b"data: " + payload + b"\n\n") == [payload]
    with pytest.raises(EventTooLarge):
        decode_whole(b"data: " + b"x" * ((1 << 20) + 1) + b"\n\n")


def test_the_bound_does_not_depend_on_read_boundaries() -> None:
    stream = b"data: " + b"x" * 8 + b"\n\n"  # an 8-byte payload under a 10-byte bound
    assert decode_whole(stream, max_event_bytes=10) == [b"x" * 8]
    assert decode_pieces([stream[:-2], stream[-2:]], max_event_bytes=10) == [b"x" * 8]


# ---------------------------------------------------------------- framing


def test_frame_single_line() -> None:
    assert frame(b'{"a": 1}') == b'data: {"a": 1}\n\n'
    assert frame(b"") == b"data: \n\n"


def test_frame_multi_line() -> None:
    assert frame(b"a\nb\n") == b"data: a\ndata: b\ndata: \n\n"
    assert decode_whole(frame(b"a\nb\n")) == [b"a\nb\n"]


@pytest.mark.parametrize(
    "payload",
    [b"x", b"", b"\n", b" leading space", b":colon first", b"a\n\nb", b"[DONE]", BOM],
)
def test_frame_round_trips_explicit_payloads(payload: bytes) -> None:
    assert decode_whole(frame(payload)) == [payload]
    assert decode_whole(frame(payload) + frame(payload)) == [payload, payload]


@given(payloads=st.lists(st.binary(max_size=60).filter(lambda b: b"\n" not in b and b"\r" not in b),
                         min_size=1, max_size=10))
def test_one_event_per_read_decodes_like_the_general_path(payloads: list[bytes]) -> None:
    """After the first read, a read holding exactly one event takes `feed`'s short path."""
    reads = [b"data: " + payload + b"\n\n" for payload in payloads]
    one_at_a_time = SSEDecoder()
    got = [event for read in reads for event in one_at_a_time.feed(read)]
    assert got == payloads == SSEDecoder().feed(b"".join(reads))
