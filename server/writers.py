"""Response body formats: how a stream's channel items become what the client reads.

A writer drains the stream's channel into an `AsgiResponse` and returns the
error that ended the stream, if any. The relay does not know formats; the
view picks one and puts it in the plan:

    write_body = partial(write_sse, keepalive_interval=15.0)   # stream: true
    write_body = write_completion                              # stream: false
"""

from __future__ import annotations

import orjson
import trio

from .aggregate import CompletionBuilder
from .chunks import error_event_payload, inspect_chunk
from .errors import SluiceError
from .pump import ChannelItem
from .response import AsgiResponse
from .sse import DONE_EVENT, KEEPALIVE, frame


async def write_sse(
    items: trio.MemoryReceiveChannel[ChannelItem],
    response: AsgiResponse,
    *,
    keepalive_interval: float,
) -> SluiceError | None:
    """Relay chunks as SSE; return the error that ended the stream, if any.

    Whatever is already waiting in the channel is coalesced into one ASGI
    message: no added latency when the client keeps up, far fewer sends
    (and syscalls) when it does not.
    """
    with items:
        while True:
            item: ChannelItem | None = None
            with trio.move_on_after(keepalive_interval):
                item = await items.receive()
            if item is None:
                await response.write(KEEPALIVE)
                continue
            body: list[bytes] = []
            while isinstance(item, bytes):
                body.append(frame(item))
                try:
                    item = items.receive_nowait()
                except trio.WouldBlock:
                    item = None
                    break
            if item is None:
                await response.write(b"".join(body))
                continue
            if item.error is None:
                body.append(DONE_EVENT)
                await response.finish(b"".join(body))
            elif response.started or body:
                body.append(frame(error_event_payload(item.error)))
                await response.finish(b"".join(body))
            else:
                await response.fail(item.error)
            return item.error


async def write_completion(
    items: trio.MemoryReceiveChannel[ChannelItem], response: AsgiResponse
) -> SluiceError | None:
    """Aggregate the stream into one ``chat.completion``; nothing is sent until the end."""
    completion = CompletionBuilder()
    with items:
        async for item in items:
            if isinstance(item, bytes):
                completion.add(inspect_chunk(item)[1])
            elif item.error is not None:
                await response.fail(item.error)
                return item.error
            else:
                body = orjson.dumps(completion.result())
                await response.start(200, [(b"content-type", b"application/json"),
                                           (b"content-length", str(len(body)).encode())])
                await response.finish(body)
                return None
    raise AssertionError("the pump closed its channel without a StreamEnd")
