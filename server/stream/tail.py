"""A client reading a detached stream: the events it missed, then the live tail, then the end.

A detached stream's producer writes into an `EventLog` (`server.stream.event_log`);
each client connection that reads it — the request that started it, and
every resume after — runs `serve_tail` in its own nursery, the same shape as
a relayed stream's (`server.stream.nursery`):

    read_log ──► bounded memory channel ──► write_events ──► ASGI send
    watch_stream: client gone ──► cancel(this reader only); silence ──► keepalive

The reader's nursery is the *connection's*: the client leaving cancels the
reader, never the producer, which lives in the background nursery
(`server.stream.background`). Events are already framed, so the writer only
coalesces what waits into one ASGI message, exactly like `write_sse`.

The commit point is the relay's: nothing is sent until the first event (or
the first keepalive), so a log that failed before its first event is
answered with the error's own status and OpenAI error body. A reader that
asks for events the log has dropped gets a 400 before anything is sent, or
— if it fell that far behind while reading — the dialect's in-band error
(``lost``) and no clean end.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import trio

from server.errors import EventsExpired, SluiceError
from server.sse import KEEPALIVE
from server.stream.channel import ChannelItem, StreamEnd
from server.stream.event_log import LogSource
from server.stream.late_status import ASGISend, Headers, LateStatusResponse
from server.stream.nursery import watch_stream
from server.stream.writers import receive_batch

# Events read ahead of a slow client; the log itself keeps the rest.
_READ_AHEAD = 16


@dataclass(frozen=True, slots=True)
class TailPlan:
    """Which log to read, from where, and how the dialect says "events were lost"."""

    log: LogSource
    after: int  # the last sequence number the client has; -1 = from the start
    keepalive_interval: float | None
    lost: Callable[[SluiceError], bytes]  # an in-band error event, in the stream's dialect


async def serve_tail(plan: TailPlan, send: ASGISend, extra_headers: Headers,
                     client_gone: trio.Event) -> bool:
    """Send the log's events after ``plan.after`` to one client; return whether it got a status.

    Ends when the log is closed and read, or when the client leaves (the log
    and its producer are untouched: another client may read on).
    """
    response = LateStatusResponse(send, extra_headers)
    interval = math.inf if plan.keepalive_interval is None else plan.keepalive_interval
    watcher = trio.CancelScope()
    async with trio.open_nursery() as nursery:
        items_in, items_out = trio.open_memory_channel[ChannelItem](_READ_AHEAD)
        nursery.start_soon(watch_stream, client_gone, response, nursery.cancel_scope,
                           watcher, items_in.clone(), interval)
        nursery.start_soon(read_log, plan.log, plan.after, items_in)
        await write_events(items_out, response, plan.lost)
        watcher.cancel()
    return response.started


async def read_log(log: LogSource, after: int,
                   channel: trio.MemorySendChannel[ChannelItem]) -> None:
    """Put the log's events after ``after`` into ``channel`` as they come; then its end."""
    with channel:
        while True:
            try:
                batch = await log.fetch(after)
            except EventsExpired as error:
                await channel.send(StreamEnd(error))
                return
            for event in batch.events:
                await channel.send(event)
            after += len(batch.events)
            if batch.ended:
                await channel.send(StreamEnd(batch.failure))
                return
            await log.wait_beyond(after)


async def write_events(items: trio.MemoryReceiveChannel[ChannelItem],
                       response: LateStatusResponse,
                       lost: Callable[[SluiceError], bytes]) -> SluiceError | None:
    """Write framed events, coalescing what waits; keepalives in silence; then the end."""
    with items:
        while True:
            events, end = await receive_batch(items)
            if end is None:
                await response.write(b"".join(events) if events else KEEPALIVE)
            elif end.error is None:
                await response.finish(b"".join(events))
                return None
            elif response.started or events:
                await response.finish(b"".join(events) + lost(end.error))
                return end.error
            else:
                await response.fail(end.error)
                return end.error
