"""Detached streams: producers that outlive their client's connection, in one background nursery.

A background response (``/v1/responses`` with ``background: true``) or a
resumable chat stream is not written to a connection. Its producer — the
usual stream nursery of `serve_stream`, with the pump, admission, timers and
metrics — writes into an `EventLog` instead, through `write_log`, and runs in
the *background nursery* owned by `BackgroundStreams`; clients read the log
with `server.stream.tail`, as often as they like:

    background = BackgroundStreams(settings.resume)
    await app.nursery.start(background.serve)     # before serving: the nursery opens
    stream = background.add(DetachedStream(id, "chat", owner, log, shaper, grace=60))
    background.start(stream, run_producer)       # run_producer(client_gone) -> error
    ...
    await background.stop()                      # after serving, before the backends close

Who ends a detached stream:
- the stream itself, complete or failed (its log gets the dialect's end);
- `DetachedStream.cancel` (a client's cancel request): its scope is
  cancelled with the reason, the upstream connection closes as the pump's
  ``async with`` is left;
- the grace period (resumable chat streams only): when no client has read
  it for ``grace`` seconds — or its only client left before it was told the
  stream's id — ``client_gone`` is set and the stream ends as a relayed one
  does when its client leaves;
- the drain at shutdown (the lifecycle reaches the pump's upstream scope)
  and, last, `stop`, which cancels the whole background nursery.

After its end a stream's log is kept ``retention`` seconds for late readers,
then dropped; the oldest finished logs are dropped early when the finished
logs together pass ``max_retained_bytes``. Each stream's task sleeps out its
own retention, so nothing polls.

With ``[resume] redis_url`` the nursery also holds the Redis client (opened
and closed by `serve`'s own task, as coredis requires, and outliving the
producers), each stream's task publishes its log beside producing it, and
`find` looks up streams other instances produce (`server.stream.redis_log`).
"""

from __future__ import annotations

import logging
import secrets
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING

import trio
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from server.config import ResumeSettings
from server.errors import ShuttingDown, SluiceError
from server.metrics import Metrics
from server.stream.detached_stream import (
    DetachedStream,
    Producer,
    StreamHandle,
    StreamKind,
    end_log,
)

if TYPE_CHECKING:
    from server.stream.redis_log import RedisMirror

try:
    from coredis.exceptions import RedisError
except ImportError:  # coredis is needed only with [resume] redis_url
    class RedisError(Exception):  # type: ignore[no-redef]
        """Stands in for coredis's when it is not installed: never raised."""

log = logging.getLogger("sluice.background")

# How long `stop` waits for the cancelled producers to finish their (synchronous) cleanup.
_STOP_BOUND = 5.0

