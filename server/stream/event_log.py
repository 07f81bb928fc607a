"""One stream's events, kept in order so that a client can replay them and then follow live.

A detached stream (a background response, a resumable chat stream) does not
write to a connection: its producer appends each event — already framed for
the wire — to an `EventLog`, and every client that reads the stream, the
first one included, is a reader of that log (`server.stream.tail`):

    log = EventLog(max_events=10_000, max_bytes=4 << 20)
    log.append(b"data: ...\\n\\n")            # the producer; sequence numbers 0, 1, 2, ...
    events = log.read_after(-1)              # a reader: everything still kept
    await log.wait_beyond(last_seen)         # ...then wait for the next event or the end
    log.close()                              # the producer's last word

Sequence numbers start at 0 and never repeat; ``read_after(n)`` returns the
events numbered above ``n`` (OpenAI's ``starting_after``; SSE's
``Last-Event-ID``). The log is bounded in events and in bytes: past either
bound the oldest events are dropped, and a reader that asks for a dropped one
gets `EventsExpired` rather than a silent gap. A stream that fails before its
first event keeps the error (`fail`), so that a reader can still answer with
the error's own HTTP status.

No lock is needed: everything runs in one trio thread, and appending never
waits — a producer is never held up by its readers (they are detached from
it on purpose), so the bounds are what keeps memory in check. Readers read
through `LogSource` (``fetch``, ``wait_beyond``), which a log shared between
instances implements too (`server.stream.redis_log`).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

import trio

from server.errors import EventsExpired, SluiceError


@dataclass(frozen=True, slots=True)
class Batch:
    """What a reader gets in one read: events, and whether they are the last."""

    events: list[bytes]
    ended: bool = False  # nothing will follow these events
    failure: SluiceError | None = None  # with ``ended``: the stream failed (see `EventLog.fail`)


class LogSource(Protocol):
    """Where a reader reads a detached stream: this process's log, or a shared one (Redis)."""

    async def fetch(self, seq: int) -> Batch:
        """The events numbered above ``seq`` available now. Raises `EventsExpired`."""
        ...

    async def wait_beyond(self, seq: int) -> None:
        """Return once an event numbered above ``seq`` (or the end) may be there."""
        ...


class EventLog:
    """The events of one stream: bounded, append-only, readable from any point still kept."""

    __slots__ = ("_changed", "_events", "bytes", "closed", "failure", "first", "max_bytes",
                 "max_events", "next")

    def __init__(self, *, max_events: int, max_bytes: int) -> None:
        self.max_events = max_events
        self.max_bytes = max_bytes
        self._events: deque[bytes] = deque()
        self.first = 0  # the sequence number of the oldest event kept
        self.next = 0  # the sequence number the next event gets
        self.bytes = 0  # the size of the events kept
        self.closed = False
        self.failure: SluiceError | None = None  # failed before its first event
        self._changed = trio.Event()

    def append(self, event: bytes) -> int:
        """Add one framed event; return its sequence number."""
        if self.closed:
            raise RuntimeError("append to a closed event log")
        self._events.append(event)
        self.bytes += len(event)
        seq = self.next
        self.next += 1
        while len(self._events) > 1 and (len(self._events) > self.max_events
                                         or self.bytes > self.max_bytes):
            self.bytes -= len(self._events.popleft())
            self.first += 1
        self._changed.set()
        return seq

    def extend(self, events: Iterable[bytes]) -> None:
        for event in events:
            self.append(event)

    def close(self) -> None:
        """No more events: readers finish once they have read what is kept."""
        self.closed = True
        self._changed.set()

    def fail(self, error: SluiceError) -> None:
        """End a log that has no event yet with an error that keeps its HTTP status."""
        if self.next:
            raise RuntimeError("a log with events ends with events, not a failure")
        self.failure = error
        self.close()

    def read_after(self, seq: int) -> list[bytes]:
        """The events numbered above ``seq`` (all that are kept: ``seq = -1``)."""
        if seq + 1 < self.first:
            raise EventsExpired(self.first)
        start = max(0, seq + 1 - self.first)
        if start >= len(self._events):
            return []
        if start == 0:
            return list(self._events)
        return [self._events[i] for i in range(start, len(self._events))]

    async def fetch(self, seq: int) -> Batch:
        events = self.read_after(seq)
        if self.finished_after(seq + len(events)):
            return Batch(events, ended=True, failure=self.failure)
        return Batch(events)

    def finished_after(self, seq: int) -> bool:
        """Whether a reader that has seen up to ``seq`` has seen everything there will be."""
        return self.closed and seq + 1 >= self.next

    async def wait_closed(self) -> None:
        """Return once the producer has written its last event."""
        while not self.closed:
            await self.wait_beyond(self.next - 1)
        await trio.lowlevel.checkpoint_if_cancelled()

    async def wait_beyond(self, seq: int) -> None:
        """Return once an event numbered above ``seq`` exists, or the log is closed."""
        while self.next <= seq + 1 and not self.closed:
            if self._changed.is_set():
                self._changed = trio.Event()  # the last change was seen: wait for the next
            await self._changed.wait()
        await trio.lowlevel.checkpoint_if_cancelled()
