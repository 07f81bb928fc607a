"""Reading one streamed chat response the cheap way: sans-IO, byte scans, no JSON.

The load generator must outpace what it measures, so it never builds an
event object. `ResponseReader` is fed the bytes of one HTTP/1.1 response as
they arrive and does only this:

- the status line and the framing headers (chunked or ``Content-Length``);
- de-chunking (sizes are parsed, data is sliced, nothing is copied twice);
- on the SSE body, cut at the last complete event (``\\n\\n``), it counts
  ``"sent_at":`` occurrences — one per content chunk of the fake upstream
  with ``timestamps=true`` — parses the float after each (only when latency
  is wanted) and looks for ``[DONE]`` and an in-band ``"error"`` object.

A response counts as complete only if it ended its chunked body, carried
``[DONE]`` and exactly the content chunks asked for (``max_tokens``); anything
else is an error of a named kind::

    reader = ResponseReader(tally, expect_chunks=100, latency=True)
    reader.reset()
    state = reader.feed(data, time.time())   # MORE, DONE or FAILED; reader.error says why

The fake upstream, Sluice and nginx all end SSE lines with LF, which is what
the event split assumes.
"""

from __future__ import annotations

import enum
from array import array
from collections import Counter
from dataclasses import dataclass, field

SENT_AT = b'"sent_at":'
_SENT_AT_LEN = len(SENT_AT)
DONE = b"[DONE]"
ERROR = b'"error"'


def chat_request(host: str, port: int, tokens: int, api_key: str = "") -> bytes:
    """The request every stream sends: streamed, ``max_tokens`` = `tokens`; with `api_key`,
    ``Authorization: Bearer`` it."""
    body = (
        b'{"model":"bench","stream":true,"max_tokens":%d,'
        b'"messages":[{"role":"user","content":"hello there"}]}' % tokens
    )
    authorization = b"Authorization: Bearer %s\r\n" % api_key.encode() if api_key else b""
    return (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: %s:%d\r\n%s"
        b"Content-Type: application/json\r\nAccept: text/event-stream\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (host.encode(), port, authorization, len(body),
                                               body)
    )


class State(enum.IntEnum):
    MORE = 0
    """Keep feeding."""
    DONE = 1
    """The response ended cleanly framed; the connection may carry the next request."""
    FAILED = 2
    """The response cannot be continued; close the connection."""


@dataclass(slots=True)
class Tally:
    """What all responses of one run add up to; `window` bounds are wall-clock times."""

    window_start: float = 0.0
    window_end: float = float("inf")
    chunks: int = 0
    window_chunks: int = 0
    latencies: array[float] = field(default_factory=lambda: array("d"))
    errors: Counter[str] = field(default_factory=Counter)
    sample_every: int = 1
    """Parse the ``sent_at`` of one content chunk in this many (1 = every chunk)."""
    skip: int = 0


# Module constants, not enum attributes: they are read on every feed.
_HEAD, _CHUNKED, _LENGTH = 0, 1, 2
_MORE, _DONE, _FAILED = State.MORE, State.DONE, State.FAILED


