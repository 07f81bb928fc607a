"""The pure parts of hedging: when a hedge is due, which attempt commits, what the plan hears."""

from __future__ import annotations

import random

import pytest

from server.backends.simulated import SimulatedBackend
from server.config import BackendSettings, BreakerSettings, ModelSettings, RetryPolicy
from server.errors import UpstreamUnavailable
from server.limits.routing import make_routes
from server.stream.attempt import LOST, Attempt
from server.stream.channel import StreamEnd
from server.stream.fail_over import FailOver
from server.stream.progress import StreamProgress
from server.stream.pump import AUTO_HEDGE_MIN_SAMPLES, hedge_delay
from tests.stream.test_fail_over import ROLE, TIMEOUTS, chunk, request


def test_a_hedge_is_due_after_the_configured_seconds_or_the_p95() -> None:
    r = make_routes([SimulatedBackend(BackendSettings(name="a", kind="simulated",
                                                      models=("*",)))], BreakerSettings())[0]
    assert hedge_delay(ModelSettings(), r) is None  # not configured: never
    assert hedge_delay(ModelSettings(hedge_after=2.0), r) == 2.0
    auto = ModelSettings(hedge_after="auto")
    for i in range(AUTO_HEDGE_MIN_SAMPLES - 1):
        r.first_token.add(0.1 * (i + 1))
    assert hedge_delay(auto, r) is None  # too few first tokens seen to trust a p95
    r.first_token.add(5.0)
    assert hedge_delay(auto, r) == 5.0  # nearest rank of 10: the slowest
    for _ in range(40):
        r.first_token.add(0.5)
    assert hedge_delay(auto, r) == pytest.approx(0.8)  # 50 samples, sorted: the 48th


def test_only_the_first_attempt_to_commit_sends() -> None:
    progress = StreamProgress()
    failover = FailOver(request(), RetryPolicy(), progress, random.Random(1), started=0.0,
                        keep_text=False)
    first = failover.start("primary", TIMEOUTS, 0.0)
    assert failover.may_hedge(2.0)
    hedge = failover.start_hedge("secondary", TIMEOUTS, 2.0)
    assert progress.attempts == 2
    assert hedge.feed(ROLE, 2.1).name == "HOLD"  # a role-only delta is not content
    assert hedge.feed(chunk(content="Hi"), 2.2).flushes  # the commit point: it wins
    first.lost = True  # what the race does to the other attempt, there and then
    assert first.feed(chunk(content="Hello"), 2.3) is LOST  # read already, never sent
    assert first.wasted == 1
    assert progress.served_by == "secondary"
    assert not failover.may_hedge(2.4)  # committed: nothing more to race


def test_a_racer_that_fails_is_out_and_the_other_decides() -> None:
    progress = StreamProgress()
    failover = FailOver(request(), RetryPolicy(), progress, random.Random(1), started=0.0,
                        keep_text=False)
    failover.start("primary", TIMEOUTS, 0.0)
    hedge = failover.start_hedge("secondary", TIMEOUTS, 1.0)
    hedge.feed(ROLE, 1.1)
    error = UpstreamUnavailable("broken")
    failover.failed_in_race("secondary", StreamEnd(error))
    assert failover.excluded == {"secondary"}
    assert not failover.may_hedge(1.5)  # one hedge per request, whatever follows
    # The primary then completes: the stream completes.
    assert failover.ended(None, 3.0, backend="primary").verdict == "complete"


def test_hedges_are_bounded_by_max_attempts() -> None:
    failover = FailOver(request(), RetryPolicy(max_attempts=1), StreamProgress(),
                        random.Random(1), started=0.0, keep_text=False)
    failover.start("primary", TIMEOUTS, 0.0)
    assert not failover.may_hedge(1.0)


def test_an_attempt_knows_when_it_started() -> None:
    attempt = Attempt(request(), StreamProgress(), "a", started=3.0, first_chunk=1, idle=1,
                      continuing=False, keep_text=False)
    assert attempt.started == 3.0 and not attempt.lost
