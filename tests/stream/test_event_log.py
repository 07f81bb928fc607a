"""The event log of a detached stream: numbering, bounds, replay, waiting (no sockets)."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from server.errors import EventsExpired, StreamCut
from server.stream.event_log import EventLog


def _log(max_events: int = 100, max_bytes: int = 10_000) -> EventLog:
    return EventLog(max_events=max_events, max_bytes=max_bytes)


def test_events_are_numbered_from_zero_and_read_after_a_number() -> None:
    log = _log()
    assert [log.append(e) for e in (b"a", b"b", b"c")] == [0, 1, 2]
    assert log.read_after(-1) == [b"a", b"b", b"c"]
    assert log.read_after(0) == [b"b", b"c"]
    assert log.read_after(2) == []
    assert log.bytes == 3
    assert not log.finished_after(2)
    log.close()
    assert log.finished_after(2)
    assert not log.finished_after(1)
    with pytest.raises(RuntimeError):
        log.append(b"d")


@pytest.mark.parametrize(("max_events", "max_bytes", "kept"), [
    (3, 10_000, [b"cc", b"ddd", b"e"]),  # the event bound
    (100, 4, [b"ddd", b"e"]),            # the byte bound
    (100, 2, [b"e"]),                    # the newest event is always kept
])
def test_the_oldest_events_go_first_and_a_read_before_them_is_refused(
        max_events: int, max_bytes: int, kept: list[bytes]) -> None:
    log = _log(max_events, max_bytes)
    log.extend([b"a", b"bb", b"cc", b"ddd", b"e"])
    assert log.read_after(log.first - 1) == kept
    assert log.bytes == sum(map(len, kept))
    assert log.next == 5
    with pytest.raises(EventsExpired) as expired:
        log.read_after(log.first - 2)
    assert expired.value.status == 400
    assert expired.value.param == "starting_after"


def test_a_failure_before_any_event_keeps_the_error_and_closes() -> None:
    log = _log()
    error = StreamCut("cut")
    log.fail(error)
    assert log.closed and log.failure is error
    assert log.finished_after(-1)
    other = _log()
    other.append(b"x")
    with pytest.raises(RuntimeError):
        other.fail(error)


async def test_readers_wait_for_the_next_event_or_the_end(
        autojump_clock: trio.testing.MockClock) -> None:
    log = _log()
    seen: list[list[bytes]] = []

    async def reader(after: int) -> None:
        while not log.finished_after(after):
            await log.wait_beyond(after)
            events = log.read_after(after)
            seen.append(events)
            after += len(events)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(reader, -1)
        nursery.start_soon(reader, -1)
        await trio.sleep(1)
        log.append(b"a")
        await trio.sleep(1)
        log.extend([b"b", b"c"])
        await trio.sleep(1)
        log.close()
    assert seen == [[b"a"], [b"a"], [b"b", b"c"], [b"b", b"c"], [], []]


async def test_wait_closed_returns_when_the_producer_is_done(
        autojump_clock: trio.testing.MockClock) -> None:
    log = _log()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(log.wait_closed)
        await trio.sleep(1)
        log.append(b"a")
        await trio.sleep(1)
        log.close()
    await log.wait_closed()  # returns at once now
