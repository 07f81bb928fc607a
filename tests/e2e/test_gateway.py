"""End-to-end: the endpoints, bad input, and the openai SDK as a client."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import httpx
import openai
import pytest
import trio

from server.config import ConfigError, parse_settings
from server.gateway import create_app
from server.testing.fake_upstream import FakeUpstream, Scenario
from tests.conftest import RunningSluice, chat_body, running_sluice, settings_for

URL = "/v1/chat/completions"


@pytest.fixture
async def simulated() -> AsyncIterator[RunningSluice]:
    """Sluice with only the built-in simulated model, paced fast for tests."""
    settings = parse_settings({"backends": [{
        "name": "sim", "kind": "simulated", "models": ["sluice-sim"],
        "tokens_per_second": 500, "first_token_delay": 0.01, "reply_tokens": 12,
    }]})
    async with running_sluice(settings) as running:
        yield running


def _sdk(base_url: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=base_url + "/v1", api_key="unused", max_retries=0)


async def test_openai_sdk_streams_from_the_simulated_model(simulated: RunningSluice) -> None:
    """Whole sentences of about `reply_tokens`, finished with "stop"; an id per reply."""
    ids: set[str] = set()
    async with _sdk(simulated.base_url) as sdk:
        for _ in range(2):
            stream = await sdk.chat.completions.create(
                model="sluice-sim", messages=[{"role": "user", "content": "hi"}], stream=True,
                stream_options={"include_usage": True})
            text, usage, finish = [], None, None
            async for chunk in stream:
                ids.add(chunk.id)
                if chunk.choices and chunk.choices[0].delta.content:
                    text.append(chunk.choices[0].delta.content)
                if chunk.choices and chunk.choices[0].finish_reason:
                    finish = chunk.choices[0].finish_reason
                if chunk.usage is not None:
                    usage = chunk.usage
            assert len(text) >= 12
            assert "".join(text).endswith(".")
            assert finish == "stop"
            assert usage is not None and usage.completion_tokens == len(text)
    assert len(ids) == 2  # one id per reply, shared by its chunks


async def test_openai_sdk_non_streaming_and_max_tokens(simulated: RunningSluice) -> None:
    async with _sdk(simulated.base_url) as sdk:
        completion = await sdk.chat.completions.create(
            model="sluice-sim", messages=[{"role": "user", "content": "hi"}], max_tokens=4)
    assert completion.choices[0].finish_reason == "length"
    assert completion.choices[0].message.content
    assert len(completion.choices[0].message.content.split()) == 4
    assert completion.usage is not None and completion.usage.completion_tokens == 4


async def test_openai_sdk_sees_typed_errors(sluice: RunningSluice,
                                            upstream: FakeUpstream) -> None:
    """Statuses map to the SDK's exception classes; the body's code reaches it."""
    upstream.scenario = Scenario(status=429, retry_after=3)
    async with _sdk(sluice.base_url) as sdk:
        with pytest.raises(openai.RateLimitError) as caught:
            await sdk.chat.completions.create(
                model="m", messages=[{"role": "user", "content": "x"}], stream=True)
        assert caught.value.response.headers["retry-after"] == "3"
        with pytest.raises(openai.NotFoundError) as not_found:
            await sdk.models.retrieve("nope")
    assert not_found.value.status_code == 404


async def test_openai_sdk_streams_through_keepalives_and_in_band_errors(
    upstream: FakeUpstream,
) -> None:
    """The SDK survives our keepalive comments and raises on the in-band error."""
    upstream.scenario = Scenario(tokens=6, tps=20, first_delay=0.3, cut_after=4)
    settings = settings_for(upstream.base_url, keepalive_interval=0.05)
    async with running_sluice(settings) as sluice, _sdk(sluice.base_url) as sdk:
        stream = await sdk.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "x"}], stream=True)
        text: list[str] = []

        async def read_all() -> None:
            async for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    text.append(chunk.choices[0].delta.content)

        with pytest.raises(openai.APIError) as caught:
            await read_all()
    assert "".join(text) == "t0 t1 t2 t3 "
    assert "before it was complete" in str(caught.value)


async def test_models_health_and_metrics(simulated: RunningSluice,
                                         client: httpx.AsyncClient) -> None:
    models = (await client.get(simulated.base_url + "/v1/models")).json()
    assert models == {"object": "list", "data": [
        {"id": "sluice-sim", "object": "model", "created": 0, "owned_by": "sluice"}]}
    assert (await client.get(simulated.base_url + "/healthz")).json() == {"status": "ok"}
    await client.post(simulated.base_url + URL, json=chat_body(False, model="sluice-sim"))
    metrics = (await client.get(simulated.base_url + "/metrics")).text
    for name in ("sluice_active_streams", "sluice_client_disconnects_total",
                 'sluice_stream_outcomes_total{outcome="completed"} 1.0',
                 "sluice_time_to_first_chunk_seconds_bucket",
                 "sluice_stream_duration_seconds_bucket", "sluice_chunks_per_stream_bucket",
                 'sluice_upstream_requests_total{backend="sim",outcome="completed"} 1.0'):
        assert name in metrics
    assert "_created" not in metrics  # prometheus_client's start timestamps: not asked for


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        (b"{not json", 400, None),
        (b"[1, 2]", 400, None),
        (b'{"messages": [{"role": "user", "content": "x"}]}', 400, "model"),
        (b'{"model": 7, "messages": [{"role": "user", "content": "x"}]}', 400, "model"),
        (b'{"model": "sluice-sim"}', 400, "messages"),
        (b'{"model": "sluice-sim", "messages": []}', 400, "messages"),
        (b'{"model": "sluice-sim", "messages": ["hi"]}', 400, "messages[0]"),
        (b'{"model": "sluice-sim", "messages": [{"role": "user"}], "stream": "yes"}', 400,
         "stream"),
        (b'{"model": "sluice-sim", "messages": [{"role": "user"}], "max_tokens": -1}', 400,
         "max_tokens"),
        (b'{"model": "gpt-9", "messages": [{"role": "user", "content": "x"}]}', 404, "model"),
    ],
)
async def test_bad_input_gets_an_openai_error_and_the_server_keeps_serving(
    simulated: RunningSluice, client: httpx.AsyncClient,
    body: bytes, status: int, param: str | None,
) -> None:
    response = await client.post(simulated.base_url + URL, content=body,
                                 headers={"content-type": "application/json"})
    assert response.status_code == status
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert error["message"] and "Traceback" not in response.text
    if status == 404:
        assert error["code"] == "model_not_found"
    ok = await client.post(simulated.base_url + URL, json=chat_body(False, model="sluice-sim"))
    assert ok.status_code == 200


async def test_body_over_the_limit_is_413(upstream: FakeUpstream,
                                          client: httpx.AsyncClient) -> None:
    async with running_sluice(settings_for(upstream.base_url, max_body_bytes=1000)) as sluice:
        big = chat_body(messages=[{"role": "user", "content": "x" * 2000}])
        response = await client.post(sluice.base_url + URL, json=big)
        assert response.status_code == 413
        assert response.json()["error"]["code"] == "request_too_large"
        assert (await client.post(sluice.base_url + URL, json=chat_body())).status_code == 200
    assert upstream.requests == [upstream.requests[0]]  # the big one never went upstream


async def test_unknown_route_and_method_are_openai_shaped(simulated: RunningSluice,
                                                          client: httpx.AsyncClient) -> None:
    missing = await client.get(simulated.base_url + "/v1/nothing")
    assert missing.status_code == 404
    assert missing.json()["error"]["type"] == "not_found_error"
    wrong = await client.get(simulated.base_url + URL)
    assert wrong.status_code == 405
    assert "error" in wrong.json()


async def test_client_credentials_never_reach_the_upstream(
    upstream: FakeUpstream, client: httpx.AsyncClient
) -> None:
    """The upstream gets the backend's key from its env var, never the client's."""
    settings = parse_settings({"backends": [{
        "name": "keyed", "kind": "openai", "base_url": upstream.base_url, "models": ["*"],
        "api_key_env": "TEST_UPSTREAM_KEY"}]})
    with pytest.raises(ConfigError, match="TEST_UPSTREAM_KEY"):
        create_app(settings, environ={})  # a missing key stops the server at start
    async with running_sluice(settings, environ={"TEST_UPSTREAM_KEY": "sk-upstream"}) as sluice:
        response = await client.post(sluice.base_url + URL, json=chat_body(False),
                                     headers={"authorization": "Bearer client-key"})
    assert response.status_code == 200
    assert upstream.requests[0].headers["authorization"] == "Bearer sk-upstream"
    assert "sk-upstream" not in response.text


async def test_many_concurrent_streams_all_complete(
    simulated: RunningSluice, client: httpx.AsyncClient
) -> None:
    results: list[int] = []

    async def one() -> None:
        async with client.stream("POST", simulated.base_url + URL,
                                 json=chat_body(model="sluice-sim")) as response:
            body = await response.aread()
        results.append(body.count(b'"content":"') - 1 if body.endswith(b"[DONE]\n\n") else -1)

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            for _ in range(50):
                nursery.start_soon(one)
    assert len(results) == 50 and len(set(results)) == 1  # one conversation, one reply...
    assert results[0] >= 12  # ...of whole sentences, at least `reply_tokens` long
    await simulated.settle()


async def test_an_error_answered_before_a_stream_is_logged_with_its_error_id(
    simulated: RunningSluice, client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture,
) -> None:
    """The id a client is given for a 4xx can be looked up in the log."""
    caplog.set_level(logging.INFO, logger="sluice")
    response = await client.post(simulated.base_url + URL, json=chat_body(model="gpt-9"),
                                 headers={"X-Request-ID": "req-unknown-model"})
    error_id = response.json()["error"]["error_id"]
    [record] = [r for r in caplog.records if error_id in r.getMessage()]
    assert record.levelno == logging.INFO
    assert record.getMessage().startswith(
        "request req-unknown-model: POST /v1/chat/completions answered 404 model_not_found")


async def test_a_stream_that_failed_before_any_content_says_so_in_the_log(
    sluice: RunningSluice, upstream: FakeUpstream, client: httpx.AsyncClient,
    caplog: pytest.LogCaptureFixture,
) -> None:
    upstream.scenario = Scenario(status=500)
    caplog.set_level(logging.INFO, logger="sluice.stream")
    response = await client.post(sluice.base_url + URL, json=chat_body(),
                                 headers={"X-Request-ID": "req-no-content"})
    assert response.status_code == 502
    error_id = response.json()["error"]["error_id"]
    await sluice.settle()  # the stream logs its end after the answer went out
    [record] = [r for r in caplog.records if error_id in r.getMessage()]
    assert record.getMessage().startswith(
        "stream req-no-content ended before any backend sent content: upstream_error")
