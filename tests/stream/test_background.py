"""The background nursery: who ends a detached stream, and how long its log is kept (virtual time).

The producers here are stand-ins with the contract of `serve_stream`: they
end when ``client_gone`` is set, and return the error that ended them. The
real producer runs end to end in tests/e2e/test_resume.py and
tests/e2e/test_responses.py.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import trio
import trio.testing

from server.config import ResumeSettings
from server.errors import ShuttingDown, SluiceError, StreamCut
from server.stream.background import BackgroundStreams
from server.stream.detached_stream import DetachedStream, Producer, end_log
from server.stream.event_log import EventLog

RETENTION = 100.0
GRACE = 10.0


class Shaper:
    def chunk(self, payload: bytes) -> list[bytes]:
        return [payload]

    def end(self, error: SluiceError | None) -> list[bytes]:
        return [b"done" if error is None else b"error:" + type(error).__name__.encode()]

    def cancelled(self, reason: str) -> list[bytes]:
        return [b"cancelled:" + reason.encode()]


def _stream(background: BackgroundStreams, grace: float | None = GRACE,
            owner: str = "me") -> DetachedStream:
    return background.add(DetachedStream(background.new_id("t_"), "chat", owner,
                                         EventLog(max_events=100, max_bytes=1000), Shaper(),
                                         grace=grace))


def _until_gone(stream: DetachedStream, events: int = 1) -> Producer:
    """A producer that writes ``events`` events and then runs until its client is gone."""

    async def produce(client_gone: trio.Event) -> SluiceError | None:
        stream.log.extend(b"e%d" % i for i in range(events))
        await client_gone.wait()
        return None

    return produce


@pytest.fixture
async def background(nursery: trio.Nursery) -> AsyncIterator[BackgroundStreams]:
    streams = BackgroundStreams(ResumeSettings(retention=RETENTION, grace=GRACE,
                                               max_retained_bytes=10))
    await nursery.start(streams.serve)
    yield streams
    await streams.stop()


async def test_an_unread_stream_is_abandoned_after_the_grace_period(
        autojump_clock: trio.testing.MockClock, background: BackgroundStreams) -> None:
    stream = _stream(background)
    stream.delivered = True
    background.start(stream, _until_gone(stream))
    with stream.reading():
        await trio.sleep(GRACE * 3)  # a reader: no grace period runs
        assert not stream.client_gone.is_set()
    started = trio.current_time()
    await stream.log.wait_closed()
    assert trio.current_time() - started == pytest.approx(GRACE)
    assert stream.log.read_after(0) == [b"cancelled:no client read the stream for 10 s"]


async def test_a_client_that_leaves_before_it_got_the_id_abandons_at_once(
        autojump_clock: trio.testing.MockClock, background: BackgroundStreams) -> None:
    stream = _stream(background)
    background.start(stream, _until_gone(stream))
    started = trio.current_time()
    with stream.reading():
        await trio.sleep(1)
    await stream.log.wait_closed()
    assert trio.current_time() - started == pytest.approx(1)
    assert stream.stop_reason == "the client left before the stream's id was sent"


async def test_cancel_stops_the_producer_and_ends_its_log(
        autojump_clock: trio.testing.MockClock, background: BackgroundStreams) -> None:
    stream = _stream(background, grace=None)
    background.start(stream, _until_gone(stream))
    await trio.sleep(1)
    stream.cancel("cancelled by the client")
    await stream.log.wait_closed()
    assert stream.log.read_after(-1) == [b"e0", b"cancelled:cancelled by the client"]
    assert stream.scope.cancelled_caught


@pytest.mark.parametrize(("events", "logged"), [(0, []), (2, [b"e0", b"e1", b"error:StreamCut"])])
async def test_an_error_the_writer_did_not_log_ends_the_log(
        autojump_clock: trio.testing.MockClock, background: BackgroundStreams,
        events: int, logged: list[bytes]) -> None:
    """E.g. no admission slot: `serve_stream` returns the error without running the writer."""
    stream = _stream(background, grace=None)

    async def produce(client_gone: trio.Event) -> SluiceError | None:
        stream.log.extend(b"e%d" % i for i in range(events))
        return StreamCut("cut")

    background.start(stream, produce)
    await stream.log.wait_closed()
    if events:
        assert stream.log.read_after(-1) == logged
    else:  # nothing sent yet: a reader can still give the error its own status
        assert isinstance(stream.log.failure, StreamCut)


async def test_a_finished_log_is_kept_for_the_retention_time_then_dropped(
        autojump_clock: trio.testing.MockClock, background: BackgroundStreams) -> None:
    stream = _stream(background, grace=None)

    async def produce(client_gone: trio.Event) -> SluiceError | None:
        end_log(stream.log, stream.shaper, None)
        return None

    background.start(stream, produce)
    await stream.log.wait_closed()
    await trio.sleep(RETENTION - 1)
    assert background.get("chat", stream.id, "me") is stream
    assert background.get("chat", stream.id, "someone else") is None
    assert background.get("response", stream.id, "me") is None
    assert background.retained == 1
    await trio.sleep(2)
    assert background.get("chat", stream.id, "me") is None
    assert background.retained == 0 and background.finished_bytes == 0


async def test_the_oldest_finished_logs_go_early_past_the_retained_bytes(
        autojump_clock: trio.testing.MockClock, background: BackgroundStreams) -> None:
    """max_retained_bytes is 10 here; each log holds 6 bytes."""
    streams = [_stream(background, grace=None) for _ in range(3)]
    for stream in streams:
        stream.log.append(b"e0")

        async def produce(client_gone: trio.Event, stream: DetachedStream = stream
                          ) -> SluiceError | None:
            end_log(stream.log, stream.shaper, None)
            return None

        background.start(stream, produce)
        await stream.log.wait_closed()
        await trio.sleep(1)
    assert [background.get("chat", s.id, "me") is not None for s in streams] == [
        False, False, True]
    assert background.finished_bytes == 6


async def test_stop_ends_every_producer_with_a_shutdown_error(
        autojump_clock: trio.testing.MockClock) -> None:
    background = BackgroundStreams(ResumeSettings())
    async with trio.open_nursery() as nursery:
        await nursery.start(background.serve)
        stream = _stream(background, grace=None)
        background.start(stream, _until_gone(stream))
        await trio.sleep(1)
        await background.stop()
    assert stream.log.read_after(-1) == [b"e0", b"error:" + ShuttingDown.__name__.encode()]
    with pytest.raises(ShuttingDown):
        background.start(_stream(background), _until_gone(stream))
