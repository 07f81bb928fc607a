"""Lesson 10, fixed: the status line waits until the upstream has answered.

Quart lets an app choose its ASGI connection class. This one enters the
response body *before* it sends the status line, so the stream — which owns
the upstream response in its ``async with``, as always — can still refuse:
an upstream error before the first byte raises `Refused`, and the client
gets the upstream's status, its ``Retry-After`` and its error body. After
the first byte, failures travel in-band (lesson 6): this is the commit point.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any

import trio
from hypercorn.typing import ASGISendCallable, HTTPResponseBodyEvent, HTTPResponseStartEvent
from quart import Response
from quart.typing import ResponseTypes
from quart.utils import encode_headers
from quart_trio import QuartTrio
from quart_trio.asgi import TrioASGIHTTPConnection

from server.testing.lessons import Body, app_and_client, chat_route, serve_lesson


class Refused(Exception):
    """The upstream said no before the first byte: the client gets a real status."""

    def __init__(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        super().__init__(status)
        self.status, self.headers, self.body = status, headers, body


class StatusLast(TrioASGIHTTPConnection):
    """Quart's HTTP connection, but a streamed body is entered before the status is sent."""

    async def _send_response(self, send: ASGISendCallable, response: ResponseTypes) -> None:
        if not isinstance(response, Response) or not isinstance(response.response, Body):
            await super()._send_response(send, response)
            return
        committed = False
        try:
            async with response.response as chunks:  # the stream asks the upstream first...
                async for chunk in chunks:
                    if not committed:  # ...and its first byte commits the status: 200
                        await send(response_start(200, encode_headers(response.headers)))
                        committed = True
                    await send(response_body(chunk, more=True))
        except Refused as refused:  # the upstream said no before the first byte
            length = (b"content-length", str(len(refused.body)).encode())
            await send(response_start(refused.status, [*refused.headers, length]))
            await send(response_body(refused.body, more=False))
            return
        # Only here, out of the `async with`, is it known that the stream did not fail.
        if not committed:  # an empty answer
            await send(response_start(200, encode_headers(response.headers)))
        await send(response_body(b"", more=False))


def response_start(status: int, headers: list[tuple[bytes, bytes]]) -> HTTPResponseStartEvent:
    return {"type": "http.response.start", "status": status, "headers": headers}


def response_body(data: bytes, *, more: bool) -> HTTPResponseBodyEvent:
    return {"type": "http.response.body", "body": data, "more_body": more}


def create_app(upstream: str) -> QuartTrio:
    app, client = app_and_client(upstream)
    app.asgi_http_class = StatusLast

    @trio.as_safe_channel
    async def relay(body: Any) -> AsyncGenerator[bytes]:
        async with client.stream("POST", "/chat/completions", json=body) as response:
            if response.is_error:
                passed_on = [(k, v) for k, v in response.headers.raw
                             if k.lower() in (b"content-type", b"retry-after")]
                raise Refused(response.status_code, passed_on, await response.aread())
            async for line in response.aiter_lines():
                yield f"{line}\n".encode()

    return chat_route(app, relay)


if __name__ == "__main__":
    serve_lesson(__file__, create_app, "status=429,retry_after=1")
