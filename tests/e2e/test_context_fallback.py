"""End-to-end: a request too long for its model goes, unchanged, to the model named for that.

``small`` is served by one fake, ``long-model`` by another; ``small`` names
``context_fallback = "long-model"``. The small model's backend answers 400
``context_length_exceeded``: the same messages go to ``long-model``, and the
response says ``long-model`` served it. A model is never asked twice.
"""

from __future__ import annotations

from typing import Any

import httpx

from server.config import parse_settings
from server.testing.fake_upstream import FakeUpstream, Scenario
from tests.conftest import running_sluice
from tests.e2e.test_failover import URL, stream
from tests.e2e.test_failover import fallback as fallback
from tests.e2e.test_failover import primary as primary

TOO_LONG = Scenario(status=400, error_code="context_length_exceeded",
                    error_message="This model's maximum context length is 8192 tokens.")
TEN = "".join(f"t{i} " for i in range(10))
MESSAGES = [{"role": "user", "content": "a very long document " * 50}]


def settings(small: FakeUpstream, long: FakeUpstream, **model: Any) -> Any:
    return parse_settings({
        "backends": [
            {"name": "small-gpu", "kind": "openai", "base_url": small.base_url,
             "models": ["small"]},
            {"name": "long-gpu", "kind": "openai", "base_url": long.base_url,
             "models": ["long-model"]},
        ],
        "models": {"small": {"context_fallback": "long-model", **model}},
    })


async def test_a_request_too_long_goes_to_the_fallback_model(
    primary: FakeUpstream, fallback: FakeUpstream
) -> None:
    primary.scenario = TOO_LONG
    async with running_sluice(settings(primary, fallback)) as sluice:
        got = await stream(sluice, model="small", messages=MESSAGES)
        assert got.status == 200 and got.content == TEN and got.done and not got.errors
        assert {c["model"] for c in got.chunks} == {"long-model"}  # what served it
        assert len(primary.requests) == 1  # never asked again
        sent = fallback.requests[0].json
        assert sent is not None
        assert sent["model"] == "long-model" and sent["messages"] == MESSAGES  # unchanged
        assert sluice.sample("sluice_context_fallbacks_total", model="long-model") == 1

        async with httpx.AsyncClient(timeout=10) as client:  # the same, not streamed
            response = await client.post(sluice.base_url + URL, json={
                "model": "small", "messages": MESSAGES})
        assert response.status_code == 200
        assert response.json()["model"] == "long-model"
        assert response.json()["choices"][0]["message"]["content"] == TEN


async def test_when_no_model_fits_the_client_reads_the_400_once_per_model(
    primary: FakeUpstream, fallback: FakeUpstream
) -> None:
    primary.scenario = fallback.scenario = TOO_LONG
    async with running_sluice(settings(primary, fallback)) as sluice:
        got = await stream(sluice, model="small", messages=MESSAGES)
    assert got.status == 400
    assert httpx.Response(400, content=got.raw).json()["error"]["code"] \
        == "context_length_exceeded"
    assert len(primary.requests) == 1 and len(fallback.requests) == 1


async def test_other_request_errors_do_not_fall_back(
    primary: FakeUpstream, fallback: FakeUpstream
) -> None:
    primary.scenario = Scenario(status=400, error_code="invalid_value")
    async with running_sluice(settings(primary, fallback)) as sluice:
        got = await stream(sluice, model="small", messages=MESSAGES)
    assert got.status == 400
    assert fallback.requests == []
