"""A request's way through its backends: after each attempt, what comes next.

`FailOver` is the per-request half of the stream's decisions (`Attempt` is
the per-attempt half); `server.stream.pump` drives it with I/O. Pure: it
never sleeps, reserves or reads a clock; the caller passes the time.

    plan = FailOver(request, policy, progress, rng, started=now, keep_text=...)
    while not isinstance(step := plan.next_attempt(now), StreamEnd):
        ... reserve a route (step.prefer: the route to retry on; step.continues) ...
        attempt = plan.start(route.name, route_timeouts, now)     # or plan.unreserved(error)
        ... relay it ...
        after = plan.ended(end, now)
        if after.over: return after.end
        ... sleep after.delay ...

Before the commit point (`StreamProgress.committed`) a failure is invisible
to the client: `server.limits.retry_policy.decide` chooses between a retry
on the same backend after a delay, a fail-over to the next one, and giving
up — the README's fail-over table. Attempts are bounded by ``max_attempts``
and the time until the commit point by ``budget``; the first-chunk timer of
an attempt never runs past the budget. After the commit point a failure
ends the stream with its error, unless it may be continued
(`server.stream.continuation`) on a backend that can: the continuation is
then the next attempt. A continuation that itself fails with an error that
does not count against its backend (a 400 "prefill not supported") is not
what the client reads: the cut it tried to repair is.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Literal

from server.api.chat_completions import ChatRequest
from server.config import RetryPolicy, Timeouts
from server.errors import NoBackendAvailable, SluiceError
from server.limits.retry_policy import counts_against_backend, decide
from server.stream.attempt import Attempt
from server.stream.channel import StreamEnd
from server.stream.continuation import continued, may_continue
from server.stream.progress import StreamProgress

Verdict = Literal["complete", "give_up", "retry", "fail_over", "continue"]


@dataclass(frozen=True, slots=True)
class NextAttempt:
    """Where the next attempt may go."""

    prefer: str | None = None  # a retry: this backend again, if its breaker still allows it
    continues: bool = False  # a continuation: only backends that can continue, no waiting


@dataclass(frozen=True, slots=True)
class AfterAttempt:
    """The verdict on an attempt that ended."""

    verdict: Verdict
    end: StreamEnd | None = None  # when over: how the stream ends (None: its end was sent)
    delay: float = 0.0  # a retry: seconds to wait before it

    @property
    def over(self) -> bool:
        return self.verdict in ("complete", "give_up")


FRESH = NextAttempt()
CONTINUATION = NextAttempt(continues=True)
_FAIL_OVER = AfterAttempt("fail_over")
_CONTINUE = AfterAttempt("continue")


class FailOver:
    """One request's attempts: which comes next, and when to stop."""

    def __init__(self, request: ChatRequest, policy: RetryPolicy, progress: StreamProgress,
                 rng: random.Random, *, started: float, keep_text: bool) -> None:
        self.excluded: set[str] = set()  # backends that failed this request
        self._request = request
        self._policy = policy
        self._progress = progress
        self._rng = rng
        self._keep_text = keep_text
        self._budget_ends = started + policy.budget
        self._backend: str | None = None  # of the current (or last) attempt
        self._retry_on: str | None = None  # the backend a retry should go to
        self._retries_here = 0
        self._last_error: SluiceError | None = None

    def next_attempt(self, now: float) -> NextAttempt | StreamEnd:
        """The next attempt's terms, or how the stream ends because none may be made."""
        if self._progress.committed:
            return CONTINUATION  # `ended` allowed it
        if self._progress.attempts >= self._policy.max_attempts or now >= self._budget_ends:
            return StreamEnd(self._last_error or _exhausted())
        if self._retry_on is None:
            return FRESH
        return NextAttempt(prefer=self._retry_on)

    def unreserved(self, error: SluiceError) -> StreamEnd:
        """No backend could be reserved for the next attempt (``error`` says why)."""
        return StreamEnd(self._last_error or error)

    def start(self, backend: str, timeouts: Timeouts, now: float) -> Attempt:
        """The attempt about to be sent to ``backend``."""
        progress = self._progress
        if backend != self._retry_on:
            if self._retry_on is not None:
                self.excluded.add(self._retry_on)  # it tripped before its retry: it is out
            self._retry_on, self._retries_here = None, 0
        self._backend = backend
        progress.attempts += 1
        continuing = progress.committed
        if continuing:
            progress.continuations += 1
            progress.prefill_chunks = progress.content_chunks
            request = continued(self._request, progress)
            first_chunk = timeouts.first_chunk
        else:
            request = self._request
            first_chunk = min(timeouts.first_chunk, max(0.0, self._budget_ends - now))
        return Attempt(request, progress, backend, started=now, first_chunk=first_chunk,
                       idle=timeouts.idle, continuing=continuing, keep_text=self._keep_text)

    def ended(self, end: StreamEnd | None, now: float) -> AfterAttempt:
        """The attempt ended with ``end`` (None: complete, its end already sent)."""
        if end is None or end.error is None:
            return AfterAttempt("complete", end)
        error = end.error
        assert self._backend is not None, "an attempt ended that never started"
        if self._progress.committed:
            if self._last_error is None or counts_against_backend(error):
                self._last_error = error
            self.excluded.add(self._backend)
            self._retry_on = None
            if not may_continue(self._progress, self._policy):
                return AfterAttempt("give_up", StreamEnd(self._last_error))
            return _CONTINUE
        self._last_error = error
        decision = decide(error, self._retries_here, self._policy, self._rng)
        if decision.action == "give_up":
            return AfterAttempt("give_up", end)
        if decision.action == "retry":
            self._retries_here += 1
            self._retry_on = self._backend
            delay = min(decision.delay, max(0.0, self._budget_ends - now))
            return AfterAttempt("retry", delay=delay)
        self.excluded.add(self._backend)
        self._retry_on = None
        return _FAIL_OVER


def _exhausted() -> NoBackendAvailable:
    error = NoBackendAvailable("No backend is available for this model right now.")
    error.retry_after = 1.0
    return error
