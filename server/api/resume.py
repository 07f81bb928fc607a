"""Resumable chat streams: ``X-Sluice-Resumable: true`` keeps a chat stream alive for its client.

    POST /v1/chat/completions   X-Sluice-Resumable: true   {"stream": true, ...}
        → 200, X-Sluice-Stream-ID: chatstream_<32 hex>, events each with ``id: N``
    GET  /v1/chat/completions/{stream_id}/stream   Last-Event-ID: N   (or ?starting_after=N)
        → the events after N, then the live tail, then the end the original would have had
    POST /v1/chat/completions/{stream_id}/cancel   → stop the upstream now

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

from functools import partial

import orjson
from quart import Quart, Response, request

from server.api.browser_chat import StreamOpener
from server.api.chat_completions import ChatRequest
from server.api.detached import TailResponse, detached, owner_of, starting_after
from server.chunks import error_event_payload
from server.config import Settings
from server.errors import RequestError, SluiceError, StreamCancelled, StreamNotFound
from server.sse import DONE, frame
from server.stream.background import BackgroundStreams
from server.stream.detached_stream import DetachedStream, StreamHandle, write_log
from server.stream.event_log import EventLog

RESUMABLE_HEADER = "X-Sluice-Resumable"
STREAM_ID_HEADER = "X-Sluice-Stream-ID"
# How long a cancel request waits for the producer to write its last event.
CANCEL_BOUND = 5.0


def wants_resumable(value: str | None) -> bool:
    """The opt-in header: absent or ``false`` → no; ``true`` → yes; anything else → 400."""
    if value is None or value.lower() == "false":
        return False
    if value.lower() == "true":
        return True
    raise RequestError(f"The {RESUMABLE_HEADER} header must be true or false.",
                       param=RESUMABLE_HEADER, code="invalid_value")


class ChatLogShaper:
    """A resumable chat stream's events: each chunk as sent, numbered by an ``id:`` line."""

    __slots__ = ("seq",)

    def __init__(self) -> None:
        self.seq = 0

    def chunk(self, payload: bytes) -> list[bytes]:
        return [self._numbered(payload)]

    def end(self, error: SluiceError | None) -> list[bytes]:
        return [self._numbered(DONE if error is None else error_event_payload(error))]

    def cancelled(self, reason: str) -> list[bytes]:
        return self.end(StreamCancelled(reason))

    def _numbered(self, payload: bytes) -> bytes:
        event = b"id: %d\n" % self.seq + frame(payload)
        self.seq += 1
        return event


def in_band_error(error: SluiceError) -> bytes:
    return frame(error_event_payload(error))


async def resumable_chat(chat: ChatRequest, received_at: float, settings: Settings,
                         stream_response: StreamOpener,
                         background: BackgroundStreams) -> Response:
    """Serve an opted-in ``/v1/chat/completions`` request as a detached stream."""
    if not chat.stream:
        raise RequestError(f"{RESUMABLE_HEADER} needs 'stream': true.", param="stream",
                           code="invalid_value")
    limits = settings.resume
    shaper = ChatLogShaper()
    stream = DetachedStream(BackgroundStreams.new_id("chatstream_"), "chat",
                            owner_of(request.headers.get("authorization")),
                            EventLog(max_events=limits.max_events, max_bytes=limits.max_bytes),
                            shaper, grace=limits.grace)
    planned = await stream_response(chat, partial(write_log, log=stream.log, shaper=shaper),
                                    received_at, heartbeats=False)
    background.start(background.add(stream), detached(planned))
    return _reader(stream, -1, settings)


def register_resume_api(app: Quart, settings: Settings, background: BackgroundStreams) -> None:
    """Add the resume and cancel endpoints of resumable chat streams."""

    @app.get("/v1/chat/completions/<stream_id>/stream")
    async def resume_chat_stream(stream_id: str) -> Response:
        stream = await _chat_stream(background, stream_id)
        query = request.args.get("starting_after")
        if query is not None:
            after = await starting_after(query, "starting_after", stream)
        else:
            after = await starting_after(request.headers.get("last-event-id"), "Last-Event-ID",
                                         stream)
        return _reader(stream, after, settings)

    @app.post("/v1/chat/completions/<stream_id>/cancel")
    async def cancel_chat_stream(stream_id: str) -> Response:
        stream = await _chat_stream(background, stream_id)
        stopped = await stream.stop("cancelled by the client", CANCEL_BOUND)
        # "ended": it had ended by itself; cancelling is idempotent.
        body = {"id": stream.id, "object": "chat.completion.stream",
                "status": "cancelled" if stopped else "ended",
                "last_event_id": await stream.last_seq()}
        return Response(orjson.dumps(body), content_type="application/json")


def _reader(stream: StreamHandle, after: int, settings: Settings) -> TailResponse:
    reader = TailResponse(stream, after, keepalive_interval=settings.server.keepalive_interval,
                          lost=in_band_error)
    reader.headers[STREAM_ID_HEADER] = stream.id
    return reader


async def _chat_stream(background: BackgroundStreams, stream_id: str) -> StreamHandle:
    stream = await background.find("chat", stream_id,
                                   owner_of(request.headers.get("authorization")))
    if stream is None:
        raise StreamNotFound("resumable chat stream", stream_id)
    return stream
