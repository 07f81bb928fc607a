"""HTTP/1.1 response framing (`server.backends.wire`), without sockets."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from server.backends.wire import BodyFraming, Head, ProtocolError, parse_head, request_bytes


def test_request_is_one_block_with_its_length() -> None:
    message = request_bytes("/v1/chat/completions", "127.0.0.1:9000",
                            {"content-type": "application/json"}, b'{"a":1}')
    head, _, body = message.partition(b"\r\n\r\n")
    assert head.split(b"\r\n") == [b"POST /v1/chat/completions HTTP/1.1",
                                   b"host: 127.0.0.1:9000", b"content-length: 7",
                                   b"content-type: application/json"]
    assert body == b'{"a":1}'


def test_head_waits_for_the_blank_line() -> None:
    assert parse_head(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n") is None
    head = parse_head(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\ndata")
    assert head == Head(200, {"content-type": "text/event-stream"}, b"data")
    assert head.keep_alive


def test_interim_heads_are_skipped_and_connection_close_is_seen() -> None:
    head = parse_head(b"HTTP/1.1 100 Continue\r\n\r\n"
                      b"HTTP/1.1 503 Busy\r\nConnection: close\r\n\r\n")
    assert head is not None
    assert head.status == 503
    assert not head.keep_alive


@pytest.mark.parametrize("data", [b"SSH-2.0-OpenSSH\r\n\r\n", b"HTTP/1.1 abc\r\n\r\n",
                                  b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n"])
def test_unreadable_heads_are_protocol_errors(data: bytes) -> None:
    with pytest.raises(ProtocolError):
        parse_head(data)


def test_a_head_without_end_is_bounded() -> None:
    with pytest.raises(ProtocolError):
        parse_head(b"HTTP/1.1 200 OK\r\n" + b"x: y\r\n" * 20_000)


def _framing(headers: dict[str, str]) -> BodyFraming:
    return BodyFraming.for_head(Head(200, headers, b""))


def test_length_framing_ends_at_the_length_and_drops_the_rest() -> None:
    body = _framing({"content-length": "5"})
    assert body.feed(b"abc") == b"abc" and not body.done
    assert body.feed(b"de-extra") == b"de" and body.done and body.reusable


def test_an_empty_length_body_is_done_at_once() -> None:
    assert _framing({"content-length": "0"}).done


def test_close_framing_ends_when_the_peer_closes_and_is_never_reused() -> None:
    body = _framing({})
    assert body.feed(b"anything") == b"anything"
    assert not body.done
    body.end_of_stream()
    assert body.done and not body.reusable


def test_chunked_body_cut_before_its_last_chunk_is_not_done() -> None:
    body = _framing({"transfer-encoding": "chunked"})
    assert body.feed(b"5\r\nhello\r\n") == b"hello"
    body.end_of_stream()
    assert not body.done  # the relay reports this as a cut


def test_chunk_extensions_and_trailers_are_ignored() -> None:
    body = _framing({"transfer-encoding": "chunked"})
    data = body.feed(b"5;name=value\r\nhello\r\n0\r\nx-trailer: 1\r\n\r\n")
    assert data == b"hello" and body.done and body.reusable


@pytest.mark.parametrize("data", [b"zz\r\nhello\r\n", b"1" * 2000])
def test_bad_chunk_sizes_are_protocol_errors(data: bytes) -> None:
    with pytest.raises(ProtocolError):
        _framing({"transfer-encoding": "chunked"}).feed(data)


def _chunked(parts: list[bytes]) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts if p) + b"0\r\n\r\n"


@given(parts=st.lists(st.binary(min_size=1, max_size=40), max_size=8),
       cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=12))
def test_chunked_bodies_decode_the_same_however_the_reads_split(
    parts: list[bytes], cuts: list[int]
) -> None:
    wire = _chunked(parts)
    points = sorted({c for c in cuts if c < len(wire)})
    reads = [wire[a:b] for a, b in zip([0, *points], [*points, len(wire)], strict=True)]
    body = _framing({"transfer-encoding": "chunked"})
    decoded = b"".join(body.feed(read) for read in reads)
    assert decoded == b"".join(parts)
    assert body.done and body.reusable
