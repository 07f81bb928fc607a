"""HTTP/1.1, client side, sans I/O: the request bytes and the response framing.

Just what a streaming POST to a model server needs, no more: one request
written as one block, the response head parsed with one search, and the body
framed by ``Transfer-Encoding: chunked``, ``Content-Length`` or the
connection closing. Pure functions and a small state machine, so every
framing case is tested without sockets (`tests/backends/test_wire.py`).

    head = parse_head(buffer)            # None until the blank line arrived
    body = BodyFraming.for_head(head)
    data = body.feed(read)               # the body bytes in this read
    body.done                            # the message is complete
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

MAX_HEAD = 64 * 1024


class ProtocolError(Exception):
    """The peer sent something that is not an HTTP/1.1 response we can read."""


def request_bytes(target: str, host: str, headers: Mapping[str, str], body: bytes) -> bytes:
    """A ``POST`` with a ``Content-Length`` body, ready for one ``send_all``."""
    lines = [f"POST {target} HTTP/1.1", f"host: {host}", f"content-length: {len(body)}"]
    lines.extend(f"{name}: {value}" for name, value in headers.items())
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


@dataclass(frozen=True, slots=True)
class Head:
    status: int
    headers: dict[str, str]  # lower-case names; a repeated header keeps its last value
    rest: bytes  # body bytes that arrived with the head

    @property
    def keep_alive(self) -> bool:
        return self.headers.get("connection", "").lower() != "close"


def parse_head(data: bytes) -> Head | None:
    """The response head, once ``data`` holds all of it; interim 1xx heads are skipped."""
    while True:
        end = data.find(b"\r\n\r\n")
        if end < 0:
            if len(data) > MAX_HEAD:
                raise ProtocolError("response head too large")
            return None
        lines = data[:end].decode("latin-1").split("\r\n")
        status_line = lines[0].split(" ", 2)
        if len(status_line) < 2 or not status_line[0].startswith("HTTP/1."):
            raise ProtocolError(f"not an HTTP/1.x status line: {lines[0][:80]!r}")
        try:
            status = int(status_line[1])
        except ValueError:
            raise ProtocolError(f"bad status: {lines[0][:80]!r}") from None
        headers = {}
        for line in lines[1:]:
            name, colon, value = line.partition(":")
            if not colon:
                raise ProtocolError(f"bad header line: {line[:80]!r}")
            headers[name.strip().lower()] = value.strip()
        if 100 <= status < 200:
            data = data[end + 4:]  # 100 Continue and friends: the real head follows
            continue
        return Head(status, headers, data[end + 4:])


class BodyFraming:
    """Where the body ends: chunked, a length, or the connection's close."""

    __slots__ = ("_crlf", "_last", "_left", "_mode", "_pending", "done")

    def __init__(self, mode: str, length: int = 0) -> None:
        self._mode = mode  # "chunked" | "length" | "close"
        self._left = length  # length mode: bytes to come; chunked: of the current chunk
        self._pending = b""
        self._crlf = False
        self._last = False
        self.done = mode == "length" and length == 0

    @classmethod
    def for_head(cls, head: Head) -> BodyFraming:
        if "chunked" in head.headers.get("transfer-encoding", "").lower():
            return cls("chunked")
        if "content-length" in head.headers:
            try:
                return cls("length", int(head.headers["content-length"]))
            except ValueError:
                raise ProtocolError("bad content-length") from None
        return cls("close")

    @property
    def reusable(self) -> bool:
        """May the connection carry another request after this body?"""
        return self.done and self._mode != "close"

    def feed(self, data: bytes) -> bytes:
        """The body bytes in ``data`` (framing removed); bytes after the end are dropped."""
        if self._mode == "close":
            return data
        if self._mode == "length":
            take = data[:self._left]
            self._left -= len(take)
            self.done = self._left == 0
            return take
        return self._dechunk(data)

    def end_of_stream(self) -> None:
        """The peer closed: complete for "close" framing, a cut otherwise."""
        if self._mode == "close":
            self.done = True

    def _dechunk(self, data: bytes) -> bytes:
        buf = self._pending + data if self._pending else data
        self._pending = b""
        parts: list[bytes] = []
        pos, size = 0, len(buf)
        while pos < size and not self.done:
            if self._left:
                end = pos + self._left
                if end > size:
                    parts.append(buf[pos:])
                    self._left = end - size
                    pos = size
                    break
                parts.append(buf[pos:end])
                pos, self._left, self._crlf = end, 0, True
            if self._crlf or self._last:
                # After a chunk's data: its CRLF. After the last chunk: trailers
                # (none expected; skipped) and the final CRLF.
                eol = buf.find(b"\r\n", pos)
                if eol < 0:
                    break
                if self._last and eol > pos:
                    pos = eol + 2  # a trailer line
                    continue
                pos = eol + 2
                self._crlf = False
                if self._last:
                    self.done = True
                continue
            eol = buf.find(b"\r\n", pos)
            if eol < 0:
                if size - pos > 1024:
                    raise ProtocolError("chunk size line too long")
                break
            try:
                length = int(buf[pos:eol].split(b";", 1)[0], 16)
            except ValueError:
                raise ProtocolError("bad chunk size") from None
            pos = eol + 2
            if length:
                self._left = length
            else:
                self._last = True
        if pos < size and not self.done:
            self._pending = buf[pos:]
        return parts[0] if len(parts) == 1 else b"".join(parts)
