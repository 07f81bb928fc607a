"""The ``/v1/responses`` body formats: a stream's chunks as typed Responses events, or one object.

These are `BodyWriter`s like `server.stream.writers` and the ``/chat`` ones:
the relay, pump, timers and disconnect handling are shared; only what the
client reads differs. `ResponseTranscript` (`server.api.responses_events`)
does the shaping; here are the clock and the sends.

    write_body = partial(write_response_events, transcript=t)   # stream: true
    write_body = partial(write_response_object, transcript=t)   # stream: false
    shaper = ResponseLogShaper(t)                               # background: into a log

The commit point is the relay's — the first content chunk, or the first
keepalive — and ``response.created`` is *not* it: nothing at all is sent
before, so a failure there is a real HTTP status with the OpenAI error body
(the SDK raises its typed exception). At the commit point
``response.created`` and ``response.in_progress`` go out first; after it, a
failure ends the stream with ``response.failed``, never a bare error and
never a ``response.completed``. A background response commits at once
instead: its client must learn the response's id before anything can fail.
"""

from __future__ import annotations

import time

import orjson
import trio

from server.api.responses_events import ResponseTranscript
from server.chunks import inspect_chunk
from server.errors import SluiceError, error_object
from server.sse import KEEPALIVE
from server.stream.channel import ChannelItem
from server.stream.late_status import LateStatusResponse
from server.stream.usage import UsageMeter
from server.stream.writers import receive_batch, write_one_reply


async def write_response_events(
    items: trio.MemoryReceiveChannel[ChannelItem],
    response: LateStatusResponse,
    *,
    transcript: ResponseTranscript,
    meter: UsageMeter | None = None,  # unused: a response reports its usage itself
) -> SluiceError | None:
    """Send Responses events as the chunks come; keepalives in silence; the end."""
    with items:
        while True:
            payloads, end = await receive_batch(items)
            events = [event for payload in payloads
                      for event in transcript.add(inspect_chunk(payload)[1])]
            if end is None:
                if not payloads:  # a heartbeat: before the commit point it commits
                    events = transcript.opening() or [KEEPALIVE]
                if events:
                    await response.write(b"".join(events))
                continue
            if end.error is not None and not (response.started or events):
                await response.fail(end.error)  # nothing sent: a real status
                return end.error
            events += transcript.closing(end.error, int(time.time()))
            await response.finish(b"".join(events))
            return end.error


async def write_response_object(
    items: trio.MemoryReceiveChannel[ChannelItem],
    response: LateStatusResponse,
    *,
    transcript: ResponseTranscript,
    meter: UsageMeter | None = None,  # unused: a response reports its usage itself
) -> SluiceError | None:
    """Fold the stream into one ``response`` object; nothing is sent until the end."""

    def reply() -> object:
        transcript.closing(None, int(time.time()))
        return transcript.response()

    return await write_one_reply(items, response, transcript.add, reply)


class ResponseLogShaper:
    """A background response's events, for its log (`server.stream.background.LogShaper`)."""

    __slots__ = ("transcript",)

    def __init__(self, transcript: ResponseTranscript) -> None:
        self.transcript = transcript

    def chunk(self, payload: bytes) -> list[bytes]:
        return self.transcript.add(inspect_chunk(payload)[1])

    def end(self, error: SluiceError | None) -> list[bytes]:
        return self.transcript.closing(error, int(time.time()))

    def cancelled(self, reason: str) -> list[bytes]:
        return self.transcript.cancelled()


def lost_events(error: SluiceError) -> bytes:
    """A typed ``error`` event: a reader fell behind what the log keeps."""
    body = {"type": "error", **error_object(error)}
    return b"event: error\ndata: " + orjson.dumps(body) + b"\n\n"
