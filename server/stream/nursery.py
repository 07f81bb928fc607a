"""One stream's life: a nursery holding the upstream reader, the channel and a disconnect watcher.

The pump (`server.stream.pump`) fills a bounded channel, the writer (the
nursery's own body, a `BodyWriter` of `server.stream.writers`) drains it into
the response, and `watch_stream` cancels the nursery when the client leaves
and puts a `Heartbeat` into the channel when the response has been silent
too long. The README's "One nursery per stream" has the picture.

Whatever ends the stream — completion, the client leaving, an upstream failure,
a timeout, shutdown — ends the nursery, and leaving it releases everything the
stream held. Nothing is closed by hand: the upstream connection is the pump's
``async with``, each channel end is closed by its owner's ``with``.

The writer decides the HTTP status. Until the first content chunk (or the first
keepalive) nothing is sent, so an early failure gets a real status and an
OpenAI error body; after that, failures travel in-band as
``data: {"error": ...}`` and the body ends *without* ``[DONE]`` — a cut stream
never looks complete.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import trio

from server.access_log import AccessLog, StreamRecord
from server.api.chat_completions import ChatRequest
from server.errors import ShuttingDown, SluiceError, TooManyRequests
from server.limits.admission import Slots
from server.metrics import Metrics
from server.serving.lifecycle import Lifecycle
from server.stream.channel import HEARTBEAT, BodyWriter, ChannelItem, StreamEnd
from server.stream.late_status import ASGISend, Headers, LateStatusResponse
from server.stream.outcome import Outcome, stream_outcome
from server.stream.progress import StreamProgress
from server.stream.pump import PumpContext, pump_upstream
from server.telemetry.tracer import NULL_TRACER, Tracer

if TYPE_CHECKING:
    from server.keys.gate import Ticket

log = logging.getLogger("sluice.stream")

# The most an API key's settlement may hold up the end of a stream's task.
SETTLE_BOUND = 2.0


@dataclass(frozen=True, slots=True)
class StreamPlan:
    """Everything one stream needs, decided by the view before the stream starts."""

    request: ChatRequest
    request_id: str
    received_at: float  # trio.current_time() when the request arrived
    pump: PumpContext  # routes, retry policy, ...
    slots: Slots  # the gateway's admission slots
    lifecycle: Lifecycle  # draining, and the signal that stops streams at its end
    weight: int  # slots this request holds for its whole life
    buffer: int  # channel size between the upstream reader and the writer
    write_body: BodyWriter  # the response's format: SSE chunks, one completion, ...
    keepalive_interval: float | None  # silence before a heartbeat; None: the format has none
    access_log: AccessLog | None = None  # one line per stream, written at its end
    key_name: str | None = None  # the API key's name (never the key), when keys are on
    ticket: Ticket | None = None  # an API key's admission: settled from usage at the end
    # Cancelled from outside, say why in-band ("server shutting down"); a detached stream
    # cancelled on purpose does not (its log ends with the dialect's cancelled events).
    last_word: bool = True
    endpoint: str = "/v1/chat/completions"  # the path the request came to
    tracer: Tracer = NULL_TRACER  # traces (`server.telemetry`): off, the null tracer
    trace_headers: tuple[tuple[str, str], ...] = ()  # the request's traceparent, tracestate


async def serve_stream(
    plan: StreamPlan,
    send: ASGISend,
    extra_headers: Headers,
    client_gone: trio.Event,
    metrics: Metrics,
) -> SluiceError | None:
    """Run one stream in its own nursery and account for how it ended; return its error."""
    progress = StreamProgress()
    response = LateStatusResponse(send, extra_headers)
    error: SluiceError | None = None
    outcome: Outcome = "cancelled"
    held = 0
    upstream = trio.CancelScope()  # the pump's; the end of a drain cancels it
    watcher = trio.CancelScope()
    # The server span: started here, ended after the record in `finally` — never made
    # current (the README's "Traces under Trio").
    trace = plan.tracer.stream(plan)
    plan.lifecycle.stream_started(upstream)
    try:
        async with trio.open_nursery() as nursery:
            items_in, items_out = trio.open_memory_channel[ChannelItem](plan.buffer)
            interval = math.inf if plan.keepalive_interval is None else plan.keepalive_interval
            nursery.start_soon(watch_stream, client_gone, response, nursery.cancel_scope,
                               watcher, items_in.clone(), interval)
            if plan.slots.try_acquire(plan.weight):
                held = plan.weight  # the common case: no timer, no wait
            else:
                with trio.move_on_after(plan.pump.queue_timeout):
                    await plan.slots.acquire(plan.weight)
                    held = plan.weight
            if not held:
                error = TooManyRequests("The gateway is at capacity; retry shortly.",
                                        code="gateway_busy", retry_after=1.0)
                await response.fail(error)
            else:
                nursery.start_soon(pump_upstream, plan.request, plan.pump, items_in, progress,
                                   upstream, trace)
                error = await plan.write_body(items_out, response)
            watcher.cancel()  # the pump may still drain a finished upstream: let it
        outcome = "client_disconnect" if client_gone.is_set() and not response.complete \
            else stream_outcome(error)
    except BaseException:
        # Cancelled from outside (hypercorn's graceful timeout ran out): never end silently.
        # (A detached stream cancelled on purpose ends its own way: `server.api.detached`.)
        if plan.last_word and trio.current_effective_deadline() == -math.inf \
                and not client_gone.is_set() and not response.complete:
            with trio.move_on_after(LAST_WORD_SECONDS, shield=True):
                error, outcome = await _last_word(plan, response), "shutdown"
        raise
    finally:
        if held:
            plan.slots.release(held)  # after the nursery: the pump's last read is done too
        if outcome == "cancelled" and client_gone.is_set():
            outcome = "client_disconnect"  # cancelled from outside, but the client had left
        if outcome == "client_disconnect":
            metrics.client_disconnects.inc()
        trace.end(_record(plan, progress, outcome, error, metrics, response))
        try:
            if plan.ticket is not None:  # whatever ended the stream; before a drain ends
                with trio.move_on_after(SETTLE_BOUND, shield=True):
                    await plan.ticket.settle(progress, outcome)
        finally:
            plan.lifecycle.stream_ended(upstream)
    return error


# How long a stream cancelled from outside may take to tell its client why.
LAST_WORD_SECONDS = 1.0


async def _last_word(plan: StreamPlan, response: LateStatusResponse) -> ShuttingDown:
    """End the response with a retryable "server shutting down", in its own format.

    The writer is run once more (by the caller, shielded and bounded) on a
    channel holding only that end: an in-band error event once bytes are out,
    a 503 before. (A ``/chat`` done event then counts nothing of what came before.)
    """
    error = ShuttingDown()
    items_in, items_out = trio.open_memory_channel[ChannelItem](1)
    with items_in:
        items_in.send_nowait(StreamEnd(error))
    await plan.write_body(items_out, response)
    return error


async def watch_stream(
    client_gone: trio.Event,
    response: LateStatusResponse,
    stream_scope: trio.CancelScope,
    own_scope: trio.CancelScope,
    heartbeats: trio.MemorySendChannel[ChannelItem],
    keepalive_interval: float,
) -> None:
    """Watch the stream from outside: cancel it when the client leaves, nudge it when silent.

    hypercorn also reports ``http.disconnect`` once a response is complete:
    that is the normal end of an exchange, not a client leaving early.

    When nothing has been written for ``keepalive_interval``, a `Heartbeat`
    goes into the channel and the writer sends a keepalive. The writer's own
    wait therefore needs no timer: one timer per interval here replaces a
    cancel scope per written batch there. A full channel needs no heartbeat
    (the writer is about to write). A format without keepalives passes an
    interval of ``inf``. Cancel ``own_scope`` to stop watching.
    """
    nudged_at = -math.inf
    with own_scope, heartbeats:
        while True:
            with trio.move_on_at(max(response.last_write, nudged_at) + keepalive_interval):
                await client_gone.wait()
                if not response.complete:
                    stream_scope.cancel("client disconnected")
                return
            now = trio.current_time()
            if now >= max(response.last_write, nudged_at) + keepalive_interval:
                nudged_at = now  # the writer has yet to act on it: don't nudge again at once
                try:
                    heartbeats.send_nowait(HEARTBEAT)
                except trio.WouldBlock:
                    pass  # chunks are waiting: the writer is about to write anyway
                except trio.BrokenResourceError:
                    return  # the writer has finished


def _record(plan: StreamPlan, progress: StreamProgress, outcome: Outcome,
            error: SluiceError | None, metrics: Metrics,
            response: LateStatusResponse) -> StreamRecord:
    backend = progress.served_by or "none"  # the metrics' label
    now = trio.current_time()
    first_content = progress.first_content_at
    record = StreamRecord(
        request_id=plan.request_id, key=plan.key_name, model=plan.request.model,
        backend=progress.served_by, attempts=progress.attempts, outcome=outcome,
        error_id=error.error_id if error else None,
        error=(error.code or error.type) if error else None,
        status=response.status, stream=plan.request.stream,
        ttfb=None if first_content is None else first_content - plan.received_at,
        duration=now - plan.received_at, chunks=progress.chunks,
        prompt_tokens=progress.prompt_tokens, completion_tokens=progress.completion_tokens)
    metrics.record_genai(record, plan.pump.routes)
    if plan.access_log is not None:
        plan.access_log.write(record)
    metrics.stream_outcomes.labels(outcome).inc()
    metrics.stream_duration.labels(backend).observe(now - plan.received_at)
    metrics.chunks_per_stream.observe(progress.chunks)
    if progress.first_content_at is not None:
        metrics.time_to_first_chunk.labels(backend).observe(
            progress.first_content_at - plan.received_at)
    where = f"via {progress.served_by}" if progress.served_by \
        else "before any backend sent content"
    if error is not None:
        log.warning("stream %s ended %s: %s after %d attempt(s) [%s] %s", plan.request_id,
                    where, outcome, progress.attempts, error.error_id, error.detail)
    else:
        # A log record costs ~70 µs here (5% of opening a stream): a stream that
        # completed is logged at debug only; the metrics above count every one.
        level = logging.DEBUG if outcome == "completed" else logging.INFO
        log.log(level, "stream %s ended %s: %s after %d chunks, %d attempt(s), in %.3f s",
                plan.request_id, where, outcome, progress.chunks, progress.attempts,
                now - plan.received_at)
    return record
