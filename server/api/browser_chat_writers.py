"""The ``/chat`` body formats: a stream's chunks as browser-friendly events or one JSON reply.

These are `BodyWriter`s like `server.stream.writers`: the relay, the pump, the
timers and the disconnect handling are the same as on ``/v1``; only what the
client reads differs. `ChatTranscript` is the pure part — it folds OpenAI
chunks into the reply so far and shapes each event — and the writers add
the clock and the ASGI sends:

    write_body = partial(write_chat_events, model=model, received_at=t0)  # stream: true
    write_body = partial(write_chat_json, model=model, received_at=t0)    # stream: false

One event per content delta, then one with ``"done": true``::

    data: {"content": "Hel", "full_content": "Hel", "chunk_id": 1,
           "timestamp": "2026-01-02T03:04:05.678Z", "done": false, "model": "m",
           "streaming_stats": {"total_chunks": 1, "total_characters": 3,
                               "elapsed_time": 0.123, "words_per_second": 8.1}}

The commit point is the /v1 one: before anything is sent, a failure is a real
status with an OpenAI error body; after, it is the last event — ``"done":
true`` with ``"error"`` (the public message), ``"error_code"`` and
``"error_id"`` (logged beside the cause). There is no ``[DONE]`` sentinel:
``done`` says it, and a body that ends without a ``done`` event was cut.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import orjson
import trio

from server.chunks import inspect_chunk
from server.errors import SluiceError
from server.sse import KEEPALIVE, frame
from server.stream.channel import ChannelItem
from server.stream.late_status import LateStatusResponse
from server.stream.usage import UsageMeter
from server.stream.writers import receive_batch, write_one_reply

_WORD = re.compile(r"\S+")


class ChatTranscript:
    """One reply as ``/chat`` shows it, folded from the stream's chunks (pure).

    Times are the caller's: ``now`` is `trio.current_time()`-like, ``wall`` is
    the event's timestamp.
    """

    __slots__ = ("_events", "_in_word", "_words", "chunks", "finish_reason", "model",
                 "started_at", "text", "usage")

    def __init__(self, model: str, started_at: float) -> None:
        self.model = model
        self.started_at = started_at  # the request's arrival: stats count from here
        self.text = ""
        self.chunks = 0  # content deltas so far
        self.finish_reason: str | None = None
        self.usage: dict[str, Any] | None = None
        self._events = 0
        self._words = 0
        self._in_word = False  # the text so far ends inside a word

    def add(self, chunk: Mapping[str, Any]) -> str:
        """Fold one parsed chunk; return its content delta ('' if it carries none)."""
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            self.usage = usage
        choices = chunk.get("choices")
        if not isinstance(choices, list):
            return ""
        content = ""
        for choice in choices:
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue  # /chat asks for one choice
            if isinstance(choice.get("finish_reason"), str):
                self.finish_reason = choice["finish_reason"]
            delta = choice.get("delta")
            if isinstance(delta, dict) and isinstance(delta.get("content"), str):
                content += delta["content"]
        if content:
            self.chunks += 1
            self.text += content
            self._count_words(content)
        return content

    def delta_event(self, content: str, now: float, wall: datetime) -> dict[str, Any]:
        return self._event(content, now, wall, done=False)

    def done_event(self, now: float, wall: datetime,
                   error: SluiceError | None = None) -> dict[str, Any]:
        """The last event: the end of the reply, or the error that cut it."""
        event = self._event("", now, wall, done=True)
        if error is not None:
            event.update(error=error.public_message, error_code=error.code,
                         error_id=error.error_id)
        else:
            event["finish_reason"] = self.finish_reason
        if self.usage is not None:
            event["usage"] = self.usage
        return event

    def reply(self, now: float, wall: datetime) -> dict[str, Any]:
        """The whole reply in one object (``stream: false``): the done event, with content."""
        event = self.done_event(now, wall)
        event["content"] = self.text
        return event

    def stats(self, now: float) -> dict[str, Any]:
        elapsed = max(0.0, now - self.started_at)
        return {
            "total_chunks": self.chunks,
            "total_characters": len(self.text),
            "elapsed_time": round(elapsed, 3),
            "words_per_second": round(self._words / elapsed, 1) if elapsed > 0 else 0.0,
        }

    def _event(self, content: str, now: float, wall: datetime, *, done: bool) -> dict[str, Any]:
        self._events += 1
        return {
            "content": content,
            "full_content": self.text,
            "chunk_id": self._events,
            "timestamp": timestamp(wall),
            "done": done,
            "model": self.model,
            "streaming_stats": self.stats(now),
        }

    def _count_words(self, content: str) -> None:
        """Count words incrementally: a word split across deltas counts once."""
        for match in _WORD.finditer(content):
            if not (match.start() == 0 and self._in_word):
                self._words += 1
        self._in_word = not content[-1].isspace()


def timestamp(wall: datetime) -> str:
    """ISO 8601 in UTC with milliseconds and a ``Z``: ``2026-01-02T03:04:05.678Z``."""
    return wall.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


async def write_chat_events(
    items: trio.MemoryReceiveChannel[ChannelItem],
    response: LateStatusResponse,
    *,
    model: str,
    received_at: float,
    meter: UsageMeter | None = None,
) -> SluiceError | None:
    """Send one ``/chat`` event per content delta, then the done (or error) event.

    Like `server.stream.writers.write_sse`: keepalive comments during silence, and
    whatever already waits in the channel goes out as one ASGI message.
    """
    transcript = ChatTranscript(model, received_at)
    with items:
        while True:
            payloads, end = await receive_batch(items)
            if meter is not None and payloads:
                payloads = meter.take(payloads)  # /chat shows usage in its own done event
            body: list[bytes] = []
            for payload in payloads:
                content = transcript.add(inspect_chunk(payload)[1])
                if content:
                    event = transcript.delta_event(content, trio.current_time(), _now())
                    body.append(frame(orjson.dumps(event)))
            if end is None:
                if body or not payloads:  # nothing at all came: a heartbeat
                    await response.write(b"".join(body) if body else KEEPALIVE)
                continue
            if end.error is not None and not (response.started or body):
                await response.fail(end.error)  # nothing sent yet: a real status
            else:
                done = transcript.done_event(trio.current_time(), _now(), end.error)
                body.append(frame(orjson.dumps(done)))
                await response.finish(b"".join(body))
            return end.error


async def write_chat_json(
    items: trio.MemoryReceiveChannel[ChannelItem],
    response: LateStatusResponse,
    *,
    model: str,
    received_at: float,
    meter: UsageMeter | None = None,  # unused: streams only (the reply shows its usage)
) -> SluiceError | None:
    """Fold the stream into one ``/chat`` reply object; nothing is sent until the end."""
    transcript = ChatTranscript(model, received_at)
    return await write_one_reply(items, response, transcript.add,
                                 lambda: transcript.reply(trio.current_time(), _now()))


def _now() -> datetime:
    return datetime.now(UTC)