class ResponseReader:
    """One connection's response parser; `reset` before each request."""

    __slots__ = (
        "_crlf",
        "_expect",
        "_last",
        "_latency",
        "_left",
        "_mode",
        "_raw",
        "_sse",
        "chunks",
        "close_after",
        "done",
        "error",
        "status",
        "tally",
    )

    def __init__(self, tally: Tally, *, expect_chunks: int | None, latency: bool) -> None:
        self.tally = tally
        self._expect = expect_chunks
        self._latency = latency
        self.reset()

    def reset(self) -> None:
        self._mode = _HEAD
        self._raw = b""
        self._sse = b""
        self._left = 0
        self._crlf = False
        self._last = False
        self.status = 0
        self.chunks = 0
        self.done = False
        self.close_after = False
        self.error: str | None = None

    def feed(self, data: bytes, now: float) -> State:
        if self._mode == _CHUNKED and not (self._raw or self._left or self._crlf or self._last):
            # The common case, one read = whole HTTP chunks: no state carried over.
            eol = data.find(b"\r\n")
            try:
                length = int(data[:eol], 16) if eol > 0 else 0
            except ValueError:
                length = 0  # a chunk extension: the general path handles it
            end = eol + 2 + length
            if length and len(data) == end + 2:
                self._events(data[eol + 2 : end], now)
                return _FAILED if self.error else _MORE
        buf = self._raw + data if self._raw else data
        self._raw = b""
        if self._mode == _HEAD:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                self._raw = buf
                return _MORE
            state = self._head(buf[:end].lower())
            if state is not _MORE:
                return state
            buf = buf[end + 4 :]
        if self._mode == _LENGTH:
            self._left -= len(buf)
            return _FAILED if self._left <= 0 else _MORE
        return self._chunked(buf, now)

    def _head(self, head: bytes) -> State:
        try:
            self.status = int(head[9:12])
        except ValueError:
            self.error = "bad_response"
            return _FAILED
        self.close_after = b"connection: close" in head
        if self.status != 200:
            self.error = f"status_{self.status}"
            if b"transfer-encoding: chunked" in head:
                return _FAILED
            start = head.find(b"content-length:")
            if start < 0:
                return _FAILED
            line_end = head.find(b"\r\n", start)
            self._left = int(head[start + 15 : line_end if line_end >= 0 else None])
            self._mode = _LENGTH
            return _MORE
        if b"transfer-encoding: chunked" not in head:
            self.error = "not_chunked"
            return _FAILED
        self._mode = _CHUNKED
        return _MORE

    def _chunked(self, buf: bytes, now: float) -> State:
        parts: list[bytes] = []
        pos = 0
        size = len(buf)
        while pos < size:
            if self._left:
                end = pos + self._left
                if end > size:
                    parts.append(buf[pos:])
                    self._left = end - size
                    pos = size
                    break
                parts.append(buf[pos:end])
                pos = end
                self._left = 0
                self._crlf = True
            if self._crlf or self._last:
                if size - pos < 2:
                    break
                pos += 2
                self._crlf = False
                if self._last:
                    if parts:
                        self._events(b"".join(parts), now)
                    return self._finished()
                continue
            eol = buf.find(b"\r\n", pos)
            if eol < 0:
                break
            length = int(buf[pos:eol].split(b";", 1)[0], 16)
            pos = eol + 2
            if length == 0:
                self._last = True
            else:
                self._left = length
        if pos < size:
            self._raw = buf[pos:]
        if parts:
            self._events(parts[0] if len(parts) == 1 else b"".join(parts), now)
        return _FAILED if self.error else _MORE

    def _events(self, body: bytes, now: float) -> None:
        if not self._sse and body.endswith(b"\n\n"):
            complete = body  # whole events only: nothing to carry over
        else:
            sse = self._sse + body if self._sse else body
            cut = sse.rfind(b"\n\n")
            if cut < 0:
                self._sse = sse
                return
            complete = sse[:cut]
            self._sse = sse[cut + 2 :]
        count = complete.count(SENT_AT)
        if count:
            tally = self.tally
            self.chunks += count
            tally.chunks += count
            if tally.window_start <= now < tally.window_end:
                tally.window_chunks += count
                if self._latency:
                    if tally.sample_every == 1:
                        append = tally.latencies.append
                        find = complete.find
                        i = find(SENT_AT)
                        while i >= 0:
                            j = find(b",", i + _SENT_AT_LEN)
                            append(now - float(complete[i + _SENT_AT_LEN : j]))
                            i = find(SENT_AT, j)
                    else:
                        tally.skip -= count
                        if tally.skip <= 0:  # the read's oldest chunk: conservative
                            tally.skip += tally.sample_every
                            i = complete.find(SENT_AT) + _SENT_AT_LEN
                            j = complete.find(b",", i)
                            tally.latencies.append(now - float(complete[i:j]))
        if DONE in complete:
            self.done = True
        if ERROR in complete:
            self.error = "in_band_error"

    def _finished(self) -> State:
        if self.error is None:
            if not self.done:
                self.error = "no_done"
            elif self._expect is not None and self.chunks != self._expect:
                self.error = "wrong_chunk_count"
        return _DONE
