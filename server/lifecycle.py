"""Draining: from "take no new work" to "end what is left", for one worker process.

    lifecycle.begin_drain()            # /readyz answers 503 from now on
    await lifecycle.drain(30.0)        # live streams get up to 30 s to finish...
                                       # ...then every remaining one is told to stop

Streams count themselves in and out (`stream_started`, `stream_ended`); a stream's watcher waits
on `stop_streams` as well as on its client, and a stream stopped that way
ends with a final, retryable in-band error ("server shutting down") and
closes its upstream like any other ending.
"""

from __future__ import annotations

import trio
from trio_util import AsyncValue


class Lifecycle:
    def __init__(self) -> None:
        self.draining = False
        self.stop_streams = trio.Event()
        self.active: AsyncValue[int] = AsyncValue(0)

    def stream_started(self) -> None:
        self.active.value += 1

    def stream_ended(self) -> None:
        self.active.value -= 1

    def begin_drain(self) -> None:
        self.draining = True

    async def drain(self, seconds: float) -> None:
        """Wait until no stream is live or ``seconds`` passed; then stop the rest."""
        self.begin_drain()
        with trio.move_on_after(seconds):
            await self.active.wait_value(0)
        self.stop_streams.set()
