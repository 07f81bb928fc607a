"""The upstream reader: one task that turns a backend's stream into channel items.

`pump_upstream` owns the upstream connection (its ``async with`` is the
connection's lifetime) and the send end of the stream's bounded channel. It
sends chunk payloads (``bytes``) and finally one `StreamEnd`, then closes the
channel. It also owns the stream's two upstream timers, kept in a single
cancel scope whose deadline moves:

* *first chunk*: from the request until the first content-bearing chunk;
* *idle*: between content chunks. Upstream keepalives and empty deltas do
  not reset it — a model that only pings is not making progress.

Time spent waiting for room in the channel is the *client's* slowness, not
the upstream's, so the timer is suspended while a send blocks.

Chunks before the first content (the role-only preamble) are held back and
released with the first content chunk: until then nothing is committed, so
a failure can still be answered with a real HTTP status (and, later, retried
elsewhere without the client seeing a thing).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import trio

from .backends.base import Backend
from .chat_request import ChatRequest
from .chunks import MalformedChunk, inspect_chunk
from .config import Timeouts
from .errors import SluiceError, StreamCut, UpstreamTimeout, UpstreamUnavailable
from .sse import DONE

# After [DONE], how long to keep reading so the connection can be reused.
_DRAIN_SECONDS = 1.0


@dataclass(frozen=True, slots=True)
class StreamEnd:
    """The last channel item: how the upstream stream ended (``error`` None = complete)."""

    error: SluiceError | None = None


ChannelItem = bytes | StreamEnd


@dataclass(slots=True)
class PumpStats:
    """What the pump saw, read by the relay for metrics when the stream's scope exits."""

    first_content_at: float | None = None
    chunks: int = 0
    finished: bool = False
    upstream_errors: list[SluiceError] = field(default_factory=list)


async def pump_upstream(
    backend: Backend,
    request: ChatRequest,
    channel: trio.MemorySendChannel[ChannelItem],
    timeouts: Timeouts,
    stats: PumpStats,
) -> None:
    with channel:
        end = await _relay(backend, request, channel, timeouts, stats)
        if end is not None:
            if end.error is not None:
                stats.upstream_errors.append(end.error)
            await channel.send(end)


async def _relay(
    backend: Backend,
    request: ChatRequest,
    channel: trio.MemorySendChannel[ChannelItem],
    timeouts: Timeouts,
    stats: PumpStats,
) -> StreamEnd | None:
    """Relay the stream; return how it ended, or None if the clean end was sent already."""
    timer = trio.CancelScope(deadline=trio.current_time() + timeouts.first_chunk)
    preamble: list[bytes] = []
    try:
        with timer:
            async with backend.open_stream(request) as payloads:
                async for payload in payloads:
                    if not payload.strip():
                        continue  # `data:` with nothing in it: a keepalive in disguise
                    if payload == DONE:
                        if stats.first_content_at is None and not stats.finished:
                            return StreamEnd(_cut("before any content"))
                        await _flush(preamble, channel, timer)
                        await channel.send(StreamEnd())
                        timer.deadline = math.inf  # the stream is complete; only drain now
                        with trio.move_on_after(_DRAIN_SECONDS):
                            async for _ in payloads:
                                pass  # read to the end so httpx can reuse the connection
                        return None
                    facts, _ = inspect_chunk(payload)
                    if facts.error is not None:
                        return StreamEnd(_in_band_error(facts.error))
                    stats.chunks += 1
                    if facts.content:
                        if stats.first_content_at is None:
                            stats.first_content_at = trio.current_time()
                            await _flush(preamble, channel, timer)
                        timer.deadline = trio.current_time() + timeouts.idle
                    elif stats.first_content_at is None and not facts.finished:
                        preamble.append(payload)
                        continue
                    if facts.finished:
                        stats.finished = True
                        await _flush(preamble, channel, timer)
                    await _send(channel, payload, timer)
    except MalformedChunk as error:
        return StreamEnd(UpstreamUnavailable("The upstream sent a malformed chunk.",
                                             detail=str(error)))
    except SluiceError as error:
        return StreamEnd(error)
    if timer.cancelled_caught:
        if stats.first_content_at is None:
            return StreamEnd(UpstreamTimeout("first_chunk", timeouts.first_chunk))
        return StreamEnd(UpstreamTimeout("idle", timeouts.idle))
    if stats.finished:
        return StreamEnd()  # complete without [DONE]: we end it properly ourselves
    return StreamEnd(_cut("before its finish_reason"))


async def _flush(preamble: list[bytes], channel: trio.MemorySendChannel[ChannelItem],
                 timer: trio.CancelScope) -> None:
    for payload in preamble:
        await _send(channel, payload, timer)
    preamble.clear()


async def _send(channel: trio.MemorySendChannel[ChannelItem], item: ChannelItem,
                timer: trio.CancelScope) -> None:
    """Send with the upstream timer paused while the channel is full."""
    try:
        channel.send_nowait(item)
    except trio.WouldBlock:
        remaining = timer.deadline - trio.current_time()
        timer.deadline = math.inf
        await channel.send(item)
        timer.deadline = trio.current_time() + remaining


def _cut(when: str) -> StreamCut:
    return StreamCut("The upstream stream ended before it was complete.",
                     detail=f"upstream closed the stream {when}")


def _in_band_error(error: dict[str, object]) -> UpstreamUnavailable:
    return UpstreamUnavailable("The upstream model server reported an error mid-stream.",
                               detail=f"upstream error event: {error!r:.500}")