class BackgroundStreams:
    """The background nursery and the detached streams it holds, by id."""

    def __init__(self, settings: ResumeSettings) -> None:
        self.settings = settings
        self.mirror: RedisMirror | None = None  # with [resume] redis_url, while serving
        self._streams: dict[str, DetachedStream] = {}
        self._finished: OrderedDict[str, DetachedStream] = OrderedDict()
        self.finished_bytes = 0
        self._nursery: trio.Nursery | None = None
        self._stopping = trio.Event()
        self._stopped = trio.Event()

    @staticmethod
    def new_id(prefix: str) -> str:
        """An id nobody can guess (128 random bits): knowing it is part of owning the stream."""
        return prefix + secrets.token_hex(16)

    @property
    def live(self) -> int:
        return len(self._streams) - len(self._finished)

    @property
    def retained(self) -> int:
        return len(self._finished)

    def live_bytes(self) -> int:
        return sum(s.log.bytes for s in self._streams.values() if s.finished_at is None)

    async def serve(self, *,
                    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Hold the background nursery open until `stop` (and the Redis client, if configured).

        The client is entered and exited by this task (as coredis requires),
        and outlives the nursery whose producers publish through it.
        """
        try:
            async with AsyncExitStack() as stack:
                if self.settings.redis_url:
                    from server.stream.redis_log import RedisMirror, open_redis

                    client = await stack.enter_async_context(open_redis(
                        self.settings.redis_url))
                    self.mirror = RedisMirror(client, self.settings)
                async with trio.open_nursery() as nursery:
                    if self.mirror is not None:
                        nursery.start_soon(self.mirror.serve_control, self._cancel_here)
                    self._nursery = nursery
                    task_status.started()
                    await self._stopping.wait()
                    nursery.cancel_scope.cancel("server shutting down")
        finally:
            self._nursery = None
            self.mirror = None
            self._stopped.set()

    async def stop(self) -> None:
        """Cancel every detached stream and wait (bounded) until they have ended."""
        self._stopping.set()
        with trio.move_on_after(_STOP_BOUND, shield=True):
            await self._stopped.wait()

    def add(self, stream: DetachedStream) -> DetachedStream:
        self._streams[stream.id] = stream
        return stream

    def get(self, kind: StreamKind, stream_id: str, owner: str) -> DetachedStream | None:
        """The stream, if it exists, is of ``kind`` and belongs to ``owner``; else None."""
        stream = self._streams.get(stream_id)
        if stream is None or stream.kind != kind or not secrets.compare_digest(stream.owner,
                                                                              owner):
            return None
        return stream

    async def find(self, kind: StreamKind, stream_id: str, owner: str) -> StreamHandle | None:
        """The stream, here or (with Redis) on another instance, if it is ``owner``'s."""
        local = self.get(kind, stream_id, owner)
        if local is not None or self.mirror is None:
            await trio.lowlevel.checkpoint()
            return local
        try:
            return await self.mirror.find(kind, stream_id, owner)
        except RedisError as error:
            log.warning("cannot look stream %s up in Redis: %s", stream_id[:100], error)
            return None

    def _cancel_here(self, stream_id: str, reason: str) -> None:
        """A cancel request from another instance, for a stream produced here."""
        stream = self._streams.get(stream_id)
        if stream is not None and not stream.log.closed:
            stream.cancel(reason)

    def start(self, stream: DetachedStream, produce: Producer) -> None:
        """Run ``produce`` (given the stream's ``client_gone``) in the background nursery."""
        if self._nursery is None:
            self._streams.pop(stream.id, None)
            raise ShuttingDown()
        self._nursery.start_soon(self._keep, stream, produce, name=f"detached {stream.id}")

    async def _keep(self, stream: DetachedStream, produce: Producer) -> None:
        """One stream's whole stay: produce (and publish), end the log, retain, drop."""
        async with trio.open_nursery() as keeper:
            if self.mirror is not None:
                keeper.start_soon(self.mirror.publish, stream)  # returns once the log is closed
            await self._produce(stream, produce)
        with stream.retention:
            await trio.sleep(self.settings.retention)
        self._drop(stream)

    async def _produce(self, stream: DetachedStream, produce: Producer) -> None:
        """Run the producer; end the log however it stopped."""
        error: SluiceError | None = None
        try:
            with stream.scope:
                async with trio.open_nursery() as nursery:
                    if stream.grace is not None:
                        nursery.start_soon(_abandon_unread, stream, self.mirror)
                    error = await produce(stream.client_gone)
                    nursery.cancel_scope.cancel()  # the stream is over: stop its grace clock
        finally:
            if not stream.log.closed:  # stopped from outside: its writer never wrote the end
                if error is None and stream.stop_reason is None:
                    error = ShuttingDown()  # the background nursery itself was cancelled
                if error is not None:
                    end_log(stream.log, stream.shaper, error)
                else:
                    stream.log.extend(stream.shaper.cancelled(stream.stop_reason or "cancelled"))
                    stream.log.close()
            self._finish(stream)

    def _finish(self, stream: DetachedStream) -> None:
        stream.finished_at = trio.current_time()
        if stream.id not in self._streams:
            return
        self._finished[stream.id] = stream
        self.finished_bytes += stream.log.bytes
        while self.finished_bytes > self.settings.max_retained_bytes and len(self._finished) > 1:
            oldest = next(iter(self._finished.values()))
            log.info("dropping stream %s early: retained logs exceed %d bytes", oldest.id,
                     self.settings.max_retained_bytes)
            self._drop(oldest)
            oldest.retention.cancel()

    def _drop(self, stream: DetachedStream) -> None:
        self._streams.pop(stream.id, None)
        if self._finished.pop(stream.id, None) is not None:
            self.finished_bytes -= stream.log.bytes


async def _abandon_unread(stream: DetachedStream, mirror: RedisMirror | None) -> None:
    """The grace period: nobody has read the stream for ``grace`` seconds → abandon it.

    With Redis, a reader on another instance counts too (it renews a key).
    """
    assert stream.grace is not None
    while True:
        await stream.readers.wait_value(0, held_for=stream.grace)
        if mirror is None or not await mirror.read_elsewhere(stream.id):
            break
    stream.abandon(f"no client read the stream for {stream.grace:g} s")


def watch_background(metrics: Metrics, background: BackgroundStreams) -> None:
    """Export the background nursery's gauges, read at scrape time."""
    metrics.registry.register(_BackgroundGauges(background))


class _BackgroundGauges(Collector):
    def __init__(self, background: BackgroundStreams) -> None:
        self._background = background

    def collect(self) -> Iterator[Metric]:
        background = self._background
        streams = GaugeMetricFamily(
            "sluice_detached_streams", "Detached streams (background responses, resumable "
            "chat streams): producing, or finished and kept for late readers.",
            labels=["state"])
        streams.add_metric(["live"], background.live)
        streams.add_metric(["retained"], background.retained)
        yield streams
        held = GaugeMetricFamily(
            "sluice_detached_stream_bytes", "Bytes of events held in detached streams' logs.",
            labels=["state"])
        held.add_metric(["live"], background.live_bytes())
        held.add_metric(["retained"], background.finished_bytes)
        yield held
