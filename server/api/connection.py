"""Where the stream's nursery lives in Quart: an ASGI HTTP connection class.

Quart sends ``http.response.start`` before it enters a response body, so a
body that fails before its first byte could only ever be a 200. A view
therefore returns a `StreamResponse` — a plan, not a body — and this
connection class runs it with `serve_stream`, which sends the status only
once it knows it (first content chunk, first keepalive, or the error). Any
`LateResponse` is served this way: a reader of a detached stream
(`server.api.detached`) is one too.

It also turns hypercorn's ``http.disconnect`` into an event. quart-trio
cancels the whole request task when the client leaves; here, while a stream
runs, the stream's own disconnect watcher reacts instead — it cancels the
stream with the reason "client disconnected" and the stream records why it
ended. Outside a stream (reading the body, plain views) we behave like
quart-trio and cancel at once.
"""

from __future__ import annotations

from typing import Any

import trio
from hypercorn.typing import ASGIReceiveCallable, ASGISendCallable
from quart.asgi import ASGIHTTPConnection
from quart.wrappers import Request
from quart_trio.asgi import TrioASGIHTTPConnection
from quart_trio.wrappers import TrioResponse

from server.metrics import Metrics
from server.stream.late_status import Headers
from server.stream.nursery import StreamPlan, serve_stream

# Set by quart-trio/werkzeug from an empty body; a stream has no length.
_NOT_FOR_STREAMS = frozenset({b"content-length", b"content-type"})


class LateResponse(TrioResponse):
    """A response the connection serves itself, sending its status only once it knows it."""

    def __init__(self) -> None:
        super().__init__(b"")
        self.timeout = None  # never Quart's RESPONSE_TIMEOUT: streams run for minutes

    async def serve(self, send: ASGISendCallable, headers: Headers,
                    client_gone: trio.Event) -> None:
        raise NotImplementedError


class StreamResponse(LateResponse):
    """What the chat view returns: the plan of a stream, run by `SluiceHTTPConnection`."""

    def __init__(self, plan: StreamPlan, metrics: Metrics) -> None:
        super().__init__()
        self.plan = plan
        self.metrics = metrics

    async def serve(self, send: ASGISendCallable, headers: Headers,
                    client_gone: trio.Event) -> None:
        await serve_stream(self.plan, send, headers, client_gone, self.metrics)


async def handle_messages(request: Request, receive: ASGIReceiveCallable) -> None:
    """Quart's ``handle_messages``, taking what already waits without a trip through the
    scheduler.

    hypercorn queues a request's body and its end before the app's tasks first
    run; ``await receive()`` would spend one task step (a pass of the run loop)
    on each. When ``receive`` is a trio channel's (hypercorn's), what waits is
    taken with ``receive_nowait`` first. Quart's own loop otherwise.
    """
    channel = getattr(receive, "__self__", None)
    if not isinstance(channel, trio.MemoryReceiveChannel):
        await ASGIHTTPConnection.handle_messages(None, request, receive)  # type: ignore[arg-type]
        return
    while True:
        try:
            message = channel.receive_nowait()
        except trio.WouldBlock:
            message = await receive()
        if message["type"] == "http.request":
            request.body.append(message.get("body", b""))
            if not message.get("more_body", False):
                request.body.set_complete()
        elif message["type"] == "http.disconnect":
            return


class SluiceHTTPConnection(TrioASGIHTTPConnection):
    async def __call__(self, receive: ASGIReceiveCallable, send: ASGISendCallable) -> None:
        request = self._create_request_from_scope(send)
        self.client_gone = trio.Event()
        self.streaming = False
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._receive_messages, nursery, request, receive)
            nursery.start_soon(self.handle_request, nursery, request, send)

    async def _receive_messages(
        self, nursery: trio.Nursery, request: Request, receive: ASGIReceiveCallable
    ) -> None:
        await handle_messages(request, receive)  # until disconnect
        self.client_gone.set()
        if not self.streaming:
            nursery.cancel_scope.cancel("client disconnected")

    async def _send_response(self, send: ASGISendCallable, response: Any) -> None:
        if not isinstance(response, LateResponse):
            await super()._send_response(send, response)
            return
        self.streaming = True
        headers = [
            (name.lower().encode("latin-1"), value.encode("latin-1"))
            for name, value in response.headers.items()
            if name.lower().encode("latin-1") not in _NOT_FOR_STREAMS
        ]
        await response.serve(send, headers, self.client_gone)
