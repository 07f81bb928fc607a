"""Resumable chat streams: ``X-Sluice-Resumable: true`` keeps a chat stream alive for its client.

    POST /v1/chat/completions   X-Sluice-Resumable: true   {"stream": true, ...}
        → 200, X-Sluice-Stream-ID: chatstream_<32 hex>, events each with ``id: N``
    GET  /v1/chat/completions/{stream_id}/stream   Last-Event-ID: N   (or ?starting_after=N)
        → the events after N, then the live tail, then the end the original would have had
    POST /v1/chat/completions/{stream_id}/cancel   → stop the upstream now

The browser API ``/chat`` has the same three, in its own event format
(``POST /chat``, ``GET /chat/{stream_id}/stream``, ``POST /chat/{stream_id}/cancel``):
a GET with ``Last-Event-ID`` is what a browser's ``EventSource`` sends when it
reconnects by itself, so a page can resume a ``/chat`` stream with nothing
but ``new EventSource(url)``. When a request carries both, ``Last-Event-ID``
wins: an ``EventSource`` opened with ``?starting_after=N`` keeps that URL for
its reconnects and sends the newer position in the header.

Opting in detaches the stream from its connection: its producer runs in the
background nursery (`server.stream.background`) and writes every event —
the chunk as the upstream sent it, with an ``id:`` line numbering it from 0
— into a log; the requesting client is the log's first reader. When the
last reader leaves, the stream runs on for ``[resume] grace`` seconds
waiting for one to come back, then ends as an abandoned stream does (its
upstream closed, outcome ``client_disconnect``). A client that leaves
before it was sent the status line (and so the stream id) cannot come
back: its stream is ended at once, as without the opt-in.

Without the header nothing changes: the stream lives in the connection's
nursery and ends when its client leaves.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from typing import TYPE_CHECKING

import orjson
import trio
from quart import Quart, Response, request

from server.api.browser_chat_writers import ChatTranscript
from server.api.chat_completions import ChatRequest
from server.api.detached import Ownership, TailResponse, detached, starting_after
from server.api.resume_header import RESUMABLE_HEADER, STREAM_ID_HEADER
from server.chunks import error_event_payload, inspect_chunk
from server.config import Settings
from server.errors import RequestError, SluiceError, StreamCancelled, StreamNotFound
from server.sse import DONE, frame
from server.stream.background import BackgroundStreams
from server.stream.detached_stream import (
    DetachedStream,
    LogShaper,
    StreamHandle,
    StreamKind,
    write_log,
)
from server.stream.event_log import EventLog

if TYPE_CHECKING:  # browser_chat serves /chat and starts its resumable streams here
    from server.api.browser_chat import StreamOpener

# How long a cancel request waits for the producer to write its last event.
CANCEL_BOUND = 5.0


class NumberedEvents:
    """SSE events numbered from 0 by an ``id:`` line: what ``Last-Event-ID`` refers to."""

    __slots__ = ("seq",)

    def __init__(self) -> None:
        self.seq = 0

    def numbered(self, payload: bytes) -> bytes:
        event = b"id: %d\n" % self.seq + frame(payload)
        self.seq += 1
        return event


class ChatLogShaper(NumberedEvents):
    """A resumable ``/v1`` chat stream's events: each chunk as sent, numbered."""

    __slots__ = ()

    def chunk(self, payload: bytes) -> list[bytes]:
        return [self.numbered(payload)]

    def end(self, error: SluiceError | None) -> list[bytes]:
        return [self.numbered(DONE if error is None else error_event_payload(error))]

    def cancelled(self, reason: str) -> list[bytes]:
        return self.end(StreamCancelled(reason))


class BrowserChatLogShaper(NumberedEvents):
    """A resumable ``/chat`` stream's events: one per content delta, then the done event.

    The events of `server.api.browser_chat_writers`, numbered; each carries the
    reply so far (``full_content``), so a page that resumes from any event has
    the whole text.
    """

    __slots__ = ("transcript",)

    def __init__(self, transcript: ChatTranscript) -> None:
        super().__init__()
        self.transcript = transcript

    def chunk(self, payload: bytes) -> list[bytes]:
        content = self.transcript.add(inspect_chunk(payload)[1])
        if not content:
            return []
        event = self.transcript.delta_event(content, trio.current_time(), datetime.now(UTC))
        return [self.numbered(orjson.dumps(event))]

    def end(self, error: SluiceError | None) -> list[bytes]:
        done = self.transcript.done_event(trio.current_time(), datetime.now(UTC), error)
        return [self.numbered(orjson.dumps(done))]

    def cancelled(self, reason: str) -> list[bytes]:
        return self.end(StreamCancelled(reason))


