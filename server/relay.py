"""One stream's life: a nursery holding the upstream reader, the channel and a disconnect watcher.

    ┌──────────────────────── serve_stream: one nursery ─────────────────────────┐
    │ pump_upstream ──► bounded memory channel ──► write_sse / collect_completion │──► ASGI send
    │ (owns the upstream    (backpressure)          (the nursery's own body)     │
    │  connection & timers)                                                      │
    │ watch_disconnect: client gone ──► cancel("client disconnected")           │
    └────────────────────────────────────────────────────────────────────────────┘
     scope exit: upstream connection closed, channel closed, gauge and metrics recorded

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
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

import orjson
import trio

from .aggregate import CompletionBuilder
from .backends.base import Backend
from .chat_request import ChatRequest
from .chunks import error_event_payload, inspect_chunk
from .config import Timeouts
from .errors import (
    SluiceError,
    UpstreamStatusError,
    UpstreamTimeout,
    error_headers,
    openai_error_body,
)
from .metrics import Metrics
from .pump import ChannelItem, PumpStats, pump_upstream
from .sse import DONE_EVENT, KEEPALIVE, frame

log = logging.getLogger("sluice.stream")

ASGISend = Callable[[Any], Awaitable[None]]
Headers = list[tuple[bytes, bytes]]

SSE_HEADERS: Headers = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),  # tell nginx-style proxies not to buffer
]


@dataclass(frozen=True, slots=True)
class StreamPlan:
    """Everything one stream needs, decided by the view before the stream starts."""

    request: ChatRequest
    backend: Backend
    request_id: str
    received_at: float  # trio.current_time() when the request arrived
    timeouts: Timeouts
    keepalive_interval: float
    buffer: int


async def serve_stream(
    plan: StreamPlan,
    send: ASGISend,
    extra_headers: Headers,
    client_gone: trio.Event,
    metrics: Metrics,
) -> None:
    """Run one stream in its own nursery and account for how it ended."""
    stats = PumpStats()
    response = _Response(send, extra_headers)
    error: SluiceError | None = None
    outcome = "cancelled"
    metrics.active_streams.inc()
    try:
        async with trio.open_nursery() as nursery:
            items_in, items_out = trio.open_memory_channel[ChannelItem](plan.buffer)
            nursery.start_soon(pump_upstream, plan.backend, plan.request, items_in,
                               plan.timeouts, stats)
            watcher = await nursery.start(watch_disconnect, client_gone, response,
                                          nursery.cancel_scope)
            if plan.request.stream:
                error = await write_sse(items_out, response, plan.keepalive_interval)
            else:
                error = await write_completion(items_out, response)
            watcher.cancel()
        # Only the watcher cancels the stream's own scope: if it did, the client left.
        outcome = "client_disconnect" if nursery.cancel_scope.cancelled_caught \
            else _outcome(error)
    finally:
        if outcome == "cancelled" and client_gone.is_set():
            outcome = "client_disconnect"  # cancelled from outside, but the client had left
        if outcome == "client_disconnect":
            metrics.client_disconnects.inc()
        _record(plan, stats, outcome, error, metrics)
        metrics.active_streams.dec()


async def watch_disconnect(
    client_gone: trio.Event,
    response: _Response,
    stream_scope: trio.CancelScope,
    *,
    task_status: trio.TaskStatus[trio.CancelScope] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Cancel the stream when the client leaves; cancel the returned scope to stop watching.

    hypercorn also reports ``http.disconnect`` once a response is complete:
    that is the normal end of an exchange, not a client leaving early.
    """
    with trio.CancelScope() as own_scope:
        task_status.started(own_scope)
        await client_gone.wait()
        if not response.complete:
            stream_scope.cancel("client disconnected")


