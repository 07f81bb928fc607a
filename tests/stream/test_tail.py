"""A client reading an event log: the commit point, keepalives, the end, a reader left behind.

`serve_tail` runs against a recording ASGI ``send`` in virtual time; the
same code serves real clients in tests/e2e/test_resume.py and test_responses.py.
"""

from __future__ import annotations

from typing import Any

import orjson
import trio
import trio.testing

from server.errors import SluiceError, StreamCut, error_object
from server.sse import KEEPALIVE
from server.stream.event_log import EventLog
from server.stream.tail import TailPlan, serve_tail

KEEPALIVE_INTERVAL = 5.0


class Sent:
    """What a client would have received: status, headers, body messages."""

    def __init__(self) -> None:
        self.status: int | None = None
        self.headers: list[tuple[bytes, bytes]] = []
        self.bodies: list[bytes] = []
        self.complete = False

    async def send(self, message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            self.status, self.headers = message["status"], message["headers"]
        else:
            self.bodies.append(message["body"])
            self.complete = not message["more_body"]


def _lost(error: SluiceError) -> bytes:
    return b"data: " + orjson.dumps({"error": error_object(error)}) + b"\n\n"


def _plan(log: EventLog, after: int = -1) -> TailPlan:
    return TailPlan(log, after, KEEPALIVE_INTERVAL, _lost)


def _log(max_events: int = 100) -> EventLog:
    return EventLog(max_events=max_events, max_bytes=100_000)


async def test_replay_then_live_tail_then_the_end(autojump_clock: trio.testing.MockClock) -> None:
    log = _log()
    log.extend([b"e0;", b"e1;", b"e2;"])
    sent = Sent()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve_tail, _plan(log, after=0), sent.send, [], trio.Event())
        await trio.sleep(1)
        assert (sent.status, b"".join(sent.bodies)) == (200, b"e1;e2;")  # the missed ones
        log.append(b"e3;")
        await trio.sleep(KEEPALIVE_INTERVAL + 1)
        assert sent.bodies[-1] == KEEPALIVE  # silence: a keepalive
        log.append(b"e4;")
        log.close()
    assert b"".join(sent.bodies) == b"e1;e2;e3;" + KEEPALIVE + b"e4;"
    assert sent.complete


async def test_a_log_that_failed_before_any_event_answers_with_its_status(
        autojump_clock: trio.testing.MockClock) -> None:
    log = _log()
    sent = Sent()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve_tail, _plan(log), sent.send, [(b"x-a", b"b")], trio.Event())
        await trio.sleep(1)
        assert sent.status is None  # nothing is sent before the commit point
        log.fail(StreamCut("cut"))
    assert sent.status == 502 and sent.complete
    assert (b"x-a", b"b") in sent.headers
    assert orjson.loads(sent.bodies[-1])["error"]["code"] == "stream_truncated"


async def test_a_keepalive_commits_and_a_later_failure_is_in_band(
        autojump_clock: trio.testing.MockClock) -> None:
    log = _log()
    sent = Sent()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve_tail, _plan(log), sent.send, [], trio.Event())
        await trio.sleep(KEEPALIVE_INTERVAL + 1)
        log.fail(StreamCut("cut"))
    assert sent.status == 200
    assert sent.bodies[0] == KEEPALIVE
    assert b"stream_truncated" in sent.bodies[-1] and sent.complete


async def test_a_reader_the_log_left_behind_gets_the_in_band_error(
        autojump_clock: trio.testing.MockClock) -> None:
    """The log keeps 3 events; the client stalls in its first write while 5 more arrive."""
    log = _log(max_events=3)
    log.extend([b"e0;", b"e1;"])
    sent = Sent()
    release = trio.Event()

    async def slow_send(message: dict[str, Any]) -> None:
        await sent.send(message)
        if message["type"] == "http.response.body" and len(sent.bodies) == 1:
            await release.wait()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve_tail, TailPlan(log, -1, None, _lost), slow_send, [],
                           trio.Event())
        await trio.sleep(1)
        log.extend([b"e2;", b"e3;", b"e4;", b"e5;", b"e6;"])
        release.set()
    assert b"".join(sent.bodies).startswith(b"e0;e1;")
    assert b"e2;" not in b"".join(sent.bodies)
    assert b"events_expired" in sent.bodies[-1] and sent.complete  # no silent gap


async def test_the_client_leaving_ends_only_the_reader(
        autojump_clock: trio.testing.MockClock) -> None:
    log = _log()
    log.append(b"e0;")
    sent = Sent()
    gone = trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve_tail, _plan(log), sent.send, [], gone)
        await trio.sleep(1)
        gone.set()
    assert sent.bodies == [b"e0;"] and not sent.complete
    assert not log.closed
    log.append(b"e1;")  # the producer is untouched
