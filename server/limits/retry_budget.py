"""A retry budget: re-requests at most a share of recent requests, per backend.

Retries, fail-overs and continuations multiply load exactly when a backend
is failing: with four attempts per request, a full outage turns every client
request into four upstream ones. A budget bounds that, as Envoy's and
Finagle's retry budgets do: over the last ``window`` seconds, the re-requests
charged to a backend may be at most ``ratio`` of the requests it received,
plus a small allowance of ``min_per_second`` (so a quiet deployment can still
retry its rare failure).

    budget = RetryBudget(ratio=0.2, min_per_second=1.0, window=10.0)
    budget.deposit(now)             # a request's first attempt went to this backend
    if budget.withdraw(now): ...    # this backend failed it: may the request try again?

A re-request is charged to the backend whose failure caused it, so a
backend's failures can cost at most its own share. Pure: the caller passes
the time; the two deques hold one timestamp per event of the last window, so
memory is bounded by the traffic of one window.

The same arithmetic caps hedging (`server.stream.pump`): a hedge is a
re-request made before the first one failed.
"""

from __future__ import annotations

from collections import deque


class RetryBudget:
    """Re-requests allowed over a sliding window: ``ratio`` of requests, plus a floor."""

    __slots__ = ("_allowance", "_ratio", "_requests", "_spent", "_window")

    def __init__(self, *, ratio: float, min_per_second: float, window: float) -> None:
        self._ratio = ratio
        self._allowance = min_per_second * window  # the floor, over one window
        self._window = window
        self._requests: deque[float] = deque()
        self._spent: deque[float] = deque()

    def deposit(self, now: float) -> None:
        """A request was sent to this backend (its first attempt, not a re-request)."""
        self._requests.append(now)

    def available(self, now: float) -> float:
        """Re-requests that may still be made now."""
        self._expire(now)
        return self._ratio * len(self._requests) + self._allowance - len(self._spent)

    def withdraw(self, now: float) -> bool:
        """Charge one re-request if the budget allows it; False (nothing charged) if not."""
        if self.available(now) < 1:
            return False
        self._spent.append(now)
        return True

    def _expire(self, now: float) -> None:
        horizon = now - self._window
        for events in (self._requests, self._spent):
            while events and events[0] <= horizon:
                events.popleft()
