"""server/stream/attempt.py: one attempt's decisions, fed plain lists of upstream payloads.

Each test feeds payloads as an upstream would send them and reads back what
the pump would do: the actions, the bytes the client would get (the held
preamble when an action flushes, then the payload), the attempt's timer and
how the attempt ends. Times are plain numbers.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from server.api.chat_completions import ChatRequest, parse_chat_request
from server.chunks import chunk_bytes
from server.errors import StreamCut, UpstreamTimeout, UpstreamUnavailable
from server.sse import DONE
from server.stream.attempt import (
    COMPLETE,
    DROP,
    END,
    FLUSH_SEND,
    FLUSH_SEND_REARMED,
    HOLD,
    REARM_SLACK,
    SEND,
    SEND_REARMED,
    Action,
    Attempt,
)
from server.stream.progress import StreamProgress

FIRST_CHUNK = 20.0
IDLE = 10.0
STARTED = 100.0


def chunk(*, finish_reason: str | None = None, **delta: Any) -> bytes:
    return chunk_bytes(completion_id="c", created=0, model="m", delta=delta,
                       finish_reason=finish_reason)


ROLE = chunk(role="assistant", content="")
ROLE_ONLY = chunk(role="assistant")
EMPTY_DELTA = chunk()
FINISH = chunk(finish_reason="stop")
USAGE = chunk_bytes(completion_id="c", created=0, model="m",
                    usage={"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17})
TOOL_CALL = chunk(tool_calls=[{"index": 0, "id": "call_1", "type": "function",
                               "function": {"name": "lookup", "arguments": ""}}])
ARGUMENTS = chunk(tool_calls=[{"index": 0, "function": {"arguments": '{"q": "x"}'}}])


def text(words: str) -> bytes:
    return chunk(content=words)


def request() -> ChatRequest:
    return parse_chat_request(orjson.dumps(
        {"model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}]}))


def attempt(progress: StreamProgress | None = None, *, continuing: bool = False,
            keep_text: bool = True) -> Attempt:
    return Attempt(request(), progress or StreamProgress(), "primary", started=STARTED,
                   first_chunk=FIRST_CHUNK, idle=IDLE, continuing=continuing,
                   keep_text=keep_text)


def feed(machine: Attempt, *payloads: bytes, at: float = STARTED + 1
         ) -> tuple[list[Action], list[bytes]]:
    """Feed ``payloads`` (all received at ``at``); the actions, and what the client is sent."""
    actions: list[Action] = []
    sent: list[bytes] = []
    for payload in payloads:
        action = machine.feed(payload, at)
        actions.append(action)
        if action.flushes:
            sent.extend(machine.take_held())
        if action.sends:
            sent.append(machine.outgoing)
    return actions, sent


# ------------------------------------------------------------------ the commit point


def test_the_role_only_preamble_is_held_until_the_first_content() -> None:
    progress = StreamProgress()
    machine = attempt(progress)
    assert feed(machine, ROLE) == ([HOLD], [])
    assert not progress.committed
    actions, sent = feed(machine, text("Hi"), at=STARTED + 3)
    assert (actions, sent) == ([FLUSH_SEND_REARMED], [ROLE, text("Hi")])
    assert progress.first_content_at == STARTED + 3
    assert progress.served_by == "primary"
    assert progress.chunks == 1  # the preamble is not counted


@pytest.mark.parametrize("preamble", [ROLE, ROLE_ONLY, EMPTY_DELTA, chunk(content=None)])
def test_a_delta_without_content_is_not_content(preamble: bytes) -> None:
    progress = StreamProgress()
    assert feed(attempt(progress), preamble) == ([HOLD], [])
    assert not progress.committed


@pytest.mark.parametrize("payload", [
    text("x"), chunk(reasoning_content="hmm"), chunk(reasoning="hmm"), chunk(refusal="no"),
    TOOL_CALL,
])
def test_text_reasoning_refusal_and_tool_calls_commit(payload: bytes) -> None:
    progress = StreamProgress()
    assert feed(attempt(progress), ROLE, payload) == ([HOLD, FLUSH_SEND_REARMED],
                                                      [ROLE, payload])
    assert progress.committed


def test_a_usage_only_chunk_is_relayed_but_does_not_commit() -> None:
    progress = StreamProgress()
    machine = attempt(progress)
    assert feed(machine, ROLE, USAGE) == ([HOLD, SEND], [USAGE])
    assert not progress.committed
    assert (progress.prompt_tokens, progress.completion_tokens) == (12, 5)
    assert machine.deadline == STARTED + FIRST_CHUNK  # and does not stop the first-chunk timer


def test_a_finish_reason_without_content_flushes_but_does_not_commit() -> None:
    progress = StreamProgress()
    machine = attempt(progress)
    assert feed(machine, ROLE, FINISH) == ([HOLD, FLUSH_SEND], [ROLE, FINISH])
    assert not progress.committed and progress.finished
    assert feed(machine, DONE) == ([COMPLETE], [])  # an empty answer, but a complete one


@pytest.mark.parametrize("before", [[], [ROLE], [ROLE, USAGE]])
def test_done_before_any_content_is_a_cut(before: list[bytes]) -> None:
    machine = attempt()
    actions, sent = feed(machine, *before, DONE)
    assert actions[-1] is END and ROLE not in sent
    assert isinstance(machine.error, StreamCut)


def test_done_after_content_completes() -> None:
    machine = attempt()
    assert feed(machine, ROLE, text("Hi"), FINISH, USAGE, DONE)[0][-1] is COMPLETE


def test_an_error_event_ends_the_attempt_before_the_commit() -> None:
    progress = StreamProgress()
    machine = attempt(progress)
    assert feed(machine, ROLE, b'{"error": {"message": "overloaded"}}') == ([HOLD, END], [])
    assert isinstance(machine.error, UpstreamUnavailable)
    assert "overloaded" in machine.error.detail
    assert not progress.committed  # nothing shown: the request may be retried unseen


def test_an_error_event_ends_the_attempt_after_the_commit() -> None:
    progress = StreamProgress()
    machine = attempt(progress)
    actions, sent = feed(machine, ROLE, text("Hi"), b'{"error": "boom"}')
    assert actions == [HOLD, FLUSH_SEND_REARMED, END]
    assert sent == [ROLE, text("Hi")]  # the error event itself is not relayed
    assert isinstance(machine.error, UpstreamUnavailable)
    assert progress.committed


@pytest.mark.parametrize("payload", [b"{not json", b"[1, 2]", b'{"choices": {}}',
                                     b'{"choices": [3]}'])
def test_a_malformed_chunk_ends_the_attempt(payload: bytes) -> None:
    machine = attempt()
    assert feed(machine, ROLE, payload) == ([HOLD, END], [])
    assert isinstance(machine.error, UpstreamUnavailable)


@pytest.mark.parametrize("payload", [b"", b" ", b"\n"])
def test_an_empty_event_is_dropped(payload: bytes) -> None:
    machine = attempt()
    assert feed(machine, payload) == ([DROP], [])
    assert feed(machine, ROLE, text("a"))[1] == [ROLE, text("a")]


def test_after_the_commit_an_empty_delta_is_relayed() -> None:
    machine = attempt()
    assert feed(machine, ROLE, text("a"), EMPTY_DELTA)[0][-1] is SEND


# ------------------------------------------------------------------ the end of the body


def test_a_body_ending_after_its_finish_reason_is_complete_without_done() -> None:
    machine = attempt()
    feed(machine, ROLE, text("Hi"), FINISH)
    assert machine.body_ended().error is None


@pytest.mark.parametrize("payloads", [[], [ROLE], [ROLE, text("Hi")]])
def test_a_body_ending_before_its_finish_reason_is_a_cut(payloads: list[bytes]) -> None:
    machine = attempt()
    feed(machine, *payloads)
    assert isinstance(machine.body_ended().error, StreamCut)


# ------------------------------------------------------------------ the timers


@pytest.mark.parametrize(("payloads", "deadline", "phase", "seconds"), [
    ([ROLE, USAGE, EMPTY_DELTA], STARTED + FIRST_CHUNK, "first_chunk", FIRST_CHUNK),  # no content
    ([ROLE, text("a")], STARTED + 5 + IDLE, "idle", IDLE),
])
def test_the_first_chunk_timer_runs_until_content_then_the_idle_timer(
        payloads: list[bytes], deadline: float, phase: str, seconds: float) -> None:
    machine = attempt()
    assert machine.deadline == STARTED + FIRST_CHUNK
    feed(machine, *payloads, at=STARTED + 5)
    assert machine.deadline == deadline
    error = machine.timed_out().error
    assert isinstance(error, UpstreamTimeout)
    assert (error.phase, error.code) == (phase, f"{phase}_timeout")
    assert f"{seconds:g} s" in error.public_message


def test_only_content_rearms_the_idle_timer_and_only_when_it_moves_enough() -> None:
    machine = attempt()
    feed(machine, ROLE, text("a"), at=STARTED)
    armed = STARTED + IDLE
    # An empty delta or a usage chunk much later: not content, the timer stays.
    assert feed(machine, EMPTY_DELTA, USAGE, at=STARTED + 9)[0] == [SEND, SEND]
    assert machine.deadline == armed
    # Content within the slack: sent, timer not moved (moving a deadline costs).
    soon = STARTED + IDLE * REARM_SLACK * 0.5
    assert feed(machine, text("b"), at=soon)[0] == [SEND]
    assert machine.deadline == armed
    # Content later than that: the timer moves.
    later = STARTED + IDLE * REARM_SLACK * 2
    assert feed(machine, text("c"), at=later)[0] == [SEND_REARMED]
    assert machine.deadline == later + IDLE


def test_a_finish_reason_with_content_flushes_and_rearms() -> None:
    progress = StreamProgress()
    machine = attempt(progress)
    last = chunk(content="!", finish_reason="stop")
    assert feed(machine, ROLE, last) == ([HOLD, FLUSH_SEND_REARMED], [ROLE, last])
    assert progress.finished and progress.committed


# ------------------------------------------------------------------ what a continuation needs


def test_the_text_and_tool_calls_are_kept_only_when_a_continuation_could_use_them() -> None:
    kept = StreamProgress()
    feed(attempt(kept), ROLE, text("Once "), text("upon"), FINISH)
    assert (kept.text, kept.content_chunks, kept.tool_calls) == (["Once ", "upon"], 2, False)
    feed(attempt(tools := StreamProgress()), ROLE, TOOL_CALL, ARGUMENTS)
    assert tools.tool_calls
    feed(attempt(skipped := StreamProgress(), keep_text=False), ROLE, text("x"), TOOL_CALL)
    assert (skipped.text, skipped.content_chunks, skipped.tool_calls) == ([], 0, False)


def test_a_continuation_drops_its_own_preamble() -> None:
    progress = StreamProgress(first_content_at=1.0, text=["Once "], content_chunks=1)
    machine = attempt(progress, continuing=True)
    actions, sent = feed(machine, ROLE, ROLE_ONLY, text("upon"))
    assert actions == [DROP, DROP, SEND_REARMED]  # the client has its preamble already
    assert sent == [text("upon")]
    assert progress.first_content_at == 1.0  # committed long ago


def test_a_continuations_usage_counts_the_whole_answer() -> None:
    progress = StreamProgress(first_content_at=1.0, content_chunks=4, prefill_chunks=4)
    machine = attempt(progress, continuing=True)
    actions, sent = feed(machine, ROLE, text("a"), FINISH, USAGE, DONE)
    usage = orjson.loads(sent[-1])["usage"]
    # The prefill (4 chunks ≈ 4 tokens) was the continuation's prompt: it is completion.
    assert (usage["prompt_tokens"], usage["completion_tokens"]) == (12 - 4, 5 + 4)
    assert orjson.loads(sent[-1])["choices"] == []  # the rest of the chunk as it came
    assert (progress.prompt_tokens, progress.completion_tokens) == (8, 9)
    assert actions[-1] is COMPLETE


def test_usage_on_a_continuations_content_chunk_is_rewritten_too() -> None:
    progress = StreamProgress(first_content_at=1.0, prefill_chunks=2)
    machine = attempt(progress, continuing=True)
    payload = orjson.dumps({**orjson.loads(text("a")), "usage": {"prompt_tokens": 9,
                                                                  "completion_tokens": 1}})
    _, sent = feed(machine, payload)
    assert orjson.loads(sent[0])["usage"] == {"prompt_tokens": 7, "completion_tokens": 3}


def test_the_first_attempts_usage_is_relayed_untouched() -> None:
    progress = StreamProgress()
    _, sent = feed(attempt(progress), ROLE, text("a"), FINISH, USAGE)
    assert sent[-1] is USAGE
    assert (progress.prompt_tokens, progress.completion_tokens) == (12, 5)


# ------------------------------------------------------------- what its span reports


def test_the_attempt_notes_what_its_upstream_said_for_its_span() -> None:
    progress = StreamProgress()
    machine = attempt(progress)
    assert machine.first_content_at is None and machine.response_model is None
    feed(machine, ROLE, at=STARTED + 1)
    assert machine.first_content_at is None  # a preamble is not content
    feed(machine, text("a"), at=STARTED + 2)
    feed(machine, text("b"), FINISH, USAGE, DONE, at=STARTED + 3)
    assert machine.first_content_at == STARTED + 2
    assert machine.response_model == "m"
    assert machine.finish_reasons == ("stop",)
    assert machine.usage == {"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17}


def test_a_continuations_span_gets_its_upstreams_own_usage_and_its_own_first_content() -> None:
    progress = StreamProgress(first_content_at=1.0, content_chunks=4, prefill_chunks=4)
    progress.attempts = 2
    machine = attempt(progress, continuing=True)
    feed(machine, ROLE, text("a"), FINISH, USAGE, DONE, at=STARTED + 5)
    assert machine.number == 2
    assert machine.first_content_at == STARTED + 5  # the stream's commit was long before
    assert machine.usage is not None and machine.usage["completion_tokens"] == 5  # not 9


def test_the_finish_reasons_of_each_finishing_chunk_are_kept() -> None:
    machine = attempt()
    two = chunk_bytes(completion_id="c", created=0, model="m", delta={"content": "x"},
                      finish_reason="length")
    feed(machine, text("a"), two, FINISH)
    assert machine.finish_reasons == ("length", "stop")
