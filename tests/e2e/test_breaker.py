"""End-to-end: a circuit breaker that routes around a failing backend and never is the outage.

The common deployment has one model server per model. Its circuit opens
after `consecutive_failures` failures, and with nowhere else to go Sluice
routes to it anyway (panic routing): the first request after the server
recovered is served, not refused for the rest of a 30-second cooldown. With
a healthy fallback, an open primary is still skipped.
"""

from __future__ import annotations

import dataclasses

import httpx
import pytest
import trio

from server.config import BreakerSettings, Settings
from server.testing.fake_upstream import FakeUpstream, Scenario
from tests.conftest import PROMPTLY, RunningSluice, running_sluice, settings_for
from tests.e2e.test_failover import TEN, stream, two_tier

# Far longer than any test here: whatever recovers does so without waiting for it.
COOLDOWN = 30.0
FIVE = "".join(f"t{i} " for i in range(5))


def one_backend(upstream: FakeUpstream, consecutive_failures: int = 5) -> Settings:
    """The upstream fixture as the only backend, with the default 30-second cooldown."""
    return dataclasses.replace(settings_for(upstream.base_url), breaker=BreakerSettings(
        consecutive_failures=consecutive_failures, cooldown=COOLDOWN))


def circuit(sluice: RunningSluice, backend: str = "fake") -> float:
    return sluice.sample("sluice_backend_circuit_state", backend=backend)


def panic_routes(sluice: RunningSluice, backend: str = "fake") -> float:
    return sluice.sample("sluice_breaker_panic_routes_total", backend=backend)


async def test_a_lone_backend_that_failed_ten_times_serves_the_very_next_request(
    upstream: FakeUpstream,
) -> None:
    upstream.script.extend(Scenario(status=503) for _ in range(10))  # restarting
    async with running_sluice(one_backend(upstream)) as sluice:
        statuses: list[int] = []
        while len(upstream.requests) < 10 and len(statuses) < 10:
            statuses.append((await stream(sluice)).status)
        # Every client meanwhile read the upstream's own failure (502), never a
        # breaker-made "no backend available" (503): the upstream was always asked.
        assert set(statuses) == {502}
        assert circuit(sluice) == 2  # open
        assert sluice.sample("sluice_breaker_transitions_total", backend="fake",
                             state="open") == 1
        assert panic_routes(sluice) > 0

        got = await stream(sluice)  # the server is up again: served at once
        assert got.status == 200 and got.content == FIVE and got.done and not got.errors
        assert len(upstream.requests) == 11
        assert circuit(sluice) == 0  # the panic-routed success closed it
        assert sluice.sample("sluice_breaker_transitions_total", backend="fake",
                             state="closed") == 1
        routed = panic_routes(sluice)
        assert (await stream(sluice)).done
        assert panic_routes(sluice) == routed  # closed: an ordinary route again


async def test_an_open_primary_is_still_skipped_while_the_fallback_is_healthy(
    upstream: FakeUpstream, nursery: trio.Nursery,
) -> None:
    primary, fallback = upstream, FakeUpstream(Scenario(tokens=10))
    await nursery.start(fallback.serve, 0)
    primary.scenario = Scenario(status=503)
    settings = two_tier(primary, fallback,
                        breaker={"consecutive_failures": 2, "cooldown": COOLDOWN})
    async with running_sluice(settings) as sluice:
        got = await stream(sluice)  # two failures on the primary: its circuit opens
        assert got.content == TEN and got.done
        assert circuit(sluice, "primary") == 2
        primary.scenario = Scenario(tokens=5)  # it recovers, but its cooldown runs on
        for _ in range(3):
            assert (await stream(sluice)).done
        assert len(primary.requests) == 2
        assert len(fallback.requests) == 4
        assert panic_routes(sluice, "primary") == panic_routes(sluice, "fallback") == 0
        assert circuit(sluice, "primary") == 2


@pytest.mark.parametrize(("fault", "counts"), [
    (Scenario(status=400, error_code="context_length_exceeded"), False),
    (Scenario(status=400, error_code="content_filter",
              error_message="The prompt was filtered by the content policy."), False),
    (Scenario(status=429, retry_after=0), True),
])
async def test_what_counts_against_a_lone_backend(
    upstream: FakeUpstream, fault: Scenario, counts: bool,
) -> None:
    upstream.scenario = fault
    async with running_sluice(one_backend(upstream, consecutive_failures=2)) as sluice:
        for _ in range(3):
            got = await stream(sluice)
            assert got.status == fault.status  # relayed as the upstream said, never a 503
        assert circuit(sluice) == (2 if counts else 0)


async def test_clients_that_leave_do_not_count_against_the_backend(
    upstream: FakeUpstream,
) -> None:
    upstream.scenario = Scenario(tokens=5, first_delay=30)
    async with running_sluice(one_backend(upstream, consecutive_failures=2)) as sluice:
        for left in range(1, 4):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(stream, sluice)
                with trio.fail_after(PROMPTLY):
                    await upstream.wait_for_request(left)
                nursery.cancel_scope.cancel("the client leaves")
            await sluice.settle()
        assert sluice.sample("sluice_upstream_requests_total", backend="fake",
                             outcome="cancelled") == 3
        assert circuit(sluice) == 0
        upstream.scenario = Scenario(tokens=5)
        got = await stream(sluice)
        assert got.content == FIVE and got.done


async def test_the_panic_counter_is_exported(upstream: FakeUpstream) -> None:
    async with running_sluice(one_backend(upstream)) as sluice, httpx.AsyncClient() as client:
        text = (await client.get(sluice.base_url + "/metrics")).text
    assert 'sluice_breaker_panic_routes_total{backend="fake"} 0.0' in text
