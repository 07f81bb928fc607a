"""End-to-end: ``/v1/completions`` and ``/v1/embeddings`` with the openai SDK, through fail-over.

Three fake upstreams: a chat-only backend first in line (it must never be
asked), then a primary and a fallback that declare both endpoints.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import openai
import pytest
import trio

from server.config import parse_settings
from server.testing.fake_upstream import FakeUpstream, Scenario
from tests.conftest import PROMPTLY, RunningSluice, running_sluice
from tests.e2e.leaving import assert_upstream_closed, leave_mid_stream
from tests.sse_client import receive_stream

FIVE = "t0 t1 t2 t3 t4 "


async def _fake(nursery: trio.Nursery) -> FakeUpstream:
    fake = FakeUpstream(Scenario(tokens=5))
    await nursery.start(fake.serve, 0)
    return fake


@pytest.fixture
async def chat_only(nursery: trio.Nursery) -> FakeUpstream:
    return await _fake(nursery)


@pytest.fixture
async def primary(nursery: trio.Nursery) -> FakeUpstream:
    return await _fake(nursery)


@pytest.fixture
async def fallback(nursery: trio.Nursery) -> FakeUpstream:
    return await _fake(nursery)


@pytest.fixture
async def sluice(chat_only: FakeUpstream, primary: FakeUpstream,
                 fallback: FakeUpstream) -> AsyncIterator[RunningSluice]:
    both = {"embeddings": True, "completions": True, "models": ["*"], "kind": "openai"}
    settings = parse_settings({
        "backends": [
            {"name": "chat-only", "kind": "openai", "base_url": chat_only.base_url,
             "models": ["*"], "priority": 0},
            {"name": "primary", "base_url": primary.base_url, "priority": 1, **both},
            {"name": "fallback", "base_url": fallback.base_url, "priority": 2, **both},
        ],
        "retry": {"backoff_base": 0.01, "backoff_max": 0.05},
        "timeouts": {"first_chunk": 0.5},
    })
    async with running_sluice(settings) as running:
        yield running


@pytest.fixture
async def sdk(sluice: RunningSluice) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(base_url=sluice.base_url + "/v1", api_key="k",
                                  max_retries=0) as client:
        yield client


def _paths(upstream: FakeUpstream) -> list[str]:
    return [request.path for request in upstream.requests]


async def test_completions_stream_and_not(sdk: openai.AsyncOpenAI, chat_only: FakeUpstream,
                                          primary: FakeUpstream) -> None:
    whole = await sdk.completions.create(model="m", prompt="Once upon", max_tokens=20)
    stream = await sdk.completions.create(model="m", prompt="Once upon", stream=True,
                                          stream_options={"include_usage": True})
    chunks = [chunk async for chunk in stream]
    assert whole.object == "text_completion" and whole.choices[0].text == FIVE
    assert whole.choices[0].finish_reason == "stop"
    assert whole.usage is not None and whole.usage.completion_tokens == 5
    assert "".join(c.choices[0].text for c in chunks if c.choices) == FIVE
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens == 7
    assert _paths(primary) == ["/v1/completions"] * 2
    sent = primary.requests[0].json
    assert sent is not None and sent["prompt"] == "Once upon" and sent["stream"] is True
    assert chat_only.requests == []  # it does not declare completions


async def test_completions_fail_over_before_the_first_byte(
        sdk: openai.AsyncOpenAI, primary: FakeUpstream, fallback: FakeUpstream) -> None:
    primary.scenario = Scenario(status=503)
    completion = await sdk.completions.create(model="m", prompt="x")
    assert completion.choices[0].text == FIVE
    assert len(primary.requests) == 2 and len(fallback.requests) == 1  # retried, failed over


async def test_a_completions_stream_cut_mid_way_ends_in_band(
        sluice: RunningSluice, primary: FakeUpstream, fallback: FakeUpstream) -> None:
    primary.scenario = Scenario(tokens=5, cut_after=2)
    async with httpx.AsyncClient() as client, client.stream(
            "POST", sluice.base_url + "/v1/completions",
            json={"model": "m", "prompt": "x", "stream": True}) as response:
        got = await receive_stream(response)
    texts = [chunk["choices"][0]["text"] for chunk in got.chunks if chunk.get("choices")]
    assert "".join(texts) == "t0 t1 "
    assert not got.done and got.errors[0]["code"] == "stream_truncated"
    assert fallback.requests == []  # after the commit point: no fail-over


async def test_a_client_leaving_a_completions_stream_closes_the_upstream(
        sluice: RunningSluice, primary: FakeUpstream) -> None:
    primary.scenario = Scenario(tokens=1000, tps=20)
    left_at = await leave_mid_stream(sluice.base_url, "/v1/completions",
                                     {"model": "m", "prompt": "x", "stream": True},
                                     b'"text":"t')
    await assert_upstream_closed(primary, left_at)
    await sluice.settle()


async def test_embeddings_with_the_sdk(sdk: openai.AsyncOpenAI, chat_only: FakeUpstream,
                                       primary: FakeUpstream) -> None:
    answer = await sdk.embeddings.create(model="m", input=["a b", "cde f"])
    assert [d.embedding for d in answer.data] == [[3.0, 0.0, 0.5, 0.25],
                                                  [5.0, 1.0, 0.5, 0.25]]
    assert answer.usage.prompt_tokens == 4
    assert _paths(primary) == ["/v1/embeddings"] and chat_only.requests == []


@pytest.mark.parametrize("failure", [Scenario(status=500), Scenario(reset_before_headers=True),
                                     Scenario(no_response=True)])
async def test_embeddings_fail_over(sdk: openai.AsyncOpenAI, sluice: RunningSluice,
                                    primary: FakeUpstream, fallback: FakeUpstream,
                                    failure: Scenario) -> None:
    primary.scenario = failure
    with trio.fail_after(PROMPTLY * 2):
        answer = await sdk.embeddings.create(model="m", input="x")
    assert answer.data[0].embedding == [1.0, 0.0, 0.5, 0.25]
    assert len(fallback.requests) == 1
    outcome = "upstream_timeout" if failure.no_response else "upstream_error"
    assert sluice.sample("sluice_upstream_requests_total", backend="primary",
                         outcome=outcome) >= 1
    assert sluice.sample("sluice_admission_slots_used") == 0
    assert sluice.sample("sluice_backend_in_flight", backend="primary") == 0


async def test_embeddings_errors(sdk: openai.AsyncOpenAI, primary: FakeUpstream,
                                 fallback: FakeUpstream, sluice: RunningSluice) -> None:
    primary.scenario = Scenario(status=400, error_code="context_length_exceeded")
    with pytest.raises(openai.BadRequestError) as refused:
        await sdk.embeddings.create(model="m", input="x")
    assert refused.value.code == "context_length_exceeded"
    assert fallback.requests == []  # a request error is relayed, never failed over
    with pytest.raises(openai.BadRequestError) as bad:
        await sdk.embeddings.create(model="m", input=[])
    assert bad.value.body["param"] == "input"  # type: ignore[index]
    primary.scenario = fallback.scenario = Scenario(status=503)
    with pytest.raises(openai.InternalServerError) as failed:
        await sdk.embeddings.create(model="m", input="x")
    assert failed.value.status_code == 502


async def test_a_model_no_backend_embeds_is_a_404(upstream: FakeUpstream) -> None:
    settings = parse_settings({"backends": [
        {"name": "chat", "kind": "openai", "base_url": upstream.base_url, "models": ["*"]}]})
    async with running_sluice(settings) as sluice, httpx.AsyncClient() as client:
        for path, body in (("/v1/embeddings", {"model": "m", "input": "x"}),
                           ("/v1/completions", {"model": "m", "prompt": "x"})):
            response = await client.post(sluice.base_url + path, json=body)
            assert response.status_code == 404
            assert response.json()["error"]["code"] == "model_not_found"
    assert upstream.requests == []


async def test_the_embedded_simulated_model_serves_both() -> None:
    settings = parse_settings({"backends": [{
        "name": "sim", "kind": "simulated", "models": ["sluice-sim"],
        "tokens_per_second": 500, "first_token_delay": 0.01, "reply_tokens": 7}]})
    async with running_sluice(settings) as sluice, openai.AsyncOpenAI(
            base_url=sluice.base_url + "/v1", api_key="k", max_retries=0) as sdk:
        completion = await sdk.completions.create(model="sluice-sim", prompt="Once")
        embedded = await sdk.embeddings.create(model="sluice-sim", input="Once")
    # Whole sentences of at least reply_tokens words, the last one ending the reply.
    words = completion.choices[0].text.split()
    assert len(words) >= 7 and words[-1].endswith((".", "!", "?"))
    assert len(embedded.data[0].embedding) == 16  # the SDK asked for base64 and decoded it
