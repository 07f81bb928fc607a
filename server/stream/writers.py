"""Response body formats: how a stream's channel items become what the client reads.

A writer drains the stream's channel into an `LateStatusResponse` and returns the
error that ended the stream, if any. The relay does not know formats; the
view picks one and puts it in the plan:

    write_body = write_sse          # stream: true
    write_body = write_completion   # stream: false

A streaming writer also answers the stream's heartbeat: when the watcher
(`server.stream.nursery`) finds the response silent for ``keepalive_interval``, it
puts a `Heartbeat` in the channel, and a writer with nothing else to send
sends a keepalive comment.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
import trio

from server.chunks import error_event_payload, inspect_chunk
from server.errors import SluiceError
from server.sse import DONE_EVENT, KEEPALIVE, frame
from server.stream.aggregate import CompletionBuilder
from server.stream.channel import ChannelItem, Heartbeat, StreamEnd
from server.stream.late_status import LateStatusResponse
from server.stream.usage import UsageMeter


async def write_sse(
    items: trio.MemoryReceiveChannel[ChannelItem], response: LateStatusResponse,
    *, translate: Callable[[bytes], bytes] | None = None,
    meter: UsageMeter | None = None,
) -> SluiceError | None:
    """Relay chunks as SSE; return the error that ended the stream, if any.

    Whatever is already waiting in the channel is coalesced into one ASGI
    message: no added latency when the client keeps up, far fewer sends
    (and syscalls) when it does not. ``translate`` reshapes each chunk for a
    dialect that is not chat's (``/v1/completions``). A ``meter`` (API keys)
    notes the usage chunk, and drops it if the client did not ask for usage.
    """
    with items:
        while True:
            payloads, end = await receive_batch(items)
            if meter is not None and payloads:
                payloads = meter.take(payloads)
                if not payloads and end is None:
                    continue  # only a usage chunk the client did not ask for
            if translate is not None:
                payloads = [translate(payload) for payload in payloads]
            body = [frame(payload) for payload in payloads]
            if end is None:
                await response.write(b"".join(body) if body else KEEPALIVE)
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
) -> tuple[list[bytes], StreamEnd | None]:
    """Wait for the next item, then take all that already waits.

    Returns the chunk payloads in order, and the `StreamEnd` if it came too.
    No payloads and no end: only a `Heartbeat` came — time for a keepalive.

    The wait has no timeout of its own: a cancel scope per batch (what
    ``move_on_after`` builds) cost ~10 µs, as much as the rest of the batch's
    Python. Silence is the watcher's to notice, once per keepalive interval.
    """
    item = await items.receive()
    payloads: list[bytes] = []
    while True:
        if isinstance(item, bytes):
            payloads.append(item)
        elif isinstance(item, StreamEnd):
            return payloads, item
        try:
            item = items.receive_nowait()
        except (trio.WouldBlock, trio.EndOfChannel):
            # EndOfChannel: the pump was cancelled (the client left) after this batch's
            # first item; the writer's next wait delivers that cancel.
            return payloads, None


async def write_completion(
    items: trio.MemoryReceiveChannel[ChannelItem], response: LateStatusResponse,
    *, meter: UsageMeter | None = None,  # unused: streams only (a reply carries its usage)
) -> SluiceError | None:
    """Aggregate the stream into one ``chat.completion``; nothing is sent until the end."""
    completion = CompletionBuilder()
    return await write_one_reply(items, response, completion.add, completion.result)


async def write_one_reply(
    items: trio.MemoryReceiveChannel[ChannelItem],
    response: LateStatusResponse,
    add: Callable[[dict[str, Any]], object],
    reply: Callable[[], object],
) -> SluiceError | None:
    """Fold each chunk in with ``add``; at a clean end, send ``reply()`` as one JSON body.

    Nothing is sent before the end, so a failure always keeps its own status.
    """
    with items:
        async for item in items:
            if isinstance(item, bytes):
                add(inspect_chunk(item)[1])
            elif isinstance(item, Heartbeat):
                continue  # a single reply has nothing to show until the end
            elif item.error is not None:
                await response.fail(item.error)
                return item.error
            else:
                body = orjson.dumps(reply())
                await response.start(200, [(b"content-type", b"application/json"),
                                           (b"content-length", str(len(body)).encode())])
                await response.finish(body)
                return None
    raise AssertionError("the pump closed its channel without a StreamEnd")
