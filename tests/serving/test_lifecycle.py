"""The drain in virtual time: wait for zero live streams, up to a deadline, then stop the rest.

Each stream here is what `server.stream.nursery.serve_stream` does with the
lifecycle: it registers its upstream cancel scope, runs for a while, and
unregisters however it ended.
"""

from __future__ import annotations

import pytest
import trio
import trio.testing

from server.serving.lifecycle import Lifecycle


def start_stream(nursery: trio.Nursery, lifecycle: Lifecycle, index: int, seconds: float,
                 stopped: dict[int, str | None]) -> None:
    """A stream that would run ``seconds``, live from now; it records why it was stopped."""
    upstream = trio.CancelScope()
    lifecycle.stream_started(upstream)  # registered before the task runs, as serve_stream does
    nursery.start_soon(run_stream, lifecycle, upstream, index, seconds, stopped)


async def run_stream(lifecycle: Lifecycle, upstream: trio.CancelScope, index: int,
                     seconds: float, stopped: dict[int, str | None]) -> None:
    try:
        with upstream:
            try:
                await trio.sleep(seconds)
            except trio.Cancelled as cancelled:
                stopped[index] = cancelled.reason
                raise
    finally:
        lifecycle.stream_ended(upstream)


DRAINS: list[tuple[str, list[float], float, float, set[int]]] = [
    # name, how long each live stream would still run, drain seconds,
    # when the drain returns, which streams it stopped
    ("nothing live: done at once", [], 30.0, 0.0, set()),
    ("streams that finish in time finish", [5.0, 12.0], 30.0, 12.0, set()),
    ("the rest are stopped at the deadline", [5.0, 40.0, 3600.0], 30.0, 30.0, {1, 2}),
    ("hour-long answers and a ten-minute drain", [7200.0, 60.0, 599.0], 600.0, 600.0, {0}),
    ("no drain time stops every stream at once", [1.0, 2.0], 0.0, 0.0, {0, 1}),
]


@pytest.mark.parametrize(("durations", "seconds", "returns_at", "stops"),
                         [row[1:] for row in DRAINS], ids=[row[0] for row in DRAINS])
async def test_drain(autojump_clock: trio.testing.MockClock, durations: list[float],
                     seconds: float, returns_at: float, stops: set[int]) -> None:
    lifecycle = Lifecycle()
    stopped: dict[int, str | None] = {}
    async with trio.open_nursery() as nursery:
        for index, duration in enumerate(durations):
            start_stream(nursery, lifecycle, index, duration, stopped)
        assert lifecycle.active.value == len(durations)
        started = trio.current_time()
        await lifecycle.drain(seconds)
        assert trio.current_time() - started == returns_at
        assert lifecycle.draining
    assert stopped == dict.fromkeys(stops, "server shutting down")
    assert lifecycle.active.value == 0


async def test_beginning_a_drain_stops_nothing(autojump_clock: trio.testing.MockClock) -> None:
    lifecycle = Lifecycle()
    stopped: dict[int, str | None] = {}
    async with trio.open_nursery() as nursery:
        start_stream(nursery, lifecycle, 0, 3600.0, stopped)
        assert not lifecycle.draining
        lifecycle.begin_drain()
        assert lifecycle.draining
    assert stopped == {}
    assert trio.current_time() == 3600.0


async def test_a_stream_starting_during_the_drain_is_waited_for_and_stopped(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Drain counts whatever is live, including a stream admitted just as it began."""
    lifecycle = Lifecycle()
    stopped: dict[int, str | None] = {}
    async with trio.open_nursery() as nursery:
        start_stream(nursery, lifecycle, 0, 10.0, stopped)
        nursery.start_soon(lifecycle.drain, 60.0)
        await trio.sleep(5)
        start_stream(nursery, lifecycle, 1, 600.0, stopped)
    assert stopped == {1: "server shutting down"}
    assert trio.current_time() == 60.0


async def test_cutting_a_drain_short_stops_what_is_live_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A second signal ends the wait: live streams are told to stop then, not at the deadline."""
    lifecycle = Lifecycle()
    stopped: dict[int, str | None] = {}
    async with trio.open_nursery() as nursery:
        start_stream(nursery, lifecycle, 0, 3600.0, stopped)
        nursery.start_soon(lifecycle.drain, 600.0)
        await trio.sleep(7)
        lifecycle.cut_short()
    assert stopped == {0: "server shutting down"}
    assert trio.current_time() == 7.0
