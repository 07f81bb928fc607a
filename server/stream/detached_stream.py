"""One detached stream: its log, the dialect that shapes its events, and the handles that end it.

A detached stream (`server.stream.background` has the whole story) is
produced by the usual `serve_stream` nursery with `write_log` as its body
writer: each relayed chunk becomes the dialect's framed events (a
`LogShaper`: ``/v1/responses`` events, numbered chat chunks) in the
stream's `EventLog`. `DetachedStream` is what the background nursery keeps
of it: who owns it, who reads it (the grace period), and the scopes and
events that end it. Endpoints use it through `StreamHandle`, which a stream
produced by another instance implements too (`server.stream.redis_log`).

    stream = DetachedStream(id, "chat", owner, log, shaper, grace=60)
    write_body = partial(write_log, log=stream.log, shaper=stream.shaper)
    stream.cancel("cancelled by the client")      # stops the producer at once
    stream.abandon("nobody came back")            # as if its client had left
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import trio
from trio_util import AsyncValue

from server.errors import SluiceError
from server.stream.channel import ChannelItem
from server.stream.event_log import EventLog, LogSource
from server.stream.late_status import LateStatusResponse
from server.stream.usage import UsageMeter
from server.stream.writers import receive_batch

StreamKind = Literal["response", "chat", "browser_chat"]
Producer = Callable[[trio.Event], Awaitable[SluiceError | None]]


class StreamHandle(Protocol):
    """A detached stream as the endpoints use it: here (`DetachedStream`) or elsewhere
    (`server.stream.redis_log.RemoteStream`)."""

    id: str

    @property
    def source(self) -> LogSource: ...

    def attending(self) -> AbstractAsyncContextManager[None]:
        """Held while a client reads the stream: its grace period does not run out."""
        ...

    def delivered_now(self) -> None:
        """A reader's status line (and with it the stream's id) went out."""

    async def last_seq(self) -> int: ...

    async def snapshot(self) -> dict[str, Any] | None:
        """What the stream describes itself as now (a response object), if anything."""
        ...

    async def stop(self, reason: str, bound: float) -> bool:
        """Cancel it and wait (bounded) for its end; False if it had ended already."""
        ...


class LogShaper(Protocol):
    """A dialect's events, framed for the wire, for one detached stream."""

    def chunk(self, payload: bytes) -> list[bytes]:
        """The events for one upstream chunk (maybe none)."""

    def end(self, error: SluiceError | None) -> list[bytes]:
        """The last events: the clean end, or the in-band error."""

    def cancelled(self, reason: str) -> list[bytes]:
        """The last events of a stream stopped on purpose."""


async def write_log(
    items: trio.MemoryReceiveChannel[ChannelItem],
    response: LateStatusResponse,
    *,
    log: EventLog,
    shaper: LogShaper,
    meter: UsageMeter | None = None,  # unused: the dialect's shaper decides what is shown
) -> SluiceError | None:
    """The producer's `BodyWriter`: each chunk's events go into the log, never to a client.

    ``response`` is unused: a detached stream has no connection; its readers
    send their own statuses (`server.stream.tail`).
    """
    with items:
        while True:
            payloads, end = await receive_batch(items)
            for payload in payloads:
                log.extend(shaper.chunk(payload))
            if end is not None:
                end_log(log, shaper, end.error)
                return end.error


def end_log(log: EventLog, shaper: LogShaper, error: SluiceError | None) -> None:
    """Close the log: with the dialect's end, or — before any event — with the bare error."""
    if error is not None and not log.next:
        log.fail(error)  # nothing was sent: a reader can still answer with a real status
    else:
        log.extend(shaper.end(error))
        log.close()


@dataclass(eq=False)
class DetachedStream:
    """One detached stream: its log, who may read it, and the handles that end it."""

    id: str
    kind: StreamKind
    owner: str  # whoever started it (`server.api.ownership`); only they may read or cancel
    log: EventLog
    shaper: LogShaper
    grace: float | None  # unread this long → abandoned; None: runs on regardless
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    client_gone: trio.Event = field(default_factory=trio.Event)  # set when abandoned
    readers: AsyncValue[int] = field(default_factory=lambda: AsyncValue(0))
    delivered: bool = False  # some reader got a status line, and so the stream's id
    describe: Callable[[], dict[str, Any]] | None = None  # a response object, for polls
    stop_reason: str | None = None
    finished_at: float | None = None
    retention: trio.CancelScope = field(default_factory=trio.CancelScope)

    @property
    def source(self) -> LogSource:
        return self.log

    @asynccontextmanager
    async def attending(self) -> AsyncIterator[None]:
        with self.reading():
            yield

    def delivered_now(self) -> None:
        self.delivered = True

    async def last_seq(self) -> int:
        await trio.lowlevel.checkpoint()
        return self.log.next - 1

    async def snapshot(self) -> dict[str, Any] | None:
        await trio.lowlevel.checkpoint()
        return None if self.describe is None else self.describe()

    async def stop(self, reason: str, bound: float) -> bool:
        if self.log.closed:
            await trio.lowlevel.checkpoint()
            return False
        self.cancel(reason)
        with trio.move_on_after(bound):
            await self.log.wait_closed()
        return True

    def cancel(self, reason: str) -> None:
        """Stop the producer now; its log ends with the dialect's cancelled events."""
        if self.stop_reason is None:
            self.stop_reason = reason
        self.scope.cancel(reason)

    def abandon(self, reason: str) -> None:
        """End it as a relayed stream ends when its client leaves."""
        if self.stop_reason is None:
            self.stop_reason = reason
        self.client_gone.set()

    @contextmanager
    def reading(self) -> Iterator[None]:
        """Count a reader: while one reads, the grace period does not run."""
        self.readers.value += 1
        try:
            yield
        finally:
            self.readers.value -= 1
            if not self.readers.value and not self.delivered and self.grace is not None:
                # Its id never reached anyone: nobody can resume it.
                self.abandon("the client left before the stream's id was sent")
