"""The ASGI response of one stream: start once, then body messages, then the end.

The status line is not sent until the stream knows it: `start` is called by
the first `write` (200, SSE headers) or by `fail` (the error's own status).
`complete` turns true as the last body message goes out, so a disconnect
reported after it is known to be the normal end of the exchange.

Served by Sluice's TCP server over HTTP/1.1, the response takes its
connection's shortcuts (`server.serving.tcp_server.DirectBody`): the headers
leave in one write with the first body message and the last body message
with the end of the body, and a body chunk is framed without the ASGI and h11
layers. The bytes on the wire are the same; under any other server the
messages go the ASGI way.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import trio

from server.errors import SluiceError, error_headers, openai_error_body
from server.serving.tcp_server import DirectBody

ASGISend = Callable[[Any], Awaitable[None]]
Headers = list[tuple[bytes, bytes]]

SSE_HEADERS: Headers = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),  # tell nginx-style proxies not to buffer
]


class LateStatusResponse:
    """The ASGI response of one stream: start once, then body messages, then the end."""

    __slots__ = ("_direct", "_headers", "_send", "complete", "last_write", "started", "status")

    def __init__(self, send: ASGISend, headers: Headers) -> None:
        self._send = send
        self._direct = DirectBody.of(send)
        self._headers = headers
        self.started = False
        self.status: int | None = None  # the status sent, once sent (for the access log)
        self.complete = False  # the last body message is being or has been sent
        self.last_write = trio.current_time()  # when a body message last went out

    async def start(self, status: int, headers: Iterable[tuple[bytes, bytes]]) -> None:
        self.started = True
        self.status = status
        await self._send({"type": "http.response.start", "status": status,
                          "headers": [*headers, *self._headers]})

    async def write(self, data: bytes) -> None:
        self.last_write = trio.current_time()
        direct = self._direct
        if self.started:
            if direct is None or not await direct.write_chunk(data):
                await self._send({"type": "http.response.body", "body": data,
                                  "more_body": True})
            return
        if direct is not None:
            direct.cork()  # the headers and the first body message: one write
        try:
            await self.start(200, SSE_HEADERS)
            await self._send({"type": "http.response.body", "body": data, "more_body": True})
        except BaseException:
            if direct is not None:
                direct.abandon_cork()
            raise
        if direct is not None:
            await direct.uncork()

    async def finish(self, data: bytes) -> None:
        direct = self._direct
        if direct is not None:
            direct.cork()  # the last body message and the end of the body: one write
        try:
            if not self.started:
                await self.start(200, SSE_HEADERS)
            self.complete = True
            await self._send({"type": "http.response.body", "body": data, "more_body": False})
        except BaseException:
            if direct is not None:
                direct.abandon_cork()
            raise
        if direct is not None:
            await direct.uncork()

    async def fail(self, error: SluiceError) -> None:
        """Answer with the error's own status: only possible before anything was sent."""
        body = openai_error_body(error)
        direct = self._direct
        if direct is not None:
            direct.cork()  # uncorked by `finish`: the whole answer in one write
        try:
            await self.start(error.status, [*error_headers(error),
                                            (b"content-length", str(len(body)).encode())])
        except BaseException:
            if direct is not None:
                direct.abandon_cork()
            raise
        await self.finish(body)
