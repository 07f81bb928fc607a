"""End-to-end: ``/v1/responses`` with the openai SDK, through Sluice, in front of the fake upstream.

Streaming and not, the commit point (real statuses before it,
``response.failed`` after it), disconnects, and background responses:
resumed from the middle after the client dropped, polled, cancelled (the
upstream sees its connection close), and kept from other clients.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import openai
import orjson
import pytest
import trio
from openai.types.responses import Response, ResponseStreamEvent

from server.api.detached import owner_of
from server.config import Settings, parse_settings
from server.stream.background import BackgroundStreams
from server.testing.fake_upstream import FakeUpstream, Scenario
from tests.conftest import (
    PROMPTLY,
    RunningSluice,
    running_sluice,
    settings_for,
)
from tests.e2e.leaving import assert_upstream_closed, leave_mid_stream


def _settings(upstream: FakeUpstream, **resume: Any) -> Settings:
    return parse_settings({
        "backends": [{"name": "fake", "kind": "openai", "base_url": upstream.base_url,
                      "models": ["*"]}],
        "retry": {"retry_after_cap": 0.2, "backoff_base": 0.01, "backoff_max": 0.05},
        "resume": resume,
    })


@pytest.fixture
async def sluice(upstream: FakeUpstream) -> AsyncIterator[RunningSluice]:
    async with running_sluice(_settings(upstream, max_events=200)) as running:
        yield running


def _sdk(sluice: RunningSluice, key: str = "unused") -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=sluice.base_url + "/v1", api_key=key, max_retries=0)


async def _events(stream: openai.AsyncStream[ResponseStreamEvent]) -> list[ResponseStreamEvent]:
    return [event async for event in stream]


async def _poll_until_done(sdk: openai.AsyncOpenAI, response_id: str) -> Response:
    """Poll as a client of a background response does (bounded): polling is the API here."""
    with trio.fail_after(PROMPTLY):
        while (polled := await sdk.responses.retrieve(response_id)).status == "in_progress":  # noqa: ASYNC110
            await trio.sleep(0.02)
    return polled


def _text(events: list[ResponseStreamEvent]) -> str:
    return "".join(e.delta for e in events if e.type == "response.output_text.delta")


# ------------------------------------------------------------------- plain responses


async def test_the_sdk_streams_a_response(sluice: RunningSluice, upstream: FakeUpstream) -> None:
    async with _sdk(sluice) as sdk:
        stream = await sdk.responses.create(model="m", input="hello", instructions="Be brief.",
                                            max_output_tokens=40, temperature=0.2, stream=True)
        events = await _events(stream)
    assert _text(events) == "t0 t1 t2 t3 t4 "
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert events[0].type == "response.created" and events[-1].type == "response.completed"
    final = events[-1].response
    assert final.status == "completed" and final.output_text == "t0 t1 t2 t3 t4 "
    assert final.id.startswith("resp_") and final.usage is not None
    sent = upstream.requests[-1].json
    assert sent is not None
    assert sent["messages"] == [{"role": "system", "content": "Be brief."},
                                {"role": "user", "content": "hello"}]
    assert (sent["max_tokens"], sent["temperature"], sent["stream"]) == (40, 0.2, True)
    assert sent["stream_options"] == {"include_usage": True}


async def test_the_sdk_gets_one_response_object_without_stream(sluice: RunningSluice) -> None:
    async with _sdk(sluice) as sdk:
        response = await sdk.responses.create(model="m", input=[
            {"role": "user", "content": [{"type": "input_text", "text": "hi"}]}])
    assert response.status == "completed"
    assert response.output_text == "t0 t1 t2 t3 t4 "
    assert response.usage is not None and response.usage.output_tokens == 5


async def test_the_embedded_simulated_model_serves_the_stream_helper() -> None:
    settings = parse_settings({"backends": [{
        "name": "sim", "kind": "simulated", "models": ["sluice-sim"],
        "tokens_per_second": 500, "first_token_delay": 0.01, "reply_tokens": 9}]})
    async with running_sluice(settings) as sluice, _sdk(sluice) as sdk, \
            sdk.responses.stream(model="sluice-sim", input="hi") as stream:
        deltas = [e async for e in stream if e.type == "response.output_text.delta"]
        final = await stream.get_final_response()
    assert len(deltas) >= 9  # whole sentences of at least reply_tokens words
    assert final.output_text == "".join(d.delta for d in deltas)


async def test_a_cut_after_the_commit_point_ends_with_response_failed(
        sluice: RunningSluice, upstream: FakeUpstream) -> None:
    upstream.scenario = Scenario(tokens=6, cut_after=3)
    async with _sdk(sluice) as sdk:
        events = await _events(await sdk.responses.create(model="m", input="x", stream=True))
    assert _text(events) == "t0 t1 t2 "
    assert events[-1].type == "response.failed"
    assert not any(e.type == "response.completed" for e in events)
    failed = events[-1].response
    assert failed.status == "failed" and failed.error is not None
    assert failed.error.code == "server_error"
    assert "before it was complete" in failed.error.message


@pytest.mark.parametrize("stream", [True, False])
async def test_errors_before_the_commit_point_get_a_real_status(
        sluice: RunningSluice, upstream: FakeUpstream, stream: bool) -> None:
    async with _sdk(sluice) as sdk:
        upstream.scenario = Scenario(status=429, retry_after=3)
        with pytest.raises(openai.RateLimitError) as limited:
            await sdk.responses.create(model="m", input="x", stream=stream)
        assert limited.value.response.headers["retry-after"] == "3"
        upstream.scenario = Scenario(status=400, error_code="context_length_exceeded")
        with pytest.raises(openai.BadRequestError) as refused:
            await sdk.responses.create(model="m", input="x", stream=stream)
        assert refused.value.code == "context_length_exceeded"
        upstream.scenario = Scenario(tokens=5, cut_after=0)
        with pytest.raises(openai.InternalServerError) as cut:
            await sdk.responses.create(model="m", input="x", stream=stream)
        assert cut.value.status_code == 502
        requests = len(upstream.requests)
        with pytest.raises(openai.BadRequestError) as unsupported:
            await sdk.responses.create(model="m", input="x", stream=stream,
                                       tools=[{"type": "web_search"}])
        assert unsupported.value.body["param"] == "tools[0].type"  # type: ignore[index]
        assert len(upstream.requests) == requests  # refused before reaching the upstream


async def test_a_client_leaving_a_response_stream_closes_the_upstream(
        sluice: RunningSluice, upstream: FakeUpstream) -> None:
    upstream.scenario = Scenario(tokens=1000, tps=20)
    left_at = await leave_mid_stream(sluice.base_url, "/v1/responses",
                                     {"model": "m", "input": "x", "stream": True},
                                     b"event: response.output_text.delta")
    await assert_upstream_closed(upstream, left_at)
    await sluice.settle()
    assert sluice.sample("sluice_stream_outcomes_total", outcome="client_disconnect") == 1


# -------------------------------------------------------------- background responses


async def test_a_background_response_resumes_after_the_client_dropped(
        sluice: RunningSluice, upstream: FakeUpstream) -> None:
    upstream.scenario = Scenario(tokens=12, tps=25)
    async with _sdk(sluice) as sdk:
        stream = await sdk.responses.create(model="m", input="x", background=True, stream=True)
        before: list[ResponseStreamEvent] = []
        async for event in stream:
            before.append(event)
            if _text(before).count(" ") == 3:
                break
        await stream.close()  # the client drops mid-stream
        response_id = before[0].response.id  # type: ignore[union-attr]
        last = before[-1].sequence_number
        await trio.sleep(0.05)
        assert upstream.open_connections == 1  # ...and the upstream keeps generating
        with trio.fail_after(PROMPTLY):
            resumed = await _events(await sdk.responses.retrieve(
                response_id, stream=True, starting_after=last))
        # The helper replays from the start and skips what the client had (SDK-side).
        async with sdk.responses.stream(response_id=response_id, starting_after=last) as again:
            helper = [event async for event in again]
    assert [e.sequence_number for e in resumed] == list(range(last + 1, last + 1 + len(resumed)))
    assert _text(before) + _text(resumed) == "".join(f"t{i} " for i in range(12))
    assert resumed[-1].type == "response.completed"
    assert [e.sequence_number for e in helper] == [e.sequence_number for e in resumed]
    await sluice.settle()
    assert sluice.sample("sluice_stream_outcomes_total", outcome="completed") == 1
    assert sluice.sample("sluice_client_disconnects_total") == 0


async def test_a_background_response_is_polled_until_done(
        sluice: RunningSluice, upstream: FakeUpstream) -> None:
    upstream.scenario = Scenario(tokens=5, tps=50)
    async with _sdk(sluice) as sdk:
        created = await sdk.responses.create(model="m", input="x", background=True)
        assert created.status == "in_progress" and created.background
        polled = await _poll_until_done(sdk, created.id)
    assert polled.status == "completed"
    assert polled.output_text == "t0 t1 t2 t3 t4 "


async def test_cancel_stops_the_upstream_of_a_background_response(
        sluice: RunningSluice, upstream: FakeUpstream) -> None:
    upstream.scenario = Scenario(tokens=1000, tps=20)
    async with _sdk(sluice) as sdk:
        created = await sdk.responses.create(model="m", input="x", background=True)
        with trio.fail_after(PROMPTLY):
            await upstream.wait_for_request(1)
        await trio.sleep(0.1)  # some tokens flow
        cancelled_at = trio.current_time()
        cancelled = await sdk.responses.cancel(created.id)
        await assert_upstream_closed(upstream, cancelled_at)
        assert cancelled.status == "cancelled"
        again = await sdk.responses.cancel(created.id)  # idempotent
        assert again.status == "cancelled"
        events = await _events(await sdk.responses.retrieve(created.id, stream=True))
    assert events[-1].type == "response.failed"
    assert events[-1].response.status == "cancelled"
    await sluice.settle()
    assert sluice.sample("sluice_stream_outcomes_total", outcome="cancelled") == 1
    assert sluice.sample("sluice_detached_streams", state="live") == 0
    assert sluice.sample("sluice_detached_streams", state="retained") == 1


async def test_only_the_client_that_started_it_may_read_or_cancel_it(
        sluice: RunningSluice, upstream: FakeUpstream) -> None:
    upstream.scenario = Scenario(tokens=1000, tps=20)
    async with _sdk(sluice, "key-a") as owner, _sdk(sluice, "key-b") as other:
        created = await owner.responses.create(model="m", input="x", background=True)
        for attempt in (other.responses.retrieve(created.id),
                        other.responses.cancel(created.id),
                        owner.responses.retrieve("resp_" + "0" * 32)):
            with pytest.raises(openai.NotFoundError):
                await attempt
        assert (await owner.responses.cancel(created.id)).status == "cancelled"


async def test_a_resume_from_events_no_longer_kept_is_a_400(upstream: FakeUpstream) -> None:
    upstream.scenario = Scenario(tokens=20)
    async with running_sluice(_settings(upstream, max_events=5)) as sluice, \
            _sdk(sluice) as sdk:
        created = await sdk.responses.create(model="m", input="x", background=True)
        await _poll_until_done(sdk, created.id)
        with pytest.raises(openai.BadRequestError) as expired:
            await sdk.responses.retrieve(created.id, stream=True, starting_after=2)
        assert expired.value.code == "events_expired"
        with pytest.raises(openai.BadRequestError):
            await sdk.responses.retrieve(created.id, stream=True, starting_after=10_000)
        tail = await _events(await sdk.responses.retrieve(created.id, stream=True,
                                                          starting_after=25))
    assert tail[-1].type == "response.completed"


async def test_background_streams_end_at_shutdown(upstream: FakeUpstream) -> None:
    """Serving ends: the background nursery closes first, each producer ends in-band."""
    upstream.scenario = Scenario(tokens=1000, tps=20)
    async with running_sluice(settings_for(upstream.base_url)) as sluice, _sdk(sluice) as sdk:
        created = await sdk.responses.create(model="m", input="x", background=True)
        with trio.fail_after(PROMPTLY):
            await upstream.wait_for_request(1)
        background: BackgroundStreams = sluice.app.extensions["sluice.background"]
        stream = background.get("response", created.id, owner_of("Bearer unused"))
        assert stream is not None
    with trio.fail_after(PROMPTLY):
        await upstream.wait_all_closed()
    assert stream.log.closed
    last = orjson.loads(stream.log.read_after(stream.log.next - 2)[0].split(b"data: ")[1])
    assert last["type"] == "response.failed"
    assert last["response"]["error"]["type"] == "service_unavailable"  # server shutting down
    assert sluice.sample("sluice_active_streams") == 0
