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
from .pump import ChannelItem, StreamEnd
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
            payloads, end = await receive_batch(items, response, keepalive_interval)
            body = [frame(payload) for payload in payloads]
            if end is None:
                await response.write(b"".join(body))
            elif end.error is None:
                body.append(DONE_EVENT)
                await response.finish(b"".join(body))
                return None
            elif response.started or body:
                body.append(frame(error_event_payload(end.error)))
                await response.finish(b"".join(body))
                return end.error
            else:
                await response.fail(end.error)
                return end.error


async def receive_batch(
    items: trio.MemoryReceiveChannel[ChannelItem],
    response: AsgiResponse,
    keepalive_interval: float,
) -> tuple[list[bytes], StreamEnd | None]:
    """Wait for the next item, sending keepalives meanwhile; take all that already waits.

    Returns the chunk payloads in order, and the `StreamEnd` if it came too.
    """
    while True:
        with trio.move_on_after(keepalive_interval):
            item = await items.receive()
            break
        await response.write(KEEPALIVE)  # silence: one comment line, no blank line
    payloads: list[bytes] = []
    while isinstance(item, bytes):
        payloads.append(item)
        try:
            item = items.receive_nowait()
        except trio.WouldBlock:
            return payloads, None
    return payloads, item


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