def in_band_error(error: SluiceError) -> bytes:
    """A ``/v1`` reader that fell behind what the log keeps: the in-band error event."""
    return frame(error_event_payload(error))


def browser_chat_lost(error: SluiceError) -> bytes:
    """A ``/chat`` reader that fell behind what the log keeps: a done event with the error."""
    return frame(orjson.dumps({"done": True, "error": error.public_message,
                               "error_code": error.code, "error_id": error.error_id}))


@dataclass(frozen=True, slots=True)
class Dialect:
    """One API's resumable streams: where they are resumed, and how their events look."""

    kind: StreamKind
    path: str  # the create endpoint; resume and cancel are under it
    object: str  # the cancel answer's ``object``
    lost: Callable[[SluiceError], bytes]


CHAT = Dialect("chat", "/v1/chat/completions", "chat.completion.stream", in_band_error)
BROWSER_CHAT = Dialect("browser_chat", "/chat", "chat.stream", browser_chat_lost)


class ResumableStreams:
    """Starts resumable streams (both chat dialects) and serves their resume and cancel."""

    def __init__(self, settings: Settings, stream_response: StreamOpener,
                 background: BackgroundStreams, ownership: Ownership) -> None:
        self.settings = settings
        self.stream_response = stream_response
        self.background = background
        self.ownership = ownership

    async def start_chat(self, chat: ChatRequest, received_at: float) -> Response:
        """Serve an opted-in ``/v1/chat/completions`` request as a detached stream."""
        return await self._start(CHAT, chat, received_at, ChatLogShaper())

    async def start_browser_chat(self, chat: ChatRequest, received_at: float) -> Response:
        """Serve an opted-in ``/chat`` request as a detached stream."""
        shaper = BrowserChatLogShaper(ChatTranscript(chat.model, received_at))
        return await self._start(BROWSER_CHAT, chat, received_at, shaper)

    async def _start(self, dialect: Dialect, chat: ChatRequest, received_at: float,
                     shaper: LogShaper) -> Response:
        if not chat.stream:
            raise RequestError(f"{RESUMABLE_HEADER} needs 'stream': true.", param="stream",
                               code="invalid_value")
        limits = self.settings.resume
        stream = DetachedStream(BackgroundStreams.new_id("chatstream_"), dialect.kind,
                                await self.ownership.owner(),
                                EventLog(max_events=limits.max_events,
                                         max_bytes=limits.max_bytes),
                                shaper, grace=limits.grace)
        planned = await self.stream_response(chat, partial(write_log, log=stream.log,
                                                           shaper=shaper),
                                             received_at, heartbeats=False)
        self.background.start(self.background.add(stream), detached(planned))
        return self._reader(dialect, stream, -1)

    def register(self, app: Quart) -> None:
        """Add the resume and cancel endpoints of both dialects."""
        for dialect in (CHAT, BROWSER_CHAT):
            app.add_url_rule(f"{dialect.path}/<stream_id>/stream", f"resume_{dialect.kind}",
                             partial(self._resume, dialect), methods=["GET"])
            app.add_url_rule(f"{dialect.path}/<stream_id>/cancel", f"cancel_{dialect.kind}",
                             partial(self._cancel, dialect), methods=["POST"])

    async def _resume(self, dialect: Dialect, stream_id: str) -> Response:
        stream = await self._find(dialect, stream_id)
        last_event_id = request.headers.get("last-event-id")
        if last_event_id is not None:  # an EventSource's reconnect: newer than its URL's
            after = await starting_after(last_event_id, "Last-Event-ID", stream)
        else:
            after = await starting_after(request.args.get("starting_after"),
                                         "starting_after", stream)
        return self._reader(dialect, stream, after)

    async def _cancel(self, dialect: Dialect, stream_id: str) -> Response:
        stream = await self._find(dialect, stream_id)
        stopped = await stream.stop("cancelled by the client", CANCEL_BOUND)
        # "ended": it had ended by itself; cancelling is idempotent.
        body = {"id": stream.id, "object": dialect.object,
                "status": "cancelled" if stopped else "ended",
                "last_event_id": await stream.last_seq()}
        return Response(orjson.dumps(body), content_type="application/json")

    def _reader(self, dialect: Dialect, stream: StreamHandle, after: int) -> TailResponse:
        reader = TailResponse(stream, after,
                              keepalive_interval=self.settings.server.keepalive_interval,
                              lost=dialect.lost)
        reader.headers[STREAM_ID_HEADER] = stream.id
        return reader

    async def _find(self, dialect: Dialect, stream_id: str) -> StreamHandle:
        owner = await self.ownership.admit_reader()
        stream = await self.background.find(dialect.kind, stream_id, owner)
        if stream is None:
            raise StreamNotFound("resumable chat stream", stream_id)
        return stream
