"""``/v1/responses``: the Responses API, served by translation on the same streams as ``/v1``.

    POST /v1/responses                      create (stream or not; background or not)
    GET  /v1/responses/{id}                 a background response as it stands (poll)
    GET  /v1/responses/{id}?stream=true&starting_after=N   its events after N, then live
    POST /v1/responses/{id}/cancel          stop a background response's upstream

A request is translated into a chat completions request
(`server.api.responses_request`) and served like any other stream: routing,
fail-over before the commit point, continuation after it, timers,
keepalives, admission and metrics. Only the body format is the dialect's
own (`server.api.responses_writer`).

A *background* response (``background: true``) is detached from its
connection: its producer runs in the background nursery
(`server.stream.background`) and writes its events into a log, and the
creating client — streaming — is only the first reader of that log. It may
leave and come back with ``starting_after``; ``GET`` polls the object;
``cancel`` stops the upstream. Responses that are not background ones are
not kept: Sluice stores nothing it was not asked to resume.
"""

from __future__ import annotations

import time
from functools import partial

import orjson
import trio
from quart import Quart, Response, request

from server.api.browser_chat import StreamOpener
from server.api.detached import Ownership, TailResponse, detached, starting_after
from server.api.responses_events import ResponseMeta, ResponseTranscript
from server.api.responses_request import parse_responses_request
from server.api.responses_writer import (
    ResponseLogShaper,
    lost_events,
    write_response_events,
    write_response_object,
)
from server.config import Settings
from server.errors import RequestError, StreamNotFound
from server.stream.background import BackgroundStreams
from server.stream.detached_stream import DetachedStream, StreamHandle, write_log
from server.stream.event_log import EventLog

# How long a cancel request waits for the producer to write its last event.
CANCEL_BOUND = 5.0


def register_responses_api(app: Quart, settings: Settings, stream_response: StreamOpener,
                           background: BackgroundStreams, ownership: Ownership) -> None:
    """Add the ``/v1/responses`` endpoints."""
    keepalive = settings.server.keepalive_interval
    limits = settings.resume

    @app.post("/v1/responses")
    async def create_response() -> Response:
        received_at = trio.current_time()
        parsed = parse_responses_request(await request.get_data(False, False, False))
        meta = ResponseMeta(id=BackgroundStreams.new_id("resp_"), model=parsed.chat.model,
                            created_at=int(time.time()), echo=parsed.echo)
        transcript = ResponseTranscript(meta)
        if not parsed.background:
            writer = write_response_events if parsed.stream else write_response_object
            return await stream_response(parsed.chat, partial(writer, transcript=transcript),
                                         received_at, heartbeats=parsed.stream)
        shaper = ResponseLogShaper(transcript)
        stream = DetachedStream(meta.id, "response", await ownership.owner(),
                                EventLog(max_events=limits.max_events,
                                         max_bytes=limits.max_bytes), shaper, grace=None,
                                describe=transcript.response)
        planned = await stream_response(parsed.chat,
                                        partial(write_log, log=stream.log, shaper=shaper),
                                        received_at, heartbeats=False)
        stream.log.extend(transcript.opening())  # committed at once: the client needs the id
        background.start(background.add(stream), detached(planned))
        if parsed.stream:
            return TailResponse(stream, -1, keepalive_interval=keepalive, lost=lost_events)
        return _json(transcript.response())

    @app.get("/v1/responses/<response_id>")
    async def retrieve_response(response_id: str) -> Response:
        stream = await _background_response(background, ownership, response_id)
        wants_stream = request.args.get("stream", "false")
        if wants_stream not in ("true", "false"):
            raise RequestError("'stream' must be true or false.", param="stream",
                               code="invalid_value")
        if wants_stream == "true":
            after = await starting_after(request.args.get("starting_after"), "starting_after",
                                         stream)
            return TailResponse(stream, after, keepalive_interval=keepalive, lost=lost_events)
        return _json(await stream.snapshot())

    @app.post("/v1/responses/<response_id>/cancel")
    async def cancel_response(response_id: str) -> Response:
        """Stop the upstream; idempotent: a finished response is returned as it is."""
        stream = await _background_response(background, ownership, response_id)
        await stream.stop("cancelled by the client", CANCEL_BOUND)
        return _json(await stream.snapshot())


async def _background_response(background: BackgroundStreams, ownership: Ownership,
                               response_id: str) -> StreamHandle:
    stream = await background.find("response", response_id, await ownership.admit_reader())
    if stream is None:
        raise StreamNotFound("background response", response_id)
    return stream


def _json(body: object) -> Response:
    return Response(orjson.dumps(body), content_type="application/json")
