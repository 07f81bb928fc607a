"""The vocabulary of a stream's channel: what flows from the upstream side to the writer.

A stream's nursery (`server.stream.nursery`) joins two sides with one bounded
memory channel. The pump (`server.stream.pump`) sends chunk payloads
(``bytes``, one upstream event each) and, last, one `StreamEnd`; the watcher
may add a `Heartbeat` when the response has been silent too long. A
`BodyWriter` drains the channel into the client's format and returns the
error that ended the stream.

    items_in, items_out = trio.open_memory_channel[ChannelItem](buffer)
    # pump:    items_in.send(payload) ... items_in.send(StreamEnd(error))
    # watcher: items_in.send_nowait(HEARTBEAT)
    # writer:  error = await write_body(items_out, response)
"""

from __future__ import annotations

from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Protocol

import trio

from server.errors import SluiceError
from server.stream.late_status import LateStatusResponse
from server.stream.usage import UsageMeter


@dataclass(frozen=True, slots=True)
class StreamEnd:
    """The last channel item: how the stream ended (``error`` None = complete)."""

    error: SluiceError | None = None


class Heartbeat:
    """A channel item from the stream's watcher: the response has been silent too long."""

    __slots__ = ()


HEARTBEAT = Heartbeat()

ChannelItem = bytes | StreamEnd | Heartbeat


class BodyWriter(Protocol):
    """Drains the stream's channel into the response; returns the error that ended it.

    A ``meter`` (`server.stream.usage`), given for requests made with an API
    key, notes the upstream's usage as it passes.
    """

    def __call__(
        self, items: trio.MemoryReceiveChannel[ChannelItem], response: LateStatusResponse,
        *, meter: UsageMeter | None = None,
    ) -> Awaitable[SluiceError | None]: ...


