"""A response as a plan: the bytes to write and what to do between them, over time.

Every answer of the fake — a streamed completion with a cut in the middle, a
429 after a delay, a reset before the headers — is one lazy iterator of
`Step` values, computed here without any I/O:

* ``bytes``: wire bytes to send (already HTTP-framed; the player may coalesce
  consecutive ones into one write);
* `SleepUntil`: don't send more before ``offset`` seconds after the request;
* `Control`: flush now, cut or reset the connection, or stall until the peer
  leaves.

So all the fault logic is tested by listing a plan, and `playback` is a
dumb loop. Plans are lazy on purpose: ``sent_at`` stamps and ping times are
read from `wall_clock` just before their bytes are handed to the socket.

    steps = list(plan_chat(Scenario(tokens=2, cut_after=1), chat, facts))
    # [b'HTTP/1.1 200 OK\\r\\n...', b'...role chunk...', b'...t0...', Control.CUT]

What a non-streamed request honours: ``status``, ``reset_before_headers``,
``no_response``, ``first_delay``/``tps`` (the body is sent when the last token
would have been), ``cut_after``/``stall_after`` (no response at all) and
``error_event_after`` (a 500). The other SSE quirks only apply to streams, and
``buffered`` and ``burst`` only to OpenAI-style (SSE) streams.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from functools import partial

from server.testing.fake_upstream import chunks as c
from server.testing.fake_upstream.bodies import completion_body, error_body
from server.testing.fake_upstream.http11 import LAST_CHUNK, chunk, response, response_head
from server.testing.fake_upstream.request import ChatRequest
from server.testing.fake_upstream.scenario import Scenario

JSON = ("content-type", "application/json")
SSE_HEADERS = (
    ("content-type", "text/event-stream; charset=utf-8"),
    ("cache-control", "no-cache"),
    ("transfer-encoding", "chunked"),
)
EXPLODED = "upstream exploded"


@dataclass(frozen=True, slots=True)
class SleepUntil:
    """Send nothing more before `offset` seconds after the request was received."""

    offset: float


class Control(enum.Enum):
    FLUSH = "flush"
    """Send what is buffered as its own write."""
    CUT = "cut"
    """Close the connection (FIN) here, mid-body or before any response."""
    RESET = "reset"
    """Close the connection with RST (SO_LINGER 0)."""
    STALL = "stall"
    """Send nothing more; hold the connection open until the peer leaves."""


Step = bytes | SleepUntil | Control


@dataclass(frozen=True, slots=True)
class ResponseFacts:
    """What a chat plan needs besides the scenario and the request."""

    completion_id: str
    created: int
    keep_alive: bool = True
    wall_clock: Callable[[], float] = time.time


def plan_json(status: int, body: bytes, *, keep_alive: bool = True) -> Iterator[Step]:
    """A plain JSON answer (models list, 404, bad request)."""
    yield response(status, [JSON], body, keep_alive=keep_alive)


def plan_chat(scenario: Scenario, chat: ChatRequest, facts: ResponseFacts) -> Iterator[Step]:
    """The answer to ``POST /v1/chat/completions`` under `scenario`."""
    if scenario.first_delay and _answers_before_tokens(scenario):
        yield SleepUntil(scenario.first_delay)
    if scenario.reset_before_headers:
        yield Control.RESET
    elif scenario.no_response:
        yield Control.STALL
    elif scenario.status is not None:
        yield _error_response(scenario, facts.keep_alive)
    elif scenario.empty_ok:
        yield response(200, [("content-type", "text/event-stream")], b"",
                       keep_alive=facts.keep_alive)
    elif scenario.reject_prefill and chat.prefill_tokens:
        yield _error_response(replace(scenario, status=400, error_code="prefill_not_supported",
                                      error_message="continue_final_message is not supported"),
                              facts.keep_alive)
    elif chat.stream:
        yield from _stream(scenario, chat, facts)
    else:
        yield from _completion(scenario, chat, facts)


def _answers_before_tokens(s: Scenario) -> bool:
    return s.reset_before_headers or s.no_response or s.status is not None


def _error_response(s: Scenario, keep_alive: bool) -> bytes:
    assert s.status is not None
    headers = [JSON]
    if s.retry_after is not None:
        headers.append(("retry-after", _seconds(s.retry_after)))
    body = error_body(s.status, s.error_message, code=s.error_code)
    return response(s.status, headers, body, keep_alive=keep_alive)


def _seconds(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def token_offset(s: Scenario, index: int) -> float:
    """When content token `index` is due, in seconds after the request."""
    return s.first_delay + (index / s.tps if s.tps else 0.0)


def _completion(s: Scenario, chat: ChatRequest, facts: ResponseFacts) -> Iterator[Step]:
    n = chat.completion_tokens(s.tokens)
    faults = [
        (after, step)
        for after, step in (
            (s.cut_after, Control.CUT),
            (s.stall_after, Control.STALL),
            (s.error_event_after, None),
        )
        if after is not None and after <= n
    ]
    if faults:
        after, step = min(faults, key=lambda fault: fault[0])
        yield SleepUntil(token_offset(s, max(after - 1, 0)))
        if step is None:
            body = error_body(500, EXPLODED)
            yield response(500, [JSON], body, keep_alive=facts.keep_alive)
        else:
            yield step
        return
    yield SleepUntil(token_offset(s, max(n - 1, 0)))
    body = completion_body(
        facts.completion_id,
        created=facts.created,
        model=chat.model,
        completion_tokens=n,
        prompt_tokens=chat.prompt_tokens,
        finish_reason=chat.finish_reason(s.tokens),
    )
    yield response(200, [JSON], body, keep_alive=facts.keep_alive)


def _stream(s: Scenario, chat: ChatRequest, facts: ResponseFacts) -> Iterator[Step]:
    t = c.ChunkTemplates.render(
        facts.completion_id, created=facts.created, model=chat.model, crlf=s.crlf
    )
    clock = facts.wall_clock
    emit = _split_emit if s.split_writes else emit_whole
    n = chat.completion_tokens(s.tokens)
    start = min(chat.prefill_tokens, n)
    head = response_head(200, SSE_HEADERS, keep_alive=facts.keep_alive)
    yield head
    if s.buffered:
        yield Control.FLUSH  # the headers at once, as a buffering proxy sends them
        yield SleepUntil(token_offset(s, max(n - start - 1, 0)))
    if s.keepalive_comments:
        yield from emit(c.comment_event(t))
    yield from emit(c.role_event(t))
    faults = partial(fault_steps, s, emit=emit, malformed=partial(c.malformed_event, t),
                     error=partial(c.error_event, t))
    if (yield from faults(0)):
        return
    for index in range(start, n):
        due = _due(s, index - start, n - start)
        if due is not None:
            yield SleepUntil(due)
        if s.keepalive_comments:
            yield from emit(c.comment_event(t, _ping(clock())))
        if s.timestamps:
            yield from emit(c.stamped_content_event(t, index, clock()))
        else:
            yield from emit(c.content_event(t, index))
        if (yield from faults(index + 1 - start)):
            return
    if not s.omit_finish:
        if s.keepalive_comments:
            yield from emit(c.comment_event(t, _ping(clock())))
        yield from emit(c.finish_event(t, chat.finish_reason(s.tokens)))
    if chat.include_usage:
        yield from emit(c.usage_event(t, chat.prompt_tokens, n - start))
    if not s.no_done:
        yield from emit(c.done_event(t))
    yield LAST_CHUNK


def _due(s: Scenario, sent: int, total: int) -> float | None:
    """When content chunk number ``sent`` may go out; None: together with the one before.

    Consecutive chunks with no wait between them leave in one write (`playback`
    coalesces them): that is how ``burst`` and ``buffered`` arrive in clumps.
    """
    if s.buffered:
        return None  # the whole reply waited for its last token before the role chunk
    if s.burst is not None:
        if sent % s.burst:
            return None
        return token_offset(s, min(sent + s.burst, total) - 1)
    return token_offset(s, sent) if s.first_delay or s.tps else None


def fault_steps(
    s: Scenario, sent: int, *, emit: Callable[[bytes], Iterator[Step]],
    malformed: Callable[[], bytes], error: Callable[[], bytes],
) -> Generator[Step, None, bool]:
    """Steps due after `sent` content pieces; the generator's return says "stop here".

    Shared by both wire formats: ``malformed`` and ``error`` make the format's
    own broken piece and error piece (an SSE event here, an NDJSON line for
    Ollama).
    """
    if s.malformed_after == sent:
        yield from emit(malformed())
    if s.cut_after == sent:
        yield Control.CUT
        return True
    if s.stall_after == sent:
        yield Control.STALL
        return True
    if s.error_event_after == sent:
        yield from emit(error())
        yield LAST_CHUNK
        return True
    return False


def emit_whole(event: bytes) -> Iterator[Step]:
    yield chunk(event)


def _split_emit(event: bytes) -> Iterator[Step]:
    first, second = c.split_event(event)
    yield chunk(first)
    yield Control.FLUSH
    yield chunk(second)
    yield Control.FLUSH


def _ping(now: float) -> str:
    return f"ping - {datetime.fromtimestamp(now, UTC)}"
