"""End-to-end: the retry budget keeps a full outage from multiplying the load on it.

Every backend answers 500. Without a budget each request would cost
``max_attempts`` (4) upstream requests; with it, the re-requests are at most
``budget_ratio`` of the requests plus the floor — and every client still
gets a clear 502 at once.
"""

from __future__ import annotations

import httpx
import trio

from server.testing.fake_upstream import FakeUpstream, Scenario
from tests.conftest import chat_body, running_sluice
from tests.e2e.test_failover import URL, two_tier
from tests.e2e.test_failover import fallback as fallback
from tests.e2e.test_failover import primary as primary

CLIENTS = 20
RATIO = 0.2
FLOOR_PER_SECOND = 0.05
WINDOW = 60.0  # longer than the test: nothing leaves the window
# A failed request answers within this (generous: the machine is shared); there is no
# waiting in it but the backoff between retries (at most 0.05 s each here).
ERROR_BOUND = 5.0


async def test_a_full_outage_costs_at_most_the_budget(
    primary: FakeUpstream, fallback: FakeUpstream
) -> None:
    primary.scenario = fallback.scenario = Scenario(status=500)
    settings = two_tier(primary, fallback, retry={
        "budget_ratio": RATIO, "budget_min_per_second": FLOOR_PER_SECOND,
        "budget_window": WINDOW}, breaker={"consecutive_failures": 1000},
        timeouts={"first_chunk": ERROR_BOUND})  # the 500s, not the first-chunk timer, end it
    statuses: list[int] = []
    slowest = 0.0
    async with running_sluice(settings) as sluice, httpx.AsyncClient(timeout=30) as client:

        async def one() -> None:
            nonlocal slowest
            started = trio.current_time()
            response = await client.post(sluice.base_url + URL, json=chat_body(stream=True))
            slowest = max(slowest, trio.current_time() - started)
            statuses.append(response.status_code)
            assert response.json()["error"]["type"] == "upstream_error"

        async with trio.open_nursery() as nursery:
            for _ in range(CLIENTS):
                nursery.start_soon(one)
        exhausted = sluice.sample("sluice_retry_budget_exhausted_total")
    assert statuses == [502] * CLIENTS
    assert slowest < ERROR_BOUND
    # Every request's first attempt went to the primary, which paid for its re-requests;
    # the fallback, with no requests of its own, only had its floor.
    floor = FLOOR_PER_SECOND * WINDOW
    re_requests = len(primary.requests) + len(fallback.requests) - CLIENTS
    assert re_requests <= RATIO * CLIENTS + 2 * floor
    assert len(primary.requests) + len(fallback.requests) < 2 * CLIENTS  # not 4 per request
    assert exhausted >= CLIENTS - re_requests
