"""Play a response `plan` onto a connection while watching for the peer to leave.

Whenever the plan has to wait (sleep until a token is due, or stall), the
writer and a disconnect watcher are siblings in one nursery (the shape
quart-trio and trio-websocket use). The watcher is then the connection's only
reader: when ``receive_some`` reports EOF or a reset it cancels the writer, so
the fake notices a client leaving promptly even while it is stalled or
sleeping between tokens. Bytes that do arrive (a pipelined next request) go
into the connection's `RequestBuffer`.

Until the plan first has to wait, it is written without the watcher: in trio
a task plus a cancellation cost more than a short ``tps=0`` response, and a
peer that leaves while we are writing is noticed anyway, by the next
``send_all`` failing (the kernel answers data for a closed socket with RST).
One consequence: a peer that only half-closes (``shutdown(SHUT_WR)``) while a
paced response is due counts as gone.

Consecutive ``bytes`` steps are coalesced into one ``send_all`` of up to
`WRITE_BYTES`: at ``tps=0`` that is what makes the fake fast. A `SleepUntil`
whose deadline has already passed does not flush, so a fake that falls behind
its pace catches up in large writes instead of many small ones::

    outcome = await play(stream, plan_chat(scenario, chat, facts), started_at=now,
                         buffer=buffer)
    if outcome is not Outcome.COMPLETE:
        ...  # close the connection
"""

from __future__ import annotations

import enum
import itertools
import socket
import struct
from collections.abc import Iterable, Iterator

import trio

from server.testing.fake_upstream.http11 import RECEIVE_BYTES, RequestBuffer
from server.testing.fake_upstream.plan import Control, SleepUntil, Step

WRITE_BYTES = 64 * 1024
_LINGER_RESET = struct.pack("ii", 1, 0)


class Outcome(enum.Enum):
    COMPLETE = "complete"
    """The plan ran to its end; the connection may serve another request."""
    CLOSED = "closed"
    """The plan cut or reset the connection; close it now."""
    PEER_LEFT = "peer left"
    """The peer closed or reset the connection during the response."""


async def play(
    stream: trio.SocketStream, plan: Iterable[Step], *, started_at: float, buffer: RequestBuffer
) -> Outcome:
    """Write `plan` to `stream`; return early with PEER_LEFT if the peer goes away."""
    steps = iter(plan)
    try:
        result = await _write(stream, steps, started_at, watched=False)
    except trio.BrokenResourceError:
        return Outcome.PEER_LEFT
    if isinstance(result, Outcome):
        return result
    # `result` is the first step that has to wait: from here on, watch the peer.
    outcome = Outcome.PEER_LEFT
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_watch_peer, stream, buffer, nursery.cancel_scope)
        try:
            finished = await _write(
                stream, itertools.chain([result], steps), started_at, watched=True
            )
        except trio.BrokenResourceError:
            finished = Outcome.PEER_LEFT
        assert isinstance(finished, Outcome), "a watched write never stops at a wait"
        outcome = finished
        nursery.cancel_scope.cancel("response finished")
    return outcome


async def _write(
    stream: trio.SocketStream, steps: Iterator[Step], started_at: float, *, watched: bool
) -> Outcome | Step:
    """Write until the plan ends (an `Outcome`) or, unless `watched`, until it must wait."""
    pending: list[bytes] = []
    size = 0
    for step in steps:
        if type(step) is bytes:
            pending.append(step)
            size += len(step)
            if size >= WRITE_BYTES:
                await _flush(stream, pending)
                size = 0
        elif isinstance(step, SleepUntil):
            deadline = started_at + step.offset
            if deadline > trio.current_time():
                await _flush(stream, pending)
                size = 0
                if not watched:
                    return step
                await trio.sleep_until(deadline)
        else:
            await _flush(stream, pending)
            size = 0
            if step is Control.CUT:
                return Outcome.CLOSED
            if step is Control.RESET:
                # SO_LINGER with a zero timeout makes close() send RST instead of FIN.
                stream.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
                return Outcome.CLOSED
            if step is Control.STALL:
                if not watched:
                    return step
                await trio.sleep_forever()
    await _flush(stream, pending)
    return Outcome.COMPLETE


async def _flush(stream: trio.SocketStream, pending: list[bytes]) -> None:
    if pending:
        await stream.send_all(b"".join(pending))
        pending.clear()


async def _watch_peer(
    stream: trio.SocketStream, buffer: RequestBuffer, scope: trio.CancelScope
) -> None:
    while True:
        try:
            data = await stream.receive_some(RECEIVE_BYTES)
        except trio.BrokenResourceError:
            data = b""
        if not data:
            scope.cancel("peer closed the connection")
            return
        buffer.feed(data)
