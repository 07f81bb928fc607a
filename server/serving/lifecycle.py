"""Draining: from "take no new work" to "end what is left", for one worker process.

    live = lifecycle.begin_drain()     # /readyz answers 503, new chat requests 503 from now on
    with trio.move_on_after(30.0):     # live streams get up to 30 s to finish...
        await lifecycle.active.wait_value(0)
    stopped = lifecycle.stop_streams() # ...then every remaining one is told to stop

Each stream registers the cancel scope of its upstream side while it runs
(`stream_started`, `stream_ended`). `stop_streams` cancels those scopes:
each stream then ends with a final, retryable in-band error ("server
shutting down") and closes its upstream like any other ending. No task per
stream waits for shutdown; the drain reaches the streams directly. When to
drain is the serving worker's decision (`server.serving.worker`).
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

    def begin_drain(self) -> int:
        """Take no new work from now on; return how many streams are live."""
        self.draining = True
        live: int = self.active.value
        return live

    def stop_streams(self) -> int:
        """Tell every live stream to end now; return how many were told."""
        upstreams = list(self._upstreams)
        for upstream in upstreams:
            upstream.cancel("server shutting down")
        return len(upstreams)
