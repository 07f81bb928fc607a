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
what the client reads: the cut it tried to repair is. The backend that was cut
stays a candidate for the continuation, last (``last_resort``: a cut is
often transient); one that refused to continue is not asked again.

Three more rules bound and redirect the attempts:

* **the retry budget** (`server.limits.retry_budget`): every re-request — a
  retry, a fail-over, a continuation — is charged to the backend whose
  failure caused it; when its budget is spent, the request gives up with
  the error it has (``AfterAttempt.budget_exhausted``);
* **context fallback**: a ``context_length_exceeded`` before the commit
  point sends the unchanged request to the next model of
  ``fallback_models`` (``plan.model`` names it; verdict ``fall_back``),
  never to a model that already refused it;
* **a hedge** (`start_hedge`): a second attempt raced against the first
  before the commit point; the pump runs the race, tells the plan of a
  racer that failed (`failed_in_race`) and passes the backend of the
  attempt that decides to `ended`.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Literal

from server.api.chat_completions import ChatRequest
from server.config import RetryPolicy, Timeouts
from server.errors import NoBackendAvailable, SluiceError
from server.limits.retry_budget import RetryBudget
from server.limits.retry_policy import counts_against_backend, decide, exceeds_context
from server.stream.attempt import Attempt
from server.stream.channel import StreamEnd
from server.stream.continuation import continued, may_continue
from server.stream.progress import StreamProgress

Verdict = Literal["complete", "give_up", "retry", "fail_over", "continue", "fall_back"]


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
    budget_exhausted: bool = False  # gave up because the retry budget allowed no more

    @property
    def over(self) -> bool:
        return self.verdict in ("complete", "give_up")


FRESH = NextAttempt()
CONTINUATION = NextAttempt(continues=True)
_FAIL_OVER = AfterAttempt("fail_over")
_CONTINUE = AfterAttempt("continue")
_FALL_BACK = AfterAttempt("fall_back")


class FailOver:
    """One request's attempts: which comes next, and when to stop."""

    def __init__(self, request: ChatRequest, policy: RetryPolicy, progress: StreamProgress,
                 rng: random.Random, *, started: float, keep_text: bool,
                 budgets: Mapping[str, RetryBudget] | None = None,
                 fallback_models: Sequence[str] = ()) -> None:
        self.excluded: set[str] = set()  # backends that failed this request
        self.last_resort: set[str] = set()  # excluded, but may continue a cut they made, last
        self.model = request.model  # whose routes the next attempt uses
        self.hedged = False  # a hedge was started (`start_hedge`)
        self._request = request
        self._budgets = budgets or {}
        self._fallbacks = [m for m in dict.fromkeys(fallback_models) if m != request.model]
        self._fresh = True  # the next attempt is a request's first: it feeds the budget
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
        if self._fresh:
            self._fresh = False
            budget = self._budgets.get(backend)
            if budget is not None:
                budget.deposit(now)
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

    def may_hedge(self, now: float) -> bool:
        """May a second attempt race the one running (before the commit point)?"""
        return (not self.hedged and not self._progress.committed and now < self._budget_ends
                and self._progress.attempts < self._policy.max_attempts)

    def start_hedge(self, backend: str, timeouts: Timeouts, now: float) -> Attempt:
        """A second attempt of the same request on ``backend``, raced against the running one."""
        self.hedged = True  # at most one per request, whatever retries follow
        self._progress.attempts += 1
        first_chunk = min(timeouts.first_chunk, max(0.0, self._budget_ends - now))
        return Attempt(self._request, self._progress, backend, started=now,
                       first_chunk=first_chunk, idle=timeouts.idle, continuing=False,
                       keep_text=self._keep_text, hedge=True)

    def failed_in_race(self, backend: str, end: StreamEnd) -> None:
        """One racer failed before any content while the other runs on: it is out."""
        if end.error is not None:
            self._last_error = end.error
        self.excluded.add(backend)
        if self._retry_on == backend:
            self._retry_on = None

    def ended(self, end: StreamEnd | None, now: float, *,
              backend: str | None = None) -> AfterAttempt:
        """The attempt ended with ``end`` (None: complete, its end already sent).

        ``backend``: the attempt's, when it was not the last one started (a hedge race).
        """
        if backend is not None:
            self._backend = backend
        if end is None or end.error is None:
            return AfterAttempt("complete", end)
        error = end.error
        assert self._backend is not None, "an attempt ended that never started"
        failed = self._backend
        if self._progress.committed:
            if self._last_error is None or counts_against_backend(error):
                self._last_error = error
            self.excluded.add(failed)
            self._retry_on = None
            if counts_against_backend(error) and failed not in self.last_resort:
                self.last_resort.add(failed)  # cut: it may continue its own answer, last
            else:
                self.last_resort.discard(failed)  # refused to continue, or cut twice
            if not may_continue(self._progress, self._policy):
                return AfterAttempt("give_up", StreamEnd(self._last_error))
            return self._charge(failed, now, _CONTINUE)
        self._last_error = error
        if exceeds_context(error) and self._fallbacks:
            self.model = self._fallbacks.pop(0)  # the same request, a model with more room
            self._request = replace(self._request, model=self.model,
                                    body={**self._request.body, "model": self.model})
            self.excluded.clear()
            self._retry_on, self._retries_here, self._fresh = None, 0, True
            return _FALL_BACK
        decision = decide(error, self._retries_here, self._policy, self._rng)
        if decision.action == "give_up":
            return AfterAttempt("give_up", end)
        if decision.action == "retry":
            self._retries_here += 1
            self._retry_on = failed
            delay = min(decision.delay, max(0.0, self._budget_ends - now))
            return self._charge(failed, now, AfterAttempt("retry", delay=delay))
        self.excluded.add(failed)
        self._retry_on = None
        return self._charge(failed, now, _FAIL_OVER)

    def _charge(self, backend: str, now: float, after: AfterAttempt) -> AfterAttempt:
        """A re-request caused by ``backend``'s failure, if its retry budget allows one."""
        budget = self._budgets.get(backend)
        if budget is None or budget.withdraw(now):
            return after
        return AfterAttempt("give_up", StreamEnd(self._last_error), budget_exhausted=True)


def _exhausted() -> NoBackendAvailable:
    error = NoBackendAvailable("No backend is available for this model right now.")
    error.retry_after = 1.0
    return error
