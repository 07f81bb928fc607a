"""server/stream/fail_over.py: a request's way through its backends, with plain numbers.

The routes are plain names in priority order; `walk` stands in for the
reservation (a retry goes back to its backend, anything else to the first
backend not yet excluded) and feeds each attempt's end to the plan. The
errors are the ones the relay makes: upstream statuses as the transport maps
them, cuts and malformed chunks as `Attempt` finds them.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import orjson
import pytest

from server.api.chat_completions import ChatRequest, parse_chat_request
from server.backends.upstream_errors import status_error
from server.chunks import chunk_bytes
from server.config import RetryPolicy, Timeouts
from server.errors import (
    NoBackendAvailable,
    SluiceError,
    StreamCut,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from server.limits.retry_budget import RetryBudget
from server.sse import DONE
from server.stream.attempt import Attempt
from server.stream.channel import StreamEnd
from server.stream.continuation import refused_prefill
from server.stream.fail_over import CONTINUATION, FRESH, FailOver, NextAttempt
from server.stream.progress import StreamProgress

BACKENDS = ("primary", "secondary", "tertiary")
TIMEOUTS = Timeouts(connect=5, first_chunk=30, idle=10)
POLICY = RetryPolicy(max_attempts=10, same_backend_retries=1, retry_after_cap=10,
                     backoff_base=0.5, backoff_max=4, budget=100, continuation_attempts=2)


def chunk(*, finish_reason: str | None = None, **delta: object) -> bytes:
    return chunk_bytes(completion_id="c", created=0, model="m", delta=delta,
                       finish_reason=finish_reason)


ROLE = chunk(role="assistant", content="")
FINISH = chunk(finish_reason="stop")


def status(code: int, retry_after: str | None = None) -> SluiceError:
    return status_error(code, b'{"error": {"message": "no"}}', retry_after, secrets=())


def request() -> ChatRequest:
    return parse_chat_request(orjson.dumps(
        {"model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}]}))


def plan(policy: RetryPolicy = POLICY, progress: StreamProgress | None = None, *,
         keep_text: bool = True) -> FailOver:
    return FailOver(request(), policy, progress or StreamProgress(), random.Random(7),
                    started=0.0, keep_text=keep_text)


def relayed(attempt: Attempt, *payloads: bytes, now: float = 0.0) -> None:
    for payload in payloads:
        attempt.feed(payload, now)


def error_of(*payloads: bytes) -> SluiceError:
    """The error `Attempt` ends with, fed ``payloads`` (then the body's end)."""
    attempt = Attempt(request(), StreamProgress(), "x", started=0, first_chunk=1, idle=1,
                      continuing=False, keep_text=False)
    for payload in payloads:
        attempt.feed(payload, 0.0)
        if attempt.error is not None:
            return attempt.error
    error = attempt.body_ended().error
    assert error is not None
    return error


@dataclass
class Step:
    backend: str
    verdict: str
    delay: float


def walk(failover: FailOver, errors: list[SluiceError], now: float = 0.0
         ) -> tuple[list[Step], StreamEnd | None]:
    """Attempts failing with ``errors`` in turn (the last again), until the stream ends."""
    steps: list[Step] = []
    for i in range(50):
        error = errors[min(i, len(errors) - 1)]
        step = failover.next_attempt(now)
        if isinstance(step, StreamEnd):
            return steps, step
        backend = step.prefer or next((b for b in BACKENDS if b not in failover.excluded), None)
        if backend is None:
            return steps, failover.unreserved(NoBackendAvailable("none left"))
        failover.start(backend, TIMEOUTS, now)
        after = failover.ended(StreamEnd(error), now)
        steps.append(Step(backend, after.verdict, after.delay))
        now += after.delay
        if after.over:
            return steps, after.end
    raise AssertionError("the plan never ends")


def verdicts(steps: list[Step]) -> list[tuple[str, str]]:
    return [(s.backend, s.verdict) for s in steps]


# ------------------------------------------- the README's fail-over table, row by row


@pytest.mark.parametrize("error", [status(400), status(401), status(404), status(413),
                                   status(422)])
def test_a_request_error_is_relayed_without_retry_or_fail_over(error: SluiceError) -> None:
    steps, end = walk(plan(), [error])
    assert verdicts(steps) == [("primary", "give_up")]
    assert end is not None and end.error is error


def test_429_waits_its_retry_after_retries_once_then_fails_over() -> None:
    steps, _ = walk(plan(), [status(429, "3")] * 3 + [status(400)])
    assert verdicts(steps) == [("primary", "retry"), ("primary", "fail_over"),
                               ("secondary", "retry"), ("secondary", "give_up")]
    assert steps[0].delay == 3.0


def test_429_retry_after_is_capped() -> None:
    steps, _ = walk(plan(), [status(429, "3600"), status(400)])
    assert steps[0].delay == POLICY.retry_after_cap


def test_429_without_retry_after_backs_off_with_jitter() -> None:
    delays = {walk(FailOver(request(), POLICY, StreamProgress(), random.Random(seed),
                            started=0, keep_text=False),
                   [status(429), status(400)])[0][0].delay for seed in range(20)}
    assert all(0 <= d <= POLICY.backoff_base for d in delays)
    assert len(delays) > 1  # jitter: retrying clients do not march in step


@pytest.mark.parametrize("error", [
    status(500), status(502), status(503),
    UpstreamUnavailable("refused or reset"),
    error_of(ROLE, b"{not json"),  # malformed data
    error_of(ROLE, DONE),  # a stream that ends before content
    error_of(ROLE),
])
def test_a_broken_upstream_is_retried_here_then_failed_over(error: SluiceError) -> None:
    steps, end = walk(plan(), [error])
    assert verdicts(steps) == [("primary", "retry"), ("primary", "fail_over"),
                               ("secondary", "retry"), ("secondary", "fail_over"),
                               ("tertiary", "retry"), ("tertiary", "fail_over")]
    assert all(0 <= s.delay <= POLICY.backoff_base for s in steps if s.verdict == "retry")
    assert end is not None and end.error is error  # nothing left: the client reads the last


def test_same_backend_retries_sets_how_often_a_backend_is_retried() -> None:
    policy = RetryPolicy(same_backend_retries=3, backoff_base=0.5, backoff_max=1.0)
    steps, _ = walk(plan(policy), [status(500)])
    assert verdicts(steps)[:4] == [("primary", "retry")] * 3 + [("primary", "fail_over")]
    # The backoff grows exponentially (full jitter), capped at backoff_max.
    assert steps[0].delay <= 0.5 and steps[1].delay <= 1.0 and steps[2].delay <= 1.0


@pytest.mark.parametrize("phase", ["connect", "first_chunk"])
def test_a_silent_upstream_is_failed_over_at_once(phase: str) -> None:
    steps, end = walk(plan(), [UpstreamTimeout(phase, 5)])
    assert verdicts(steps) == [("primary", "fail_over"), ("secondary", "fail_over"),
                               ("tertiary", "fail_over")]
    assert end is not None and isinstance(end.error, UpstreamTimeout)


def test_attempts_are_bounded_by_max_attempts() -> None:
    steps, end = walk(plan(RetryPolicy(max_attempts=3, backoff_base=0.01)), [status(500)])
    assert len(steps) == 3
    assert end is not None and isinstance(end.error, SluiceError)
    assert end.error.detail.startswith("upstream HTTP 500")  # the last error, not a new one


def test_the_budget_bounds_retries_and_the_first_chunk_timer() -> None:
    failover = plan(RetryPolicy(budget=10, retry_after_cap=60))
    attempt = failover.start("primary", TIMEOUTS, now=0.0)
    assert attempt.deadline == 10.0  # not first_chunk = 30: the budget ends first
    after = failover.ended(StreamEnd(status(429, "8")), now=4.0)
    assert (after.verdict, after.delay) == ("retry", 6.0)  # 8 s asked, 6 s left
    end = failover.next_attempt(now=10.0)
    assert isinstance(end, StreamEnd) and isinstance(end.error, SluiceError)
    assert end.error.status == 429


def test_a_retry_prefers_its_backend_and_a_fail_over_does_not() -> None:
    failover = plan()
    assert failover.next_attempt(0.0) == FRESH
    failover.start("primary", TIMEOUTS, 0.0)
    failover.ended(StreamEnd(status(500)), 0.0)
    assert failover.next_attempt(0.0) == NextAttempt(prefer="primary")
    failover.start("primary", TIMEOUTS, 0.0)
    failover.ended(StreamEnd(status(500)), 0.0)
    assert failover.next_attempt(0.0) == FRESH
    assert failover.excluded == {"primary"}


def test_a_retry_that_lands_elsewhere_excludes_the_backend_that_tripped() -> None:
    failover = plan()
    failover.start("primary", TIMEOUTS, 0.0)
    assert failover.ended(StreamEnd(status(500)), 0.0).verdict == "retry"
    failover.start("secondary", TIMEOUTS, 0.0)  # primary's breaker refused the retry
    assert failover.excluded == {"primary"}
    # ...and the new backend gets its own retry.
    assert failover.ended(StreamEnd(status(500)), 0.0).verdict == "retry"


def test_nothing_reservable_ends_with_the_last_error_or_the_reason() -> None:
    first = plan()
    unavailable = NoBackendAvailable("all open")
    assert first.unreserved(unavailable).error is unavailable
    later = plan()
    later.start("primary", TIMEOUTS, 0.0)
    cause = status(503)
    later.ended(StreamEnd(cause), 0.0)
    assert later.unreserved(unavailable).error is cause


def test_a_completed_attempt_completes_the_stream() -> None:
    failover = plan()
    failover.start("primary", TIMEOUTS, 0.0)
    done = failover.ended(None, 0.0)  # its clean end is sent already
    assert (done.verdict, done.over, done.end) == ("complete", True, None)
    without_done = StreamEnd()
    assert failover.ended(without_done, 0.0).end is without_done


# ------------------------------------------------------------- after the commit point


def committed_then(failover: FailOver, progress: StreamProgress, *payloads: bytes,
                   backend: str = "primary") -> StreamEnd:
    """Start an attempt on ``backend``, relay ``payloads``; the body then ends."""
    attempt = failover.start(backend, TIMEOUTS, 0.0)
    relayed(attempt, *payloads)
    assert progress.committed
    return attempt.body_ended()


def test_a_cut_after_the_commit_is_continued_elsewhere() -> None:
    progress = StreamProgress()
    failover = plan(progress=progress)
    cut = committed_then(failover, progress, ROLE, chunk(content="Once "), chunk(content="upon"))
    after = failover.ended(cut, 0.0)
    assert after.verdict == "continue" and not after.over
    assert failover.next_attempt(0.0) == CONTINUATION
    assert failover.excluded == {"primary"}
    late = POLICY.budget + 50  # a continuation is not bound by the budget before the commit
    attempt = failover.start("secondary", TIMEOUTS, late)
    assert attempt.request.continues_answer
    assert attempt.request.body["messages"][-1] == {"role": "assistant", "content": "Once upon"}
    assert progress.continuations == 1 and progress.prefill_chunks == 2
    assert attempt.deadline == late + TIMEOUTS.first_chunk  # and has the whole timer
    relayed(attempt, ROLE, chunk(content=" a time"), FINISH, DONE)
    assert failover.ended(None, 0.0).verdict == "complete"


def test_a_cut_with_no_backend_to_continue_ends_with_the_cut() -> None:
    progress = StreamProgress()
    failover = plan(progress=progress)
    cut = committed_then(failover, progress, ROLE, chunk(content="Once "))
    assert failover.ended(cut, 0.0).verdict == "continue"
    end = failover.unreserved(NoBackendAvailable("no prefill backend"))
    assert end.error is cut.error and isinstance(end.error, StreamCut)


def test_a_tool_call_stream_cut_mid_way_is_not_continued() -> None:
    progress = StreamProgress()
    failover = plan(progress=progress)
    cut = committed_then(failover, progress, ROLE, chunk(tool_calls=[
        {"index": 0, "id": "call_1", "type": "function",
         "function": {"name": "lookup", "arguments": '{"q": '}}]))
    after = failover.ended(cut, 0.0)
    assert (after.verdict, after.end) == ("give_up", cut)


def test_a_finished_answer_is_not_continued() -> None:
    progress = StreamProgress()
    failover = plan(progress=progress)
    attempt = failover.start("primary", TIMEOUTS, 0.0)
    relayed(attempt, ROLE, chunk(content="Done."), FINISH, b'{"error": "late"}')
    assert attempt.error is not None
    after = failover.ended(StreamEnd(attempt.error), 0.0)
    assert after.verdict == "give_up"
    assert after.end is not None and after.end.error is attempt.error


def test_continuations_are_bounded_by_continuation_attempts() -> None:
    progress = StreamProgress()
    failover = plan(RetryPolicy(continuation_attempts=2), progress)
    cut = committed_then(failover, progress, ROLE, chunk(content="a"))
    assert failover.ended(cut, 0.0).verdict == "continue"
    for backend, verdict in (("secondary", "continue"), ("tertiary", "give_up")):
        attempt = failover.start(backend, TIMEOUTS, 0.0)
        relayed(attempt, chunk(content="b"))
        assert failover.ended(attempt.body_ended(), 0.0).verdict == verdict
    assert progress.continuations == 2


def test_no_continuation_at_all_when_none_is_allowed() -> None:
    progress = StreamProgress()
    failover = plan(RetryPolicy(continuation_attempts=0), progress)
    cut = committed_then(failover, progress, ROLE, chunk(content="a"))
    assert failover.ended(cut, 0.0).verdict == "give_up"


def test_a_continuation_refused_is_not_what_the_client_reads() -> None:
    progress = StreamProgress()
    failover = plan(progress=progress)
    cut = committed_then(failover, progress, ROLE, chunk(content="a"))
    failover.ended(cut, 0.0)
    failover.start("secondary", TIMEOUTS, 0.0)
    refused = status(400)  # "continue_final_message is not supported"
    assert failover.ended(StreamEnd(refused), 0.0).verdict == "continue"
    assert failover.unreserved(NoBackendAvailable("none")).error is cut.error
    # A continuation that broke the backend's way, though, is the newer news.
    failover.start("tertiary", TIMEOUTS, 0.0)
    broken = status(502)
    after = failover.ended(StreamEnd(broken), 0.0)
    assert after.verdict == "give_up"  # continuation_attempts reached
    assert after.end is not None and after.end.error is broken


def test_commit_point_rules_bypass_max_attempts_and_the_budget() -> None:
    """After the commit, only continuation_attempts bounds the attempts."""
    progress = StreamProgress()
    failover = plan(RetryPolicy(max_attempts=1, budget=1), progress)
    cut = committed_then(failover, progress, ROLE, chunk(content="a"))
    assert failover.ended(cut, 50.0).verdict == "continue"
    assert failover.next_attempt(50.0) == CONTINUATION


# ------------------------------------------------------------------ the retry budget


def budgeted(policy: RetryPolicy = POLICY, progress: StreamProgress | None = None,
             **budgets: RetryBudget) -> FailOver:
    return FailOver(request(), policy, progress or StreamProgress(), random.Random(7),
                    started=0.0, keep_text=True, budgets=budgets)


def test_re_requests_are_charged_to_the_backend_that_failed() -> None:
    primary = RetryBudget(ratio=0.0, min_per_second=0.2, window=10)  # 2 re-requests
    secondary = RetryBudget(ratio=0.0, min_per_second=0.0, window=10)  # none
    steps, end = walk(budgeted(primary=primary, secondary=secondary), [status(500)])
    # The primary pays for its retry and its fail-over; the secondary can pay for nothing.
    assert verdicts(steps) == [("primary", "retry"), ("primary", "fail_over"),
                               ("secondary", "give_up")]
    assert end is not None and end.error is not None and end.error.status == 502
    assert primary.available(0.0) == 0


def test_a_spent_budget_says_so() -> None:
    failover = budgeted(primary=RetryBudget(ratio=0.0, min_per_second=0.0, window=10))
    failover.start("primary", TIMEOUTS, 0.0)
    after = failover.ended(StreamEnd(status(503)), 0.0)
    assert after.over and after.budget_exhausted
    assert after.end is not None and after.end.error is not None


def test_a_request_feeds_the_budget_of_its_first_backend_only() -> None:
    primary = RetryBudget(ratio=1.0, min_per_second=0.0, window=10)
    secondary = RetryBudget(ratio=1.0, min_per_second=0.0, window=10)
    failover = budgeted(primary=primary, secondary=secondary)
    failover.start("primary", TIMEOUTS, 0.0)
    assert failover.ended(StreamEnd(UpstreamTimeout("first_chunk", 1)), 0.0).verdict \
        == "fail_over"  # paid by the primary's own request
    failover.start("secondary", TIMEOUTS, 0.0)  # a re-request: it feeds nothing
    assert secondary.available(0.0) == 0
    assert failover.ended(StreamEnd(UpstreamTimeout("first_chunk", 1)), 0.0).budget_exhausted


def test_continuations_are_charged_too() -> None:
    progress = StreamProgress()
    failover = budgeted(progress=progress,
                        primary=RetryBudget(ratio=0.0, min_per_second=0.0, window=10))
    cut = committed_then(failover, progress, ROLE, chunk(content="Once "))
    after = failover.ended(cut, 0.0)
    assert after.budget_exhausted and after.end is not None and after.end.error is cut.error


# ------------------------------------------------- who may continue: the cut one, last


def test_the_cut_backend_may_continue_last_and_a_refusing_one_not_at_all() -> None:
    progress = StreamProgress()
    failover = plan(RetryPolicy(continuation_attempts=3), progress)
    cut = committed_then(failover, progress, ROLE, chunk(content="Once "))
    assert failover.ended(cut, 0.0).verdict == "continue"
    assert failover.excluded == {"primary"} and failover.last_resort == {"primary"}
    refusal = failover.start("secondary", TIMEOUTS, 0.0)
    assert refused_prefill(refusal.request, status(400))
    assert not refused_prefill(request(), status(400))  # not a continuation: not a refusal
    assert not refused_prefill(refusal.request, status(503))  # a failure, not a refusal
    after = failover.ended(StreamEnd(status(400)), 0.0)
    assert after.verdict == "continue"
    assert failover.last_resort == {"primary"} and "secondary" in failover.excluded
    failover.start("primary", TIMEOUTS, 0.0)
    again = failover.ended(StreamEnd(StreamCut("cut", detail="again")), 0.0)
    assert again.verdict == "continue" and failover.last_resort == set()  # cut twice: out


# ------------------------------------------------------------------ context fallback


def too_long(message: str = "no", code: str | None = "context_length_exceeded") -> SluiceError:
    body = orjson.dumps({"error": {"message": message, "code": code}})
    return status_error(400, body, None, secrets=())


def test_a_request_too_long_goes_to_each_fallback_model_once() -> None:
    failover = FailOver(request(), POLICY, StreamProgress(), random.Random(7), started=0.0,
                        keep_text=False, fallback_models=("m", "long", "longer", "long"))
    failover.start("primary", TIMEOUTS, 0.0)
    assert failover.ended(StreamEnd(too_long()), 0.0).verdict == "fall_back"
    assert failover.model == "long" and failover.excluded == set()
    attempt = failover.start("primary", TIMEOUTS, 0.0)  # the same backend may serve it
    assert attempt.request.model == "long" and attempt.request.body["model"] == "long"
    assert attempt.request.body["messages"] == request().body["messages"]
    assert failover.ended(StreamEnd(too_long("maximum context length is 4096 tokens", None)),
                          0.0).verdict == "fall_back"
    assert failover.model == "longer"
    failover.start("primary", TIMEOUTS, 0.0)
    after = failover.ended(StreamEnd(too_long()), 0.0)  # no model left ("m" is the request's)
    assert after.verdict == "give_up"


def test_without_a_fallback_model_a_request_too_long_is_relayed() -> None:
    steps, end = walk(plan(), [too_long()])
    assert verdicts(steps) == [("primary", "give_up")]
    assert end is not None and end.error is not None and end.error.status == 400
