"""A lean upstream reader for the ``lean-reader`` variant: what httpx's read path costs.

The profile at 1,000 streams puts ~40% of the worker's CPU in httpx/httpcore
(and h11 under it). To measure rather than guess what a leaner path would
save, this variant replaces `OpenAIBackend.open_stream` with a raw-socket
version: one trio ``SocketStream`` per stream taken from a plain list of idle
keep-alive connections, the request written as one pre-formatted block, the
response head parsed with one ``split``, the chunked body de-chunked by a
small state machine and fed to Sluice's own `SSEDecoder`. Everything above
the backend (pump, timers, writer, hypercorn) is unchanged.

It is an experiment, not a proposal for the code as is: it speaks only
plain-HTTP/1.1 with chunked or Content-Length bodies to a ``http://`` base
URL, has no connect timeout of its own and retries a stale pooled connection
once. What it shows is the size of the prize.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing, asynccontextmanager
from typing import Any
from urllib.parse import urlsplit

import orjson
import trio

RECEIVE_BYTES = 65536
MAX_HEAD = 65536


class _Broken(Exception):
    """The upstream connection failed or answered something we cannot read."""


class _Dechunker:
    """Sans-IO ``Transfer-Encoding: chunked`` decoding; `done` once the last chunk is read."""

    __slots__ = ("_crlf", "_last", "_left", "_raw", "done")

    def __init__(self) -> None:
        self._raw = b""
        self._left = 0
        self._crlf = False
        self._last = False
        self.done = False

    def feed(self, data: bytes) -> bytes:
        buf = self._raw + data if self._raw else data
        self._raw = b""
        parts: list[bytes] = []
        pos, size = 0, len(buf)
        while pos < size and not self.done:
            if self._left:
                end = pos + self._left
                if end > size:
                    parts.append(buf[pos:])
                    self._left = end - size
                    return b"".join(parts)
                parts.append(buf[pos:end])
                pos, self._left, self._crlf = end, 0, True
            if self._crlf or self._last:
                if size - pos < 2:
                    break
                pos += 2
                self._crlf = False
                if self._last:
                    self.done = True
                continue
            eol = buf.find(b"\r\n", pos)
            if eol < 0:
                break
            length = int(buf[pos:eol].split(b";", 1)[0], 16)
            pos = eol + 2
            if length:
                self._left = length
            else:
                self._last = True
        if pos < size and not self.done:
            self._raw = buf[pos:]
        return parts[0] if len(parts) == 1 else b"".join(parts)


def install() -> None:
    """Replace the openai backend's stream opener (in this process)."""
    from server.backends.openai import OpenAIBackend
    from server.backends.upstream_errors import MAX_ERROR_BODY, status_error
    from server.errors import StreamCut, UpstreamUnavailable
    from server.sse import SSEDecoder

    idle: dict[tuple[str, int], list[trio.SocketStream]] = {}

    async def connect(address: tuple[str, int], fresh: bool) -> tuple[trio.SocketStream, bool]:
        pool = idle.setdefault(address, [])
        if pool and not fresh:
            return pool.pop(), True
        return await trio.open_tcp_stream(*address), False

    async def read_head(stream: trio.SocketStream) -> tuple[int, dict[bytes, bytes], bytes]:
        data = b""
        while (end := data.find(b"\r\n\r\n")) < 0:
            chunk = await stream.receive_some(RECEIVE_BYTES)
            if not chunk or len(data) > MAX_HEAD:
                raise _Broken("no response head")
            data += chunk
        lines = data[:end].split(b"\r\n")
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        return int(lines[0][9:12]), headers, data[end + 4 :]

    async def payloads(stream: trio.SocketStream, rest: bytes,
                       state: dict[str, bool]) -> AsyncGenerator[bytes, None]:
        decoder = SSEDecoder()
        chunks = _Dechunker()
        data = rest
        while True:
            if data:
                for payload in decoder.feed(chunks.feed(data)):
                    yield payload
            if chunks.done:
                state["reusable"] = True
                return
            try:
                data = await stream.receive_some(RECEIVE_BYTES)
            except trio.BrokenResourceError:
                data = b""
            if not data:
                raise StreamCut("The upstream stream broke off before it was complete.",
                                detail="lean reader: connection closed mid-body")

    @asynccontextmanager
    async def open_stream(self: Any, request: Any) -> AsyncIterator[AsyncIterator[bytes]]:
        url = urlsplit(self._upstream._url)
        address = (url.hostname or "127.0.0.1", url.port or 80)
        body = orjson.dumps(request.upstream_body(self.settings.upstream_model))
        extra = "".join(f"{k}: {v}\r\n" for k, v in self._upstream._headers.items())
        message = (f"POST {url.path} HTTP/1.1\r\nhost: {url.netloc}\r\n{extra}"
                   f"content-length: {len(body)}\r\n\r\n").encode("latin-1") + body
        state = {"reusable": False}
        stream: trio.SocketStream | None = None
        try:
            for fresh in (False, True):
                stream, pooled = await connect(address, fresh)
                try:
                    await stream.send_all(message)
                    status, headers, rest = await read_head(stream)
                    break
                except (_Broken, trio.BrokenResourceError, OSError):
                    stream.socket.close()
                    stream = None
                    if not pooled:
                        raise
            assert stream is not None
            if b"chunked" not in headers.get(b"transfer-encoding", b""):
                length = int(headers.get(b"content-length", b"0"))
                while len(rest) < min(length, MAX_ERROR_BODY):
                    more = await stream.receive_some(RECEIVE_BYTES)
                    if not more:
                        break
                    rest += more
                if status >= 300:
                    raise status_error(status, rest[:MAX_ERROR_BODY],
                                       headers.get(b"retry-after", b"").decode() or None,
                                       secrets=self._upstream.secrets)
                raise UpstreamUnavailable("The upstream answered without a stream.",
                                          detail=f"status {status}, not chunked")
            if status >= 300:
                raise status_error(status, b"", headers.get(b"retry-after", b"").decode()
                                   or None, secrets=self._upstream.secrets)
            async with aclosing(payloads(stream, rest, state)) as items:
                yield items
        except (_Broken, trio.BrokenResourceError, OSError) as error:
            raise UpstreamUnavailable("The connection to the upstream model server failed.",
                                      detail=f"lean reader: {type(error).__name__}: {error}"
                                      ) from None
        finally:
            if stream is not None:
                if state["reusable"]:
                    idle.setdefault(address, []).append(stream)
                else:
                    stream.socket.close()

    name = "open_stream"  # a method of OpenAIBackend: replaced on the class, for every backend
    setattr(OpenAIBackend, name, open_stream)
