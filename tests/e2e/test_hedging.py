"""End-to-end: hedging a slow first token.

``fake-model`` has ``hedge_after``: when its first attempt (the primary) has
sent no content by then, a second attempt goes to the fallback; the first
content-bearing delta wins and the other attempt is cancelled, its upstream
connection closed. A role-only delta or an error frame is not content. The
loser counts neither as a success nor as a failure: with
``consecutive_failures = 1`` one failure recorded would open its circuit.

Timing bounds are generous (the machine is shared) and named; none asserts speed.
"""

from __future__ import annotations

from typing import Any

import httpx
import trio

from server.gateway import Gateway
from server.testing.fake_upstream import FakeUpstream, Scenario
from tests.conftest import PROMPTLY, RunningSluice, chat_body, running_sluice
from tests.e2e.test_failover import TEN, URL, stream, two_tier
from tests.e2e.test_failover import fallback as fallback
from tests.e2e.test_failover import primary as primary
from tests.sse_client import Received

SLOW_FIRST_TOKEN = 20.0  # the primary's, in the scenario
HEDGE_AFTER = 2.0
# From "hedge due" to the client's first content: the fallback's own (instant) first token
# plus scheduling on a loaded machine. Generous; far below SLOW_FIRST_TOKEN.
HEDGE_SLACK = 3.0
# How soon after the race is decided the loser's upstream connection must be closed.
LOSER_CLOSED = 1.0


def settings(primary: FakeUpstream, fallback: FakeUpstream, hedge_after: float,
             **retry: float) -> Any:
    return two_tier(primary, fallback, timeouts={"first_chunk": 60, "idle": 60},
                    breaker={"consecutive_failures": 1}, retry=retry,
                    models={"fake-model": {"hedge_after": hedge_after}})


def first_content_at(got: Received) -> float:
    return next(at for event, at in zip(got.events, got.arrivals, strict=True)
                if b'"content":"t' in event)


def routes(sluice: RunningSluice) -> dict[str, Any]:
    gateway: Gateway = sluice.app.extensions["sluice.gateway"]
    return {r.name: r for r in gateway.routes}


async def test_a_slow_first_token_is_hedged_and_the_loser_closed(
    primary: FakeUpstream, fallback: FakeUpstream
) -> None:
    primary.scenario = Scenario(tokens=10, first_delay=SLOW_FIRST_TOKEN)
    async with running_sluice(settings(primary, fallback, HEDGE_AFTER)) as sluice:
        started = trio.current_time()
        got = await stream(sluice)
        assert got.content == TEN and got.done and not got.errors
        wait = first_content_at(got) - started
        assert HEDGE_AFTER <= wait < HEDGE_AFTER + HEDGE_SLACK
        # The primary's connection was closed by the gateway, from the upstream's side seen.
        with trio.fail_after(PROMPTLY):
            await primary.wait_all_closed()
        closed_at = primary.connections[0].closed_at
        assert closed_at is not None and closed_at - first_content_at(got) < LOSER_CLOSED
        await sluice.settle()
        assert sluice.sample("sluice_hedges_started_total") == 1
        assert sluice.sample("sluice_hedges_won_total") == 1
        # The loser is neither a success nor a failure: nothing in breaker or statistics.
        assert sluice.sample("sluice_upstream_requests_total", backend="primary",
                             outcome="cancelled") == 1
        assert sluice.sample("sluice_backend_circuit_state", backend="primary") == 0
        assert routes(sluice)["primary"].first_token.samples == 0
        assert routes(sluice)["fallback"].first_token.samples == 1
        assert sluice.sample("sluice_backend_in_flight", backend="primary") == 0


async def test_a_primary_that_answers_after_the_hedge_started_cancels_the_hedge(
    primary: FakeUpstream, fallback: FakeUpstream
) -> None:
    primary.scenario = Scenario(tokens=10, first_delay=1.0)
    fallback.scenario = Scenario(tokens=10, first_delay=SLOW_FIRST_TOKEN)  # role at once
    async with running_sluice(settings(primary, fallback, 0.3)) as sluice:
        got = await stream(sluice)
        assert got.content == TEN and got.done and not got.errors
        with trio.fail_after(PROMPTLY):
            await fallback.wait_all_closed()
        assert len(fallback.requests) == 1  # the hedge did start
        await sluice.settle()
        assert sluice.sample("sluice_hedges_started_total") == 1
        assert sluice.sample("sluice_hedges_won_total") == 0
        assert sluice.sample("sluice_upstream_requests_total", backend="fallback",
                             outcome="cancelled") == 1
        assert sluice.sample("sluice_backend_circuit_state", backend="fallback") == 0
        assert routes(sluice)["primary"].first_token.samples == 1


async def test_an_error_frame_from_the_hedge_does_not_win(
    primary: FakeUpstream, fallback: FakeUpstream
) -> None:
    primary.scenario = Scenario(tokens=10, first_delay=1.0)
    fallback.scenario = Scenario(tokens=10, error_event_after=0)  # role, then an error
    async with running_sluice(settings(primary, fallback, 0.3)) as sluice:
        got = await stream(sluice)
        assert got.content == TEN and got.done and not got.errors
        await sluice.settle()
        assert sluice.sample("sluice_hedges_started_total") == 1
        assert sluice.sample("sluice_hedges_won_total") == 0
        # The hedge failed on its own: that is a failure of its backend.
        assert sluice.sample("sluice_upstream_requests_total", backend="fallback",
                             outcome="upstream_error") == 1
        assert sluice.sample("sluice_upstream_requests_total", backend="primary",
                             outcome="completed") == 1


async def test_a_fast_first_token_is_not_hedged(
    primary: FakeUpstream, fallback: FakeUpstream
) -> None:
    async with running_sluice(settings(primary, fallback, HEDGE_AFTER)) as sluice:
        got = await stream(sluice)
        assert got.content == TEN and got.done
        assert fallback.requests == []
        assert sluice.sample("sluice_hedges_started_total") == 0


async def test_hedges_stay_within_their_share(
    primary: FakeUpstream, fallback: FakeUpstream
) -> None:
    primary.scenario = Scenario(tokens=10, first_delay=0.6)
    # A share of 0.5 of the primary's requests and no floor: one hedge in two requests.
    limited = settings(primary, fallback, 0.2, hedge_share=0.5, budget_min_per_second=0)
    async with running_sluice(limited) as sluice:
        for _ in range(4):
            got = await stream(sluice)
            assert got.content == TEN and got.done
        assert sluice.sample("sluice_hedges_started_total") == 2
        assert len(fallback.requests) == 2


async def test_a_client_leaving_mid_race_closes_both_attempts(
    primary: FakeUpstream, fallback: FakeUpstream
) -> None:
    primary.scenario = fallback.scenario = Scenario(tokens=10, first_delay=SLOW_FIRST_TOKEN)
    async with running_sluice(settings(primary, fallback, 0.2)) as sluice:
        async with httpx.AsyncClient(timeout=10) as client:
            with trio.move_on_after(1.0):  # the hedge starts at 0.2 s; then the client leaves
                await client.post(sluice.base_url + URL, json=chat_body())
        assert len(fallback.requests) == 1
        with trio.fail_after(PROMPTLY):
            await primary.wait_all_closed()
            await fallback.wait_all_closed()
        await sluice.settle()
        for name in ("primary", "fallback"):
            assert sluice.sample("sluice_backend_in_flight", backend=name) == 0
            assert sluice.sample("sluice_upstream_requests_total", backend=name,
                                 outcome="cancelled") == 1
        assert sluice.sample("sluice_admission_slots_used") == 0