async def write_sse(
    items: trio.MemoryReceiveChannel[ChannelItem],
    response: _Response,
    keepalive_interval: float,
) -> SluiceError | None:
    """Relay chunks as SSE; return the error that ended the stream, if any.

    Whatever is already waiting in the channel is coalesced into one ASGI
    message: no added latency when the client keeps up, far fewer sends
    (and syscalls) when it does not.
    """
    with items:
        while True:
            item: ChannelItem | None = None
            with trio.move_on_after(keepalive_interval):
                item = await items.receive()
            if item is None:
                await response.write(KEEPALIVE)
                continue
            body: list[bytes] = []
            while isinstance(item, bytes):
                body.append(frame(item))
                try:
                    item = items.receive_nowait()
                except trio.WouldBlock:
                    item = None
                    break
            if item is None:
                await response.write(b"".join(body))
                continue
            if item.error is None:
                body.append(DONE_EVENT)
                await response.finish(b"".join(body))
            elif response.started or body:
                body.append(frame(error_event_payload(item.error)))
                await response.finish(b"".join(body))
            else:
                await response.fail(item.error)
            return item.error


async def write_completion(
    items: trio.MemoryReceiveChannel[ChannelItem], response: _Response
) -> SluiceError | None:
    """Aggregate the stream into one ``chat.completion``; nothing is sent until the end."""
    completion = CompletionBuilder()
    with items:
        async for item in items:
            if isinstance(item, bytes):
                completion.add(inspect_chunk(item)[1])
            elif item.error is not None:
                await response.fail(item.error)
                return item.error
            else:
                body = orjson.dumps(completion.result())
                await response.start(200, [(b"content-type", b"application/json"),
                                           (b"content-length", str(len(body)).encode())])
                await response.finish(body)
                return None
    raise AssertionError("the pump closed its channel without a StreamEnd")


class _Response:
    """The ASGI response of one stream: start once, then body messages, then the end."""

    __slots__ = ("_headers", "_send", "complete", "started")

    def __init__(self, send: ASGISend, headers: Headers) -> None:
        self._send = send
        self._headers = headers
        self.started = False
        self.complete = False  # the last body message is being or has been sent

    async def start(self, status: int, headers: Iterable[tuple[bytes, bytes]]) -> None:
        self.started = True
        await self._send({"type": "http.response.start", "status": status,
                          "headers": [*headers, *self._headers]})

    async def write(self, data: bytes) -> None:
        if not self.started:
            await self.start(200, SSE_HEADERS)
        await self._send({"type": "http.response.body", "body": data, "more_body": True})

    async def finish(self, data: bytes) -> None:
        if not self.started:
            await self.start(200, SSE_HEADERS)
        self.complete = True
        await self._send({"type": "http.response.body", "body": data, "more_body": False})

    async def fail(self, error: SluiceError) -> None:
        """Answer with the error's own status: only possible before anything was sent."""
        body = openai_error_body(error)
        await self.start(error.status, [*error_headers(error),
                                        (b"content-length", str(len(body)).encode())])
        await self.finish(body)


def _outcome(error: SluiceError | None) -> str:
    if error is None:
        return "completed"
    if isinstance(error, UpstreamTimeout):
        return "upstream_timeout"
    if isinstance(error, UpstreamStatusError) and not error.retryable:
        return "rejected"
    return "upstream_error"


def _record(plan: StreamPlan, stats: PumpStats, outcome: str, error: SluiceError | None,
            metrics: Metrics) -> None:
    backend = plan.backend.settings.name
    now = trio.current_time()
    metrics.stream_outcomes.labels(outcome).inc()
    metrics.upstream_requests.labels(backend, outcome).inc()
    metrics.stream_duration.labels(backend).observe(now - plan.received_at)
    metrics.chunks_per_stream.observe(stats.chunks)
    if stats.first_content_at is not None:
        metrics.time_to_first_chunk.labels(backend).observe(
            stats.first_content_at - plan.received_at)
    if error is not None:
        log.warning("stream %s via %s ended: %s [%s] %s", plan.request_id, backend, outcome,
                    error.error_id, error.detail)
    else:
        log.info("stream %s via %s ended: %s after %d chunks in %.3f s", plan.request_id,
                 backend, outcome, stats.chunks, now - plan.received_at)
