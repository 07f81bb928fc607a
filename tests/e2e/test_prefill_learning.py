"""End-to-end: a backend that declares prefill but refuses one is learnt about, not retried.

Both backends declare ``continuation = "prefill"``; the fallback in fact
answers a continuation with a 400. The primary is cut after 40 of 60
tokens: the fallback refuses, and the primary itself — the one that was cut,
tried last — continues the remaining 20. The 400 never reaches the client,
and the fallback is not asked again during its cool-down.
"""

from __future__ import annotations

from server.testing.fake_upstream import FakeUpstream, Scenario
from tests.conftest import running_sluice
from tests.e2e.test_failover import fallback as fallback
from tests.e2e.test_failover import primary as primary
from tests.e2e.test_failover import stream, two_tier

TOKENS, CUT = 60, 40
SIXTY = "".join(f"t{i} " for i in range(TOKENS))
PREFILL = {"continuation": "prefill"}


async def test_the_cut_backend_continues_when_the_fallback_refuses_prefill(
    primary: FakeUpstream, fallback: FakeUpstream
) -> None:
    whole, cut = Scenario(tokens=TOKENS), Scenario(tokens=TOKENS, cut_after=CUT)
    primary.scenario = whole
    primary.script.extend([cut, whole, cut])  # two streams, each cut, each continued
    fallback.scenario = Scenario(tokens=TOKENS, reject_prefill=True)
    settings = two_tier(primary, fallback, primary_extra=PREFILL, fallback_extra=PREFILL)
    async with running_sluice(settings) as sluice:
        got = await stream(sluice)
        assert got.content == SIXTY and got.done and not got.errors  # one whole answer
        assert len(fallback.requests) == 1  # asked once, refused
        continued = primary.requests[1].json
        assert continued is not None and continued["continue_final_message"] is True
        assert continued["messages"][-1]["content"] == "".join(f"t{i} " for i in range(CUT))
        assert sluice.sample("sluice_prefill_refusals_total", backend="fallback") == 1

        again = await stream(sluice)  # cut again: the fallback is not asked this time
        assert again.content == SIXTY and again.done and not again.errors
        assert len(fallback.requests) == 1
        assert len(primary.requests) == 4
        assert sluice.sample("sluice_prefill_refusals_total", backend="fallback") == 1
