"""Detached streams shared between instances: each producer mirrors its log into Redis Streams.

With ``[resume] redis_url`` set, the task that keeps a detached stream also
runs `RedisMirror.publish`: it reads the stream's own `EventLog` as any
reader does and appends each event to a Redis stream (``XADD`` with an
approximate ``MAXLEN``). Any instance can then find the stream
(`RedisMirror.find`) and serve its readers from Redis (`RedisLogSource`:
``XRANGE`` to replay, blocking ``XREAD`` for the tail). Readers on the
producing instance keep reading the local log.

Keys, with the stream id as the hash tag (one cluster slot per stream)::

    sluice:ds:{id}            hash: kind, owner, instance (the producer's), snapshot (JSON)
    sluice:ds:{id}:events     stream: event N is entry 0-(N+1), field e; the end is entry 1-0
                              (field end = closed | failed, error = the failure as JSON)
    sluice:ds:{id}:alive      exists while the producer lives: PX LIVENESS, renewed each HEARTBEAT
    sluice:ds:{id}:readers    exists while a reader on another instance reads: PX grace
    sluice:control:{instance} stream: cancel requests for the streams that instance produces

**When the producer dies** its ``alive`` key expires within ``LIVENESS``
seconds and the end entry never comes: a reader waiting in ``XREAD`` (which
times out every ``LIVENESS``) finds the key gone and ends the stream with
the error ``producer_lost`` — in-band after the events it had, or as a 502
before any. The stream's keys expire ``retention`` seconds after the last
heartbeat or after the end. Nothing restarts a lost stream: its upstream
request died with the instance.

A Redis failure never ends a stream on its own instance: the mirror logs it
and stops; readers elsewhere then see the producer as lost.
"""

from __future__ import annotations

import logging
import math
import re
import secrets
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import coredis
import orjson
import trio
from coredis.exceptions import RedisError

from server.config import ResumeSettings
from server.errors import EventsExpired, ProducerLost, SluiceError, error_object, http_error
from server.stream.event_log import Batch

if TYPE_CHECKING:
    from server.stream.detached_stream import DetachedStream

log = logging.getLogger("sluice.redis_log")

HEARTBEAT = 1.0  # seconds between the producer's signs of life
LIVENESS = 3.0  # a producer silent this long is gone
_END_ID = "1-0"  # after every event entry (0-N): the end of the stream
_CONTROL_MAXLEN = 1000
_SAFE_ID = re.compile(r"[A-Za-z0-9_]{1,100}")

Client = coredis.Redis[bytes]


def _keys(stream_id: str) -> tuple[str, str, str, str]:
    base = f"sluice:ds:{{{stream_id}}}"
    return base, base + ":events", base + ":alive", base + ":readers"


def _entry_id(seq: int) -> str:
    return f"0-{seq + 1}"


def error_json(error: SluiceError) -> bytes:
    return orjson.dumps({"status": error.status, "retry_after": error.retry_after,
                         **error_object(error)})


def error_from_json(raw: bytes) -> SluiceError:
    """A failure read back from Redis: the same status, body and error id."""
    data = orjson.loads(raw)
    error = http_error(data["status"], data["message"], type_=data["type"], code=data["code"])
    error.param = data["param"]
    error.error_id = data["error_id"]
    error.retry_after = data["retry_after"]
    return error


class RedisLogSource:
    """A reader's view of a stream mirrored in Redis (`server.stream.event_log.LogSource`)."""

    def __init__(self, client: Client, stream_id: str) -> None:
        self._client = client
        _, self._events, self._alive, _ = _keys(stream_id)
        self._quiet = False  # the last wait saw nothing for LIVENESS: is the producer alive?

    async def fetch(self, seq: int) -> Batch:
        entries = await self._client.xrange(self._events, _entry_id(seq + 1), "+")
        events: list[bytes] = []
        for entry in entries:
            major, _, minor = _text(entry.identifier).partition("-")
            if major != "0":
                fields = entry.field_values
                failure = error_from_json(_bytes(fields[b"error"])) if b"error" in fields \
                    else None
                return Batch(events, ended=True, failure=failure)
            if int(minor) - 1 != seq + 1 + len(events):
                raise EventsExpired(int(minor) - 1)  # trimmed: a gap before what is kept
            events.append(_bytes(entry.field_values[b"e"]))
        if not events and self._quiet and not await self._client.exists([self._alive]):
            return Batch([], ended=True, failure=ProducerLost())
        return Batch(events)

    async def wait_beyond(self, seq: int) -> None:
        answer = await self._client.xread({self._events: _entry_id(seq)},
                                          block=int(LIVENESS * 1000))
        self._quiet = not answer

    async def last_seq(self) -> int:
        for entry in await self._client.xrevrange(self._events, "+", "-", count=2):
            major, _, minor = _text(entry.identifier).partition("-")
            if major == "0":
                return int(minor) - 1
        return -1


class RemoteStream:
    """A detached stream produced by another instance (`server.stream.background.StreamHandle`)."""

    def __init__(self, mirror: RedisMirror, stream_id: str, instance: str) -> None:
        self.id = stream_id
        self.source = RedisLogSource(mirror.client, stream_id)
        self._mirror = mirror
        self._instance = instance

    @asynccontextmanager
    async def attending(self) -> AsyncIterator[None]:
        """While a client reads here, the producer's grace period does not run out."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._mirror.note_reader, self.id)
            try:
                yield
            finally:
                nursery.cancel_scope.cancel()  # however the reading ended

    def delivered_now(self) -> None:
        """Nothing to note: the producer's own first reader decides that."""

    async def last_seq(self) -> int:
        return await self.source.last_seq()

    async def snapshot(self) -> dict[str, Any] | None:
        raw = await self._mirror.client.hget(_keys(self.id)[0], "snapshot")
        return None if raw is None else dict(orjson.loads(raw))

    async def stop(self, reason: str, bound: float) -> bool:
        """Ask the producing instance to cancel; wait (bounded) for the end. False: had ended."""
        if await self._ended():
            return False
        await self._mirror.request_cancel(self._instance, self.id, reason)
        with trio.move_on_after(bound):
            while not await self._ended():
                await self.source.wait_beyond(await self.source.last_seq())
        return True

    async def _ended(self) -> bool:
        return bool(await self._mirror.client.xrange(_keys(self.id)[1], _END_ID, _END_ID))


