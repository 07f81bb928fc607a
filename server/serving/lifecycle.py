"""Draining: from "take no new work" to "end what is left", for one worker process.

    lifecycle.begin_drain()            # /readyz answers 503 from now on
    await lifecycle.drain(30.0)        # live streams get up to 30 s to finish...
                                       # ...then every remaining one is told to stop

Each stream registers the cancel scope of its upstream side while it runs
(`stream_started`, `stream_ended`). At the end of a drain those scopes are
cancelled: each stream then ends with a final, retryable in-band error
("server shutting down") and closes its upstream like any other ending. No
task per stream waits for shutdown; the drain reaches the streams directly.
"""

from __future__ import annotations

import trio
from trio_util import AsyncValue


class Lifecycle:
    def __init__(self) -> None:
        self.draining = False
        self.active: AsyncValue[int] = AsyncValue(0)
        self._upstreams: set[trio.CancelScope] = set()

    def stream_started(self, upstream: trio.CancelScope) -> None:
        self._upstreams.add(upstream)
        self.active.value += 1

    def stream_ended(self, upstream: trio.CancelScope) -> None:
        self._upstreams.discard(upstream)
        self.active.value -= 1

    def begin_drain(self) -> None:
        self.draining = True

    async def drain(self, seconds: float) -> None:
        """Wait until no stream is live or ``seconds`` passed; then stop the rest."""
        self.begin_drain()
        with trio.move_on_after(seconds):
            await self.active.wait_value(0)
        for upstream in list(self._upstreams):
            upstream.cancel("server shutting down")
