"""Hedging the first token: a second attempt raced against a slow first one.

A model with ``hedge_after`` (seconds, or ``"auto"``: the backend's recent
first-token p95) runs its first attempt as a race. If the attempt has
produced no content when the hedge is due, a second attempt of the same
request starts on the next usable backend, in the same stream's nursery:

    backend, end = await race(plan, reservation, attempt, delay, reserve_hedge, metrics, run)

* the first attempt to **commit** (`server.stream.attempt`: its first
  content-bearing chunk — a role-only delta, a keepalive or an error frame
  is not content) wins; the other is marked lost and its cancel scope
  cancelled there and then, which closes its upstream connection;
* a loser is neither a success nor a failure: cancelled attempts record
  nothing in the breaker (`server.stream.pump`) and only a committed
  attempt feeds the latency statistics;
* a racer that *fails* before any content leaves the race to the other
  (`FailOver.failed_in_race`); when both fail, the plan decides about the
  last one as about any failed attempt (retry, fail over, give up);
* at most one extra attempt per request, only while the plan allows
  another attempt, and only within the first backend's hedge budget
  (``retry.hedge_share`` of its recent requests), so a backend that is slow
  because it is overloaded is not hit twice as hard.

The race returns the backend of the attempt that decides the stream and
how it ended, for `FailOver.ended`.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack

import trio

from server.limits.reservation import Reservation
from server.metrics import Metrics
from server.stream.attempt import Attempt
from server.stream.channel import StreamEnd
from server.stream.fail_over import FailOver

log = logging.getLogger("sluice.hedge")

RunAttempt = Callable[[Reservation, Attempt, Callable[[], None]], Awaitable[StreamEnd | None]]
ReserveHedge = Callable[[set[str]], AbstractAsyncContextManager[Reservation | None]]


class _Racer:
    """One attempt of the race, in its own cancel scope."""

    def __init__(self, race: _Race, reservation: Reservation, attempt: Attempt) -> None:
        self.race = race
        self.reservation = reservation
        self.attempt = attempt
        self.scope = trio.CancelScope()
        self.done = False

    async def run(self, run_attempt: RunAttempt) -> None:
        try:
            with self.scope:
                end = await run_attempt(self.reservation, self.attempt, self.committed)
                self.race.ended(self, end)
        finally:
            self.done = True
            self.race.settled.set()

    def committed(self) -> None:
        self.race.committed(self)


class _Race:
    """Who is racing, who won, and what decides the stream."""

    def __init__(self, plan: FailOver, metrics: Metrics) -> None:
        self.plan = plan
        self.metrics = metrics
        self.racers: list[_Racer] = []
        self.winner: _Racer | None = None
        self.result: tuple[str, StreamEnd | None] | None = None
        self.settled = trio.Event()  # the first attempt committed or ended

    def committed(self, racer: _Racer) -> None:
        """``racer`` committed first: the others lose, at once."""
        self.winner = racer
        self.settled.set()
        for other in self.racers:
            if other is not racer and not other.done:
                other.attempt.lost = True
                other.scope.cancel("another attempt of this request answered first")
        if racer is not self.racers[0]:
            self.metrics.hedges_won.inc()

    def ended(self, racer: _Racer, end: StreamEnd | None) -> None:
        racer.done = True
        if racer is self.winner or all(r.done for r in self.racers):
            self.result = racer.attempt.backend, end
        else:  # it failed before any content; the other attempt runs on
            self.plan.failed_in_race(racer.attempt.backend, end or StreamEnd())


async def race(plan: FailOver, reservation: Reservation, attempt: Attempt, delay: float,
               reserve_hedge: ReserveHedge, metrics: Metrics,
               run_attempt: RunAttempt) -> tuple[str, StreamEnd | None]:
    """Run ``attempt``; hedge it after ``delay`` seconds without content. See the module doc.

    ``reserve_hedge(excluded)`` reserves a route for the hedge, without waiting.
    """
    contest = _Race(plan, metrics)
    first = reservation.route
    first.hedge_budget.deposit(trio.current_time())
    # The hedge's reservation is entered into `held`, left after the nursery: after its task.
    async with AsyncExitStack() as held, trio.open_nursery() as nursery:
        leader = _Racer(contest, reservation, attempt)
        contest.racers.append(leader)
        nursery.start_soon(leader.run, run_attempt)
        with trio.move_on_after(delay):
            await contest.settled.wait()
        now = trio.current_time()
        if (not contest.settled.is_set() and plan.may_hedge(now)
                and first.hedge_budget.withdraw(now)):
            second = await held.enter_async_context(reserve_hedge(plan.excluded | {first.name}))
            if second is not None and not contest.settled.is_set():
                hedge = plan.start_hedge(second.route.name,
                                         second.route.backend.settings.timeouts,
                                         trio.current_time())
                contest.racers.append(_Racer(contest, second, hedge))
                metrics.hedges_started.inc()
                log.info("no first token from %s after %.2f s: hedging on %s",
                         first.name, delay, second.route.name)
                nursery.start_soon(contest.racers[-1].run, run_attempt)
    wasted = sum(r.attempt.wasted for r in contest.racers if r is not contest.winner)
    if wasted:
        metrics.hedge_wasted_payloads.inc(wasted)
    assert contest.result is not None, "a race ended with no attempt deciding it"
    return contest.result
