"""Draining: from "take no new work" to "end what is left", for one worker process.

    stopped = await lifecycle.drain(30.0)  # /readyz and new chat requests 503 from now on;
                                           # live streams get up to 30 s to finish, then
                                           # every remaining one is told to stop
    lifecycle.cut_short()                  # (from another task: end the wait now)

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
        self._waiting = trio.CancelScope()  # a drain's wait for the live streams

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

    async def drain(self, seconds: float) -> int:
        """Take no new work, give live streams ``seconds`` to end, then stop the rest.

        Returns how many streams were told to stop.
        """
        self.begin_drain()
        self._waiting.deadline = trio.current_time() + seconds
        with self._waiting:
            await self.active.wait_value(0)
        return self.stop_streams()

    def cut_short(self) -> None:
        """End a drain's wait now (say, a second SIGTERM): stop what is still live."""
        self._waiting.cancel("the drain was cut short")

    def stop_streams(self) -> int:
        """Tell every live stream to end now; return how many were told."""
        upstreams = list(self._upstreams)
        for upstream in upstreams:
            upstream.cancel("server shutting down")
        return len(upstreams)
