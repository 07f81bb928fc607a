"""End-to-end: ``strategy = "latency"`` sends traffic to the backend with the faster first token.

Two fakes in one tier, one quick to its first token and one slow. Traffic
goes to the quick one; when it slows down (slower than the other), traffic
moves to the other within a few requests. Requests are sequential, so
least-busy would split them evenly; the counts asserted leave room for the
strategy's exploration (a random pick now and then) and the few requests
the average needs to follow a change.
"""

from __future__ import annotations

from server.config import parse_settings
from server.testing.fake_upstream import FakeUpstream, Scenario
from tests.conftest import RunningSluice, running_sluice
from tests.e2e.test_failover import TEN, stream
from tests.e2e.test_failover import fallback as fallback
from tests.e2e.test_failover import primary as primary

QUICK, SLOW, SLOWER = 0.02, 0.3, 0.8  # first-token delays, seconds: far apart on purpose
REQUESTS = 14  # per phase
# Of each phase's requests, at least this many go to the faster backend: the rest may be
# exploration, the first two (each backend is measured once) and the average catching up.
FASTER_AT_LEAST = 10  # (an even split would reach it in 9 % of phases, 1 % of both)


async def send(sluice: RunningSluice, fakes: dict[str, FakeUpstream]) -> dict[str, int]:
    """Sequential requests; how many each fake received."""
    before = {name: len(fake.requests) for name, fake in fakes.items()}
    for _ in range(REQUESTS):
        got = await stream(sluice)
        assert got.content == TEN and got.done
    return {name: len(fake.requests) - before[name] for name, fake in fakes.items()}


async def test_traffic_follows_the_faster_first_token(
    primary: FakeUpstream, fallback: FakeUpstream
) -> None:
    fakes = {"one": primary, "two": fallback}
    primary.scenario = Scenario(tokens=10, first_delay=QUICK)
    fallback.scenario = Scenario(tokens=10, first_delay=SLOW)
    settings = parse_settings({
        "backends": [{"name": name, "kind": "openai", "base_url": fake.base_url,
                      "models": ["*"]} for name, fake in fakes.items()],
        "models": {"fake-model": {"strategy": "latency"}},
    })
    async with running_sluice(settings) as sluice:
        first = await send(sluice, fakes)
        assert first["one"] >= FASTER_AT_LEAST, first
        primary.scenario = Scenario(tokens=10, first_delay=SLOWER)  # the quick one slows
        second = await send(sluice, fakes)
        assert second["two"] >= FASTER_AT_LEAST, second
