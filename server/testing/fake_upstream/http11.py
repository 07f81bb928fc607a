"""The smallest HTTP/1.1 the fake upstream needs: read requests, frame responses.

Why hand-rolled rather than h11: the fake must outpace the gateway it feeds
(a response chunk is one ``%``-format, no event objects) and it must be able
to misbehave at the transport level (cut a chunked body, reset a socket),
which a correct protocol library exists to prevent.

The parsing half is sans-IO: `RequestBuffer` is fed bytes and hands back
complete `Request` objects, so it is tested without sockets. The I/O half is
the one function `receive_request`. What is supported: ``HTTP/1.1`` only,
``Content-Length`` request bodies, keep-alive (``Connection: close`` honoured),
``Expect: 100-continue``. Responses are either ``Content-Length`` or
``Transfer-Encoding: chunked`` so that the connection can be reused::

    buffer = RequestBuffer()
    while (request := await receive_request(stream, buffer)) is not None:
        await stream.send_all(response(200, [("content-type", "text/plain")], b"hi"))
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from http import HTTPStatus

import trio

MAX_HEAD_BYTES = 64 * 1024
MAX_BODY_BYTES = 32 * 1024 * 1024
RECEIVE_BYTES = 64 * 1024

CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
LAST_CHUNK = b"0\r\n\r\n"


class BadRequest(Exception):
    """The peer sent something this server will not parse; answer `status` and close."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True, slots=True)
class Request:
    """One complete HTTP request. Header names are lower-case; repeats are joined by ``, ``."""

    method: str
    target: str
    headers: Mapping[str, str]
    body: bytes

    @property
    def path(self) -> str:
        return self.target.partition("?")[0]

    @property
    def query(self) -> str:
        return self.target.partition("?")[2]

    @property
    def keep_alive(self) -> bool:
        return "close" not in _tokens(self.headers.get("connection", ""))


@dataclass(frozen=True, slots=True)
class RequestHead:
    method: str
    target: str
    headers: Mapping[str, str]
    content_length: int
    expects_continue: bool


def parse_head(data: bytes) -> RequestHead:
    """Parse a request line and headers (without the blank line). Raises `BadRequest`."""
    try:
        text = data.decode("latin-1")
    except UnicodeDecodeError:  # pragma: no cover - latin-1 decodes every byte
        raise BadRequest(400, "undecodable request head") from None
    request_line, *header_lines = text.split("\r\n")
    parts = request_line.split(" ")
    if len(parts) != 3 or not parts[0] or not parts[1]:
        raise BadRequest(400, f"malformed request line {request_line[:100]!r}")
    method, target, version = parts
    if version != "HTTP/1.1":
        raise BadRequest(505, f"only HTTP/1.1 is supported, not {version[:20]!r}")
    headers: dict[str, str] = {}
    for line in header_lines:
        name, colon, value = line.partition(":")
        if not colon or not name or name != name.strip():
            raise BadRequest(400, f"malformed header line {line[:100]!r}")
        key = name.lower()
        value = value.strip(" \t")
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    if "transfer-encoding" in headers:
        raise BadRequest(411, "chunked request bodies are not supported; send Content-Length")
    return RequestHead(
        method=method,
        target=target,
        headers=headers,
        content_length=_content_length(headers.get("content-length")),
        expects_continue="100-continue" in _tokens(headers.get("expect", "")),
    )


def _content_length(raw: str | None) -> int:
    if raw is None:
        return 0
    if not raw.isdigit():  # also rejects "1, 2", "-1", "+1" and ""
        raise BadRequest(400, f"bad Content-Length {raw[:40]!r}")
    length = int(raw)
    if length > MAX_BODY_BYTES:
        raise BadRequest(413, f"request body over {MAX_BODY_BYTES} bytes")
    return length


def _tokens(value: str) -> set[str]:
    return {token.strip().lower() for token in value.split(",")}


class RequestBuffer:
    """Sans-IO request reader: `feed` it bytes, take heads and bodies out as they complete."""

    def __init__(self) -> None:
        self._data = bytearray()

    def __len__(self) -> int:
        return len(self._data)

    def feed(self, data: bytes | bytearray) -> None:
        self._data += data

    def take_head(self) -> RequestHead | None:
        """The next request head, or None until its blank line has arrived."""
        end = self._data.find(b"\r\n\r\n")
        if end < 0:
            if len(self._data) > MAX_HEAD_BYTES:
                raise BadRequest(431, f"request head over {MAX_HEAD_BYTES} bytes")
            return None
        if end > MAX_HEAD_BYTES:
            raise BadRequest(431, f"request head over {MAX_HEAD_BYTES} bytes")
        head = parse_head(bytes(self._data[:end]))
        del self._data[: end + 4]
        return head

    def take_body(self, length: int) -> bytes | None:
        """The next `length` bytes, or None until they have all arrived."""
        if len(self._data) < length:
            return None
        body = bytes(self._data[:length])
        del self._data[:length]
        return body


async def receive_request(stream: trio.abc.Stream, buffer: RequestBuffer) -> Request | None:
    """Read the next request, or return None if the peer closed between requests.

    Raises `BadRequest` for a malformed request or a peer that left mid-request,
    and `trio.BrokenResourceError` if the connection was reset.
    """
    head = buffer.take_head()
    while head is None:
        await _receive_into(stream, buffer, between_requests=True)
        if not buffer:
            return None
        head = buffer.take_head()
    if head.expects_continue and len(buffer) < head.content_length:
        await stream.send_all(CONTINUE)
    body = buffer.take_body(head.content_length)
    while body is None:
        await _receive_into(stream, buffer, between_requests=False)
        body = buffer.take_body(head.content_length)
    return Request(head.method, head.target, head.headers, body)


async def _receive_into(
    stream: trio.abc.ReceiveStream, buffer: RequestBuffer, *, between_requests: bool
) -> None:
    data = await stream.receive_some(RECEIVE_BYTES)
    if data:
        buffer.feed(data)
    elif len(buffer) or not between_requests:
        raise BadRequest(400, "connection closed in the middle of a request")


def status_line(status: int) -> bytes:
    try:
        reason = HTTPStatus(status).phrase
    except ValueError:
        reason = "Unknown"
    return f"HTTP/1.1 {status} {reason}\r\n".encode("ascii")


def response_head(
    status: int, headers: Iterable[tuple[str, str]], *, keep_alive: bool = True
) -> bytes:
    """Status line and headers up to and including the blank line."""
    lines = [status_line(status)]
    lines.extend(f"{name}: {value}\r\n".encode("latin-1") for name, value in headers)
    if not keep_alive:
        lines.append(b"connection: close\r\n")
    lines.append(b"\r\n")
    return b"".join(lines)


def response(
    status: int, headers: Iterable[tuple[str, str]], body: bytes, *, keep_alive: bool = True
) -> bytes:
    """A whole ``Content-Length`` response."""
    all_headers = [*headers, ("content-length", str(len(body)))]
    return response_head(status, all_headers, keep_alive=keep_alive) + body


def chunk(data: bytes) -> bytes:
    """Frame `data` as one chunk of a ``Transfer-Encoding: chunked`` body."""
    if not data:
        raise ValueError("an empty chunk would end the body; use LAST_CHUNK for that")
    return b"%x\r\n%b\r\n" % (len(data), data)
