"""One upstream attempt's decisions, apart from its I/O: fed payloads, it says what to do.

The pump (`server.stream.pump`) reads an upstream's chunk payloads and
feeds each to the attempt's `Attempt`; the returned `Action` tells it what
to do: nothing yet (`HOLD`, `DROP`), send the payload (`attempt.outgoing`),
first flushing the held preamble (``flushes``) or moving the timer to
``attempt.deadline`` (``rearms``), end complete (`COMPLETE`: flush, send the
clean end, then drain the connection) or end with ``attempt.error``
(`END`). Nothing here does I/O or reads a clock — the caller passes the
time — so every rule is tested with plain lists of payloads:

    attempt = Attempt(request, progress, "primary", started=now, first_chunk=60, idle=60,
                      continuing=False, keep_text=False)
    action = attempt.feed(payload, now)        # for each payload the upstream sends
    end = attempt.body_ended()                 # the upstream body ended without [DONE]
    end = attempt.timed_out()                  # the timer at attempt.deadline fired

**The commit point** is the first content-bearing chunk of the stream
(text, reasoning, refusal or a tool-call delta). Before it the role-only
preamble is held, so a failed attempt leaves nothing on the client's screen
and can be retried unseen; the first content chunk flushes it. A usage-only
chunk or a chunk with a finish_reason but no content does not commit (a
finish_reason flushes the preamble: the answer is complete, though empty).
``[DONE]`` before any content or finish_reason is a cut, as is a body that
ends before a finish_reason; a body that ends after one is complete.

**The timers**: the first-chunk timer runs from the start of the attempt to
its first content chunk; then the idle timer, re-armed by content chunks
only (keepalives and empty deltas don't reset it). Moving a trio deadline
re-sorts its deadline heap — at 50 chunks/s it was 8.6% of the worker's CPU
— so the idle timer is re-armed only when it would move by more than
`REARM_SLACK` of ``idle``: it may fire that much early.

**A hedge race** (`server.stream.pump`) runs two attempts of one request
at once; the first to commit wins, and the other is marked ``lost``: it
sends nothing more (`LOST`), whatever it had already read.

**A continuation** (``continuing``: the stream was committed by an earlier
attempt) drops its own preamble and rewrites its usage to count the whole
answer (`server.stream.continuation`).

On the hot path (one content chunk) the machine allocates nothing of its
own: it returns one of a few module-level actions and stores the payload to
send.
"""

from __future__ import annotations

from typing import Any

import orjson

from server.api.chat_completions import ChatRequest
from server.chunks import MalformedChunk, finish_reasons, inspect_chunk
from server.errors import SluiceError, StreamCut, UpstreamTimeout, UpstreamUnavailable
from server.sse import DONE
from server.stream.channel import StreamEnd
from server.stream.continuation import note_content, whole_answer_usage
from server.stream.progress import StreamProgress

# The idle timer may fire this share of `idle` early, so it need not move on every chunk.
REARM_SLACK = 0.01


class Action:
    """What the caller does with the payload it just fed; the instances below are all there are."""

    __slots__ = ("flushes", "name", "rearms", "sends")

    def __init__(self, name: str, *, sends: bool = False, flushes: bool = False,
                 rearms: bool = False) -> None:
        self.name = name
        self.sends = sends  # send `attempt.outgoing`
        self.flushes = flushes  # first send the held preamble (`attempt.take_held()`)
        self.rearms = rearms  # first move the timer to `attempt.deadline`

    def __repr__(self) -> str:
        return self.name


HOLD = Action("HOLD")  # kept back until the commit point (the role-only preamble)
DROP = Action("DROP")  # not for the client (an empty event; a continuation's own preamble)
SEND = Action("SEND", sends=True)
SEND_REARMED = Action("SEND_REARMED", sends=True, rearms=True)
FLUSH_SEND = Action("FLUSH_SEND", sends=True, flushes=True)
FLUSH_SEND_REARMED = Action("FLUSH_SEND_REARMED", sends=True, flushes=True, rearms=True)
COMPLETE = Action("COMPLETE", flushes=True)  # [DONE]: send the clean end, then drain
END = Action("END")  # the attempt failed: `attempt.error` says how
LOST = Action("LOST")  # another attempt won the hedge race: send nothing, stop at once
_SENDS = ((SEND, SEND_REARMED), (FLUSH_SEND, FLUSH_SEND_REARMED))  # [flushes][rearms]


