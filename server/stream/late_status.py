"""The ASGI response of one stream: start once, then body messages, then the end.

The status line is not sent until the stream knows it: `start` is called by
the first `write` (200, SSE headers) or by `fail` (the error's own status).
`complete` turns true as the last body message goes out, so a disconnect
reported after it is known to be the normal end of the exchange.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import trio

from server.errors import SluiceError, error_headers, openai_error_body

ASGISend = Callable[[Any], Awaitable[None]]
Headers = list[tuple[bytes, bytes]]

SSE_HEADERS: Headers = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),  # tell nginx-style proxies not to buffer
]


class LateStatusResponse:
    """The ASGI response of one stream: start once, then body messages, then the end."""

    __slots__ = ("_headers", "_send", "complete", "last_write", "started", "status")

    def __init__(self, send: ASGISend, headers: Headers) -> None:
        self._send = send
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
        if not self.started:
            await self.start(200, SSE_HEADERS)
        self.last_write = trio.current_time()
        await self._send({"type": "http.response.body", "body": data, "more_body": True})

    async def finish(self, data: bytes) -> None:
        if not self.started:
            await self.start(200, SSE_HEADERS)
        self.complete = True
        await self._send({"type": "http.response.body", "body": data, "more_body": False})

    async def fail(self, error: SluiceError) -> None:
        """Answer with the error's own status: only possible before anything was sent."""
        body = openai_error_body(error)
        await self.start(error.status, [*error_headers(error),
                                        (b"content-length", str(len(body)).encode())])
        await self.finish(body)
