"""server/stream/continuation.py: when a cut answer may be continued, where, and with what."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from server.api.chat_completions import parse_chat_request
from server.backends.simulated import SimulatedBackend
from server.config import BackendSettings, BreakerSettings, RetryPolicy
from server.limits.routing import make_routes
from server.stream.continuation import (
    continued,
    may_continue,
    note_content,
    prefill_routes,
    whole_answer_usage,
)
from server.stream.progress import StreamProgress

POLICY = RetryPolicy(continuation_attempts=2)


def cut(**fields: Any) -> StreamProgress:
    """A stream cut after its commit point: unfinished, no tool calls, unless told."""
    return StreamProgress(first_content_at=1.0, **fields)


def test_a_cut_answer_may_be_continued() -> None:
    assert may_continue(cut(), POLICY)


def test_a_tool_call_stream_is_never_continued() -> None:
    """Tool-call arguments cannot be prefilled: a cut fails in-band instead."""
    assert not may_continue(cut(tool_calls=True), POLICY)


def test_a_finished_answer_needs_no_continuation() -> None:
    assert not may_continue(cut(finished=True), POLICY)


@pytest.mark.parametrize(("done", "allowed"), [(0, True), (1, True), (2, False), (3, False)])
def test_continuations_are_bounded(done: int, allowed: bool) -> None:
    assert may_continue(cut(continuations=done), POLICY) is allowed
    assert not may_continue(cut(), RetryPolicy(continuation_attempts=0))


def test_only_backends_that_declare_prefill_continue() -> None:
    def backend(name: str, priority: int, continuation: Any) -> SimulatedBackend:
        return SimulatedBackend(BackendSettings(name=name, kind="simulated", models=("*",),
                                                priority=priority, continuation=continuation))

    routes = make_routes([backend("primary", 0, "none"), backend("fallback", 1, "prefill")],
                         BreakerSettings())
    assert [r.name for r in prefill_routes(routes)] == ["fallback"]
    assert prefill_routes(routes[:1]) == ()


def test_the_continued_request_ends_with_the_answer_so_far() -> None:
    messages = [{"role": "user", "content": "Tell me a story."}]
    raw: dict[str, Any] = {"model": "m", "stream": True, "seed": 3, "messages": messages}
    request = parse_chat_request(orjson.dumps(raw))
    again = continued(request, StreamProgress(text=["Once ", "upon"]))
    assert again.continues_answer and not request.continues_answer
    assert again.body["messages"] == [*messages, {"role": "assistant", "content": "Once upon"}]
    assert {k: v for k, v in again.body.items() if k != "messages"} == \
        {k: v for k, v in raw.items() if k != "messages"}
    assert request.body == raw  # the client's request is not changed
    assert (again.model, again.stream, again.max_tokens) == ("m", True, None)


def test_note_content_keeps_text_and_notices_tool_calls() -> None:
    progress = StreamProgress()
    note_content({"choices": [{"delta": {"content": "Hel"}}]}, progress)
    note_content({"choices": [{"delta": {"reasoning_content": "hmm"}}]}, progress)
    note_content({"choices": [{"delta": {"content": "lo"}}, "junk", {"delta": None}]}, progress)
    assert (progress.text, progress.content_chunks, progress.tool_calls) == \
        (["Hel", "lo"], 3, False)
    note_content({"choices": [{"delta": {"tool_calls": [{"index": 0}]}}]}, progress)
    assert progress.tool_calls
    legacy = StreamProgress()
    note_content({"choices": [{"delta": {"function_call": {"name": "f"}}}]}, legacy)
    assert legacy.tool_calls


def test_whole_answer_usage_moves_the_prefill_from_prompt_to_completion() -> None:
    usage = {"prompt_tokens": 30, "completion_tokens": 6, "total_tokens": 36}
    assert whole_answer_usage(usage, 4) == {"prompt_tokens": 26, "completion_tokens": 10,
                                            "total_tokens": 36}
    assert usage["prompt_tokens"] == 30  # a new object: the upstream's is not changed
    assert whole_answer_usage({"prompt_tokens": 2, "completion_tokens": 1}, 5) == \
        {"prompt_tokens": 0, "completion_tokens": 6}  # never negative
    assert whole_answer_usage({"total_tokens": 5}, 3) == {"total_tokens": 5}