class RedisMirror:
    """This instance's side of the shared logs: publish its streams, find others', cancels."""

    def __init__(self, client: Client, settings: ResumeSettings) -> None:
        self.client = client
        self.settings = settings
        self.instance = secrets.token_hex(8)

    async def publish(self, stream: DetachedStream) -> None:
        """Mirror one local detached stream (a `DetachedStream`) until its log is closed."""
        meta, events, alive, _ = _keys(stream.id)
        live_ms = int((self.settings.retention + LIVENESS) * 1000)
        after, beat_at = -1, -math.inf
        try:
            await self.client.hset(meta, {"kind": stream.kind, "owner": stream.owner,
                                          "instance": self.instance})
            while True:
                batch = await stream.log.fetch(after)
                now = trio.current_time()
                beat = now - beat_at >= HEARTBEAT
                if batch.events or batch.ended or beat:
                    async with self.client.pipeline(transaction=True) as pipe:
                        for event in batch.events:
                            after += 1
                            pipe.xadd(events, {"e": event}, identifier=_entry_id(after),
                                      trim_strategy=coredis.PureToken.MAXLEN,
                                      threshold=self.settings.max_events,
                                      trim_operator=coredis.PureToken.APPROXIMATELY)
                        if stream.describe is not None and (beat or batch.ended):
                            pipe.hset(meta, {"snapshot": orjson.dumps(stream.describe())})
                        if batch.ended:
                            pipe.xadd(events, _end_fields(batch.failure), identifier=_END_ID)
                            pipe.delete([alive])
                            live_ms = int(self.settings.retention * 1000)
                        else:
                            pipe.set(alive, self.instance, px=int(LIVENESS * 1000))
                        for key in (meta, events):
                            pipe.pexpire(key, live_ms)
                    beat_at = now if beat else beat_at
                if batch.ended:
                    return
                with trio.move_on_after(HEARTBEAT):
                    await stream.log.wait_beyond(after)
        except EventsExpired:
            log.warning("stream %s: Redis fell behind its log; readers elsewhere lose it",
                        stream.id)
        except RedisError as error:
            log.warning("stream %s: no longer mirrored to Redis: %s", stream.id, error)

    async def find(self, kind: str, stream_id: str, owner: str) -> RemoteStream | None:
        if not _SAFE_ID.fullmatch(stream_id):
            return None
        meta = await self.client.hgetall(_keys(stream_id)[0])
        if (meta.get(b"kind") != kind.encode() or b"instance" not in meta
                or not secrets.compare_digest(meta.get(b"owner", b""), owner.encode())):
            return None
        return RemoteStream(self, stream_id, meta[b"instance"].decode())

    async def note_reader(self, stream_id: str) -> None:
        """Keep saying "read elsewhere" while a reader on this instance reads a remote stream."""
        readers = _keys(stream_id)[3]
        grace = max(self.settings.grace, HEARTBEAT)
        while True:
            try:
                await self.client.set(readers, self.instance, px=int(grace * 1000))
            except RedisError as error:
                log.warning("stream %s: cannot note a reader in Redis: %s", stream_id, error)
            await trio.sleep(grace / 3)

    async def read_elsewhere(self, stream_id: str) -> bool:
        try:
            return bool(await self.client.exists([_keys(stream_id)[3]]))
        except RedisError:
            return False

    async def request_cancel(self, instance: str, stream_id: str, reason: str) -> None:
        control = f"sluice:control:{instance}"
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.xadd(control, {"cancel": stream_id, "reason": reason},
                      trim_strategy=coredis.PureToken.MAXLEN, threshold=_CONTROL_MAXLEN,
                      trim_operator=coredis.PureToken.APPROXIMATELY)
            pipe.pexpire(control, int(max(3600.0, self.settings.retention) * 1000))

    async def serve_control(self, cancel: Callable[[str, str], None]) -> None:
        """Carry out the cancel requests other instances send for this one's streams."""
        control = f"sluice:control:{self.instance}"
        last = "0-0"
        while True:
            try:
                answer = await self.client.xread({control: last}, block=int(LIVENESS * 1000))
            except RedisError as error:
                log.warning("cannot read cancel requests from Redis: %s", error)
                await trio.sleep(HEARTBEAT)
                continue
            for entry in (answer or {}).get(control.encode(), ()):
                last = _text(entry.identifier)
                fields = entry.field_values
                cancel(_text(fields[b"cancel"]), _text(fields[b"reason"]))


def _bytes(value: str | bytes) -> bytes:
    return value if isinstance(value, bytes) else value.encode()


def _text(value: str | bytes) -> str:
    return value if isinstance(value, str) else value.decode()


def _end_fields(failure: SluiceError | None) -> dict[str, bytes]:
    if failure is None:
        return {"end": b"closed"}
    return {"end": b"failed", "error": error_json(failure)}


@asynccontextmanager
async def open_redis(url: str) -> AsyncIterator[Client]:
    """The client for the shared logs, entered (and exited) by the calling task."""
    client: Client = coredis.Redis.from_url(url, decode_responses=False)
    async with client:
        yield client