class Attempt:
    """One upstream request of a stream, from its first payload to its end."""

    __slots__ = ("_content", "_continuing", "_first_chunk", "_held", "_idle", "_keep_text",
                 "_progress", "_slack", "backend", "deadline", "error", "finish_reasons",
                 "first_content_at", "hedge", "lost", "number", "outgoing", "request",
                 "response_model", "started", "usage", "wasted")

    def __init__(self, request: ChatRequest, progress: StreamProgress, backend: str, *,
                 started: float, first_chunk: float, idle: float, continuing: bool,
                 keep_text: bool, hedge: bool = False) -> None:
        self.request = request  # what this attempt sends upstream
        self.backend = backend
        self.started = started
        self.number = progress.attempts  # the stream's attempts so far, this one included
        self.hedge = hedge  # raced against the attempt that was slow to its first token
        # What this attempt's upstream said (for its trace span): noted once per attempt,
        # at its first content chunk, a finish_reason, the usage chunk; never per chunk.
        self.first_content_at: float | None = None  # when this attempt's first content came
        self.response_model: str | None = None  # the model its chunks name
        self.finish_reasons: tuple[str, ...] = ()
        self.usage: dict[str, Any] | None = None  # as the upstream sent it
        self.deadline = started + first_chunk  # when the attempt's timer fires
        self.lost = False  # set when another attempt of a hedge race committed first
        self.wasted = 0  # content chunks received after losing, never sent
        self.outgoing = b""  # the payload to send, after a sending action
        self.error: SluiceError | None = None  # why the attempt failed, after END
        self._progress = progress
        self._first_chunk = first_chunk
        self._idle = idle
        self._slack = idle * REARM_SLACK
        self._continuing = continuing
        self._keep_text = keep_text  # keep the text relayed, for a continuation
        self._content = False  # content came in this attempt
        self._held: list[bytes] = []

    def feed(self, payload: bytes, now: float) -> Action:
        """One upstream event's data (a chunk's JSON or ``[DONE]``), received at ``now``."""
        if not payload.strip():
            return DROP  # `data:` with nothing in it: a keepalive in disguise
        if self.lost:  # already read when the winner committed; cancelled at the next await
            self.wasted += 1
            return LOST
        progress = self._progress
        if payload == DONE:
            if not self._content and not progress.finished:
                return self._fail(_cut("before any content"))
            return COMPLETE
        try:
            facts, chunk = inspect_chunk(payload)
        except MalformedChunk as error:
            return self._fail(UpstreamUnavailable("The upstream sent a malformed chunk.",
                                                  detail=str(error)))
        if facts.error is not None:
            return self._fail(UpstreamUnavailable(
                "The upstream model server reported an error mid-stream.",
                detail=f"upstream error event: {facts.error!r:.500}"))
        usage: Any = None
        if facts.content:
            if self._content:  # the hot path: one more content chunk
                action = SEND
                if now + self._idle - self.deadline > self._slack:
                    self.deadline = now + self._idle
                    action = SEND_REARMED
            else:
                self._content = True
                self.deadline = now + self._idle
                self.first_content_at = now
                model = chunk.get("model")
                self.response_model = model if isinstance(model, str) else None
                action = SEND_REARMED
                if progress.first_content_at is None:  # the commit point
                    progress.first_content_at = now
                    progress.served_by = self.backend
                    action = FLUSH_SEND_REARMED
            if self._keep_text:
                note_content(chunk, progress)
            if self._continuing:
                usage = chunk.get("usage")
        else:
            usage = chunk.get("usage")
            if not facts.finished and not isinstance(usage, dict):
                if self._continuing:
                    return DROP  # a continuation's own preamble: the client has one
                if not progress.committed:
                    self._held.append(payload)
                    return HOLD
            action = SEND
        if facts.finished:
            progress.finished = True
            self.finish_reasons += finish_reasons(chunk)
            action = FLUSH_SEND_REARMED if action.rearms else FLUSH_SEND
        if usage is not None and isinstance(usage, dict):
            self.usage = usage
            if self._continuing:
                usage = whole_answer_usage(usage, progress.prefill_chunks)
                payload = orjson.dumps({**chunk, "usage": usage})
            progress.note_usage(usage)
        progress.chunks += 1
        self.outgoing = payload
        return action

    def take_held(self) -> list[bytes]:
        """The held preamble, to send before the payload of a flushing action; now empty."""
        held, self._held = self._held, []
        return held

    def body_ended(self) -> StreamEnd:
        """The upstream body ended without ``[DONE]``: complete after a finish_reason, else cut."""
        if self._progress.finished:
            return StreamEnd()  # complete: the stream is ended properly all the same
        return StreamEnd(_cut("before its finish_reason"))

    def timed_out(self) -> StreamEnd:
        """The timer fired: before this attempt's first content chunk, or between two."""
        if self._content:
            return StreamEnd(UpstreamTimeout("idle", self._idle))
        return StreamEnd(UpstreamTimeout("first_chunk", self._first_chunk))

    def _fail(self, error: SluiceError) -> Action:
        self.error = error
        return END


def _cut(when: str) -> StreamCut:
    return StreamCut("The upstream stream ended before it was complete.",
                     detail=f"upstream closed the stream {when}")
