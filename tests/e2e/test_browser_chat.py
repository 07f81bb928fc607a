"""``POST /chat``: validation (pure) and the endpoint end to end, on the /v1 streams."""

from __future__ import annotations

import itertools
import re
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import trio

from server.api.browser_chat import parse_chat_api_request
from server.backends.openai import upstream_body
from server.config import ConfigError, parse_settings
from server.errors import RequestError
from server.testing.fake_upstream import FakeUpstream, Scenario
from tests.conftest import CLOSE_BOUND, PROMPTLY, RunningSluice, running_sluice, settings_for
from tests.sse_client import Received, receive_stream

URL = "/chat"
TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
CONVERSATION = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hello"}]


def chat_api_body(stream: bool = True, **extra: Any) -> dict[str, Any]:
    return {"conversation": CONVERSATION, "stream": stream, "model": "fake-model", **extra}


async def _stream(client: httpx.AsyncClient, sluice: RunningSluice,
                  body: dict[str, Any]) -> Received:
    async with client.stream("POST", sluice.base_url + URL, json=body) as response:
        return await receive_stream(response)


# ------------------------------------------------------------------- validation


def test_a_chat_request_becomes_an_openai_request() -> None:
    raw = (b'{"conversation": [{"role": "user", "content": "hi"}], "stream": true,'
           b' "temperature": 0.5, "max_tokens": 7, "session_id": "ignored"}')
    parsed = parse_chat_api_request(raw, "default-model")
    assert parsed.stream
    assert parsed.chat.model == "default-model"
    assert parsed.chat.max_tokens == 7
    assert upstream_body(parsed.chat) == {
        "model": "default-model", "messages": [{"role": "user", "content": "hi"}],
        "stream": True, "stream_options": {"include_usage": True},
        "temperature": 0.5, "max_tokens": 7,
    }
    buffered = parse_chat_api_request(b'{"conversation": [{"role": "user", "content": ""}],'
                                      b' "model": "m"}', None)
    assert not buffered.stream and not buffered.chat.stream
    assert buffered.chat.model == "m"
    assert "temperature" not in buffered.chat.body


@pytest.mark.parametrize(
    ("raw", "param"),
    [
        (b"{nope", None),
        (b'["conversation"]', None),
        (b'{"model": "m"}', "conversation"),
        (b'{"conversation": []}', "conversation"),
        (b'{"conversation": {"role": "user"}}', "conversation"),
        (b'{"conversation": ["hi"]}', "conversation[0]"),
        (b'{"conversation": [{"role": "tool", "content": "x"}]}', "conversation[0].role"),
        (b'{"conversation": [{"role": "user", "content": "a"}, {"role": "user"}]}',
         "conversation[1].content"),
        (b'{"conversation": [{"role": "user", "content": ["x"]}]}', "conversation[0].content"),
        (b'{"conversation": [{"role": "user", "content": "x"}], "model": ""}', "model"),
        (b'{"conversation": [{"role": "user", "content": "x"}], "model": 3}', "model"),
        (b'{"conversation": [{"role": "user", "content": "x"}], "stream": "yes"}', "stream"),
        (b'{"conversation": [{"role": "user", "content": "x"}], "temperature": 3}',
         "temperature"),
        (b'{"conversation": [{"role": "user", "content": "x"}], "temperature": true}',
         "temperature"),
        (b'{"conversation": [{"role": "user", "content": "x"}], "max_tokens": 0}',
         "max_tokens"),
    ],
)
def test_invalid_chat_requests_name_the_param(raw: bytes, param: str | None) -> None:
    with pytest.raises(RequestError) as caught:
        parse_chat_api_request(raw, "default-model")
    assert caught.value.param == param
    assert caught.value.status == 400


def test_without_a_model_or_a_default_the_model_is_missing() -> None:
    with pytest.raises(RequestError) as caught:
        parse_chat_api_request(b'{"conversation": [{"role": "user", "content": "x"}]}', None)
    assert caught.value.param == "model"
    assert caught.value.code == "missing_required_parameter"


def test_the_default_model_must_be_served() -> None:
    backends = [{"name": "a", "kind": "simulated", "models": ["m1"]}]
    with pytest.raises(ConfigError, match=r"chat\.default_model: no backend serves 'm2'"):
        parse_settings({"backends": backends, "chat": {"default_model": "m2"}})
    with pytest.raises(ConfigError, match=r"chat\.model: unknown setting"):
        parse_settings({"backends": backends, "chat": {"model": "m1"}})
    assert parse_settings({"backends": backends}).chat.default_model is None


# ------------------------------------------------------------------- end to end


async def test_chat_streams_one_event_per_delta_then_done(
    sluice: RunningSluice, upstream: FakeUpstream, client: httpx.AsyncClient
) -> None:
    async with client.stream("POST", sluice.base_url + URL, json=chat_api_body(),
                             headers={"X-Request-ID": "req-chat-1"}) as response:
        got = await receive_stream(response)
    assert got.status == 200
    assert got.headers["content-type"].startswith("text/event-stream")
    assert got.headers["cache-control"] == "no-cache"
    assert got.headers["x-request-id"] == "req-chat-1"
    events = got.chunks
    assert [e["content"] for e in events] == ["t0 ", "t1 ", "t2 ", "t3 ", "t4 ", ""]
    assert [e["full_content"] for e in events] == [
        "t0 ", "t0 t1 ", "t0 t1 t2 ", "t0 t1 t2 t3 ", "t0 t1 t2 t3 t4 ", "t0 t1 t2 t3 t4 "]
    assert [e["chunk_id"] for e in events] == [1, 2, 3, 4, 5, 6]
    assert [e["done"] for e in events] == [False] * 5 + [True]
    assert {e["model"] for e in events} == {"fake-model"}
    assert all(TIMESTAMP.fullmatch(e["timestamp"]) for e in events)
    assert [e["timestamp"] for e in events] == sorted(e["timestamp"] for e in events)
    stats = [e["streaming_stats"] for e in events]
    assert [s["total_chunks"] for s in stats] == [1, 2, 3, 4, 5, 5]
    assert [s["total_characters"] for s in stats] == [len(e["full_content"]) for e in events]
    assert all(a["elapsed_time"] <= b["elapsed_time"] for a, b in itertools.pairwise(stats))
    assert all(s["words_per_second"] >= 0 for s in stats)
    last = events[-1]
    assert last["finish_reason"] == "stop"
    assert last["usage"]["completion_tokens"] == 5
    assert "error" not in last
    assert got.raw.endswith(b"\n\n") and b"[DONE]" not in got.raw
    # The conversation reached the upstream as an OpenAI request.
    sent = upstream.requests[0].json
    assert sent is not None
    assert sent["messages"] == CONVERSATION and sent["model"] == "fake-model"
    assert sent["stream"] is True
    await sluice.settle()
    assert sluice.sample("sluice_stream_outcomes_total", outcome="completed") == 1


async def test_chat_without_stream_answers_one_object(
    sluice: RunningSluice, upstream: FakeUpstream, client: httpx.AsyncClient
) -> None:
    response = await client.post(sluice.base_url + URL, json=chat_api_body(stream=False))
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    reply = response.json()
    assert reply["content"] == reply["full_content"] == "t0 t1 t2 t3 t4 "
    assert reply["done"] is True
    assert reply["model"] == "fake-model"
    assert reply["finish_reason"] == "stop"
    assert TIMESTAMP.fullmatch(reply["timestamp"])
    assert reply["streaming_stats"]["total_chunks"] == 5
    assert reply["streaming_stats"]["total_characters"] == len("t0 t1 t2 t3 t4 ")
    assert reply["streaming_stats"]["elapsed_time"] > 0
    assert reply["usage"]["completion_tokens"] == 5


@pytest.mark.parametrize(("chat", "expected"), [({}, "first"), ({"default_model": "second"},
                                                                 "second")])
async def test_a_request_without_model_gets_the_default(
    upstream: FakeUpstream, client: httpx.AsyncClient, chat: dict[str, str], expected: str
) -> None:
    settings = parse_settings({"chat": chat, "backends": [{
        "name": "fake", "kind": "openai", "base_url": upstream.base_url,
        "models": ["first", "second"]}]})
    async with running_sluice(settings) as sluice:
        body = {"conversation": CONVERSATION, "stream": True}
        got = await _stream(client, sluice, body)
    assert got.status == 200
    assert {e["model"] for e in got.chunks} == {expected}
    assert upstream.requests[0].json is not None
    assert upstream.requests[0].json["model"] == expected


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"conversation": CONVERSATION}, 400, "model"),  # models = ["*"]: no default
        ({"conversation": "hello", "model": "m"}, 400, "conversation"),
        ({"conversation": [{"role": "robot", "content": "x"}], "model": "m"}, 400,
         "conversation[0].role"),
    ],
)
async def test_bad_requests_get_openai_errors_and_never_reach_the_upstream(
    sluice: RunningSluice, upstream: FakeUpstream, client: httpx.AsyncClient,
    body: dict[str, Any], status: int, param: str,
) -> None:
    response = await client.post(sluice.base_url + URL, json=body)
    assert response.status_code == status
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert error["error_id"].startswith("err_")
    assert upstream.requests == []
    ok = await client.post(sluice.base_url + URL, json=chat_api_body(stream=False))
    assert ok.status_code == 200


async def test_an_unknown_model_is_404(client: httpx.AsyncClient) -> None:
    settings = parse_settings({"backends": [{
        "name": "sim", "kind": "simulated", "models": ["sluice-sim"]}]})
    async with running_sluice(settings) as sluice:
        response = await client.post(sluice.base_url + URL, json=chat_api_body(model="gpt-9"))
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "model_not_found"


@pytest.mark.parametrize("stream", [True, False])
@pytest.mark.parametrize(("scenario", "status"), [
    (Scenario(status=400, error_code="context_length_exceeded", error_message="Too long."), 400),
    (Scenario(status=500), 502),
])
async def test_a_failure_before_the_first_token_has_a_real_status(
    sluice: RunningSluice, upstream: FakeUpstream, client: httpx.AsyncClient,
    scenario: Scenario, status: int, stream: bool,
) -> None:
    upstream.scenario = scenario
    response = await client.post(sluice.base_url + URL, json=chat_api_body(stream=stream))
    assert response.status_code == status
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert error["error_id"].startswith("err_")
    if status == 400:
        assert error["code"] == "context_length_exceeded"
        assert error["message"] == "Too long."
    assert upstream.base_url not in response.text


@pytest.mark.parametrize(("scenario", "message", "code", "cause"), [
    (Scenario(tokens=6, cut_after=3), "before it was complete", "stream_truncated",
     "the connection closed mid-body"),
    (Scenario(tokens=6, error_event_after=3), "reported an error mid-stream", None,
     "upstream error event"),
])
async def test_a_failure_after_the_first_token_is_one_done_event_with_an_error_id(
    sluice: RunningSluice, upstream: FakeUpstream, client: httpx.AsyncClient,
    caplog: pytest.LogCaptureFixture, scenario: Scenario, message: str, code: str | None,
    cause: str,
) -> None:
    upstream.scenario = scenario
    got = await _stream(client, sluice, chat_api_body())
    assert got.status == 200
    events = got.chunks
    assert [e["content"] for e in events[:-1]] == ["t0 ", "t1 ", "t2 "]
    last = events[-1]
    assert last["done"] is True
    assert message in last["error"]
    assert last["error_code"] == code
    assert last["full_content"] == "t0 t1 t2 "
    assert "finish_reason" not in last
    # Sanitized for the client; the cause is in the log beside the same id.
    assert cause not in got.raw.decode() and "Traceback" not in got.raw.decode()
    assert re.fullmatch(r"err_[0-9a-f]+", last["error_id"])
    await sluice.settle()
    logged = [r.getMessage() for r in caplog.records if last["error_id"] in r.getMessage()]
    assert any(cause in line for line in logged), logged


async def test_keepalives_during_silence_are_comment_lines(
    upstream: FakeUpstream, client: httpx.AsyncClient
) -> None:
    upstream.scenario = Scenario(tokens=3, first_delay=0.3)
    async with running_sluice(settings_for(upstream.base_url, keepalive_interval=0.05)) as sluice:
        got = await _stream(client, sluice, chat_api_body())
    assert got.raw.startswith(b": keepalive\n: keepalive\n")
    assert b": keepalive\n\n" not in got.raw  # no blank line: no empty event
    assert [e["content"] for e in got.chunks] == ["t0 ", "t1 ", "t2 ", ""]
    assert got.chunks[-1]["done"] is True


async def test_leaving_mid_stream_closes_the_upstream(
    sluice: RunningSluice, upstream: FakeUpstream, client: httpx.AsyncClient
) -> None:
    upstream.scenario = Scenario(tokens=1000, tps=20)
    with trio.fail_after(PROMPTLY):
        async with client.stream("POST", sluice.base_url + URL, json=chat_api_body()) as response:
            got = await receive_stream(response, stop_after=3)
            assert got.chunks[-1]["full_content"] == "t0 t1 t2 "
        left_at = trio.current_time()
        await upstream.wait_all_closed()
    closed_at = upstream.connections[0].closed_at
    assert closed_at is not None and closed_at - left_at < CLOSE_BOUND
    await sluice.settle()
    assert sluice.sample("sluice_client_disconnects_total") == 1
    assert sluice.sample("sluice_stream_outcomes_total", outcome="client_disconnect") == 1


@pytest.fixture
async def simulated() -> AsyncIterator[RunningSluice]:
    settings = parse_settings({"backends": [{
        "name": "sim", "kind": "simulated", "models": ["sluice-sim"],
        "tokens_per_second": 500, "first_token_delay": 0.01, "reply_tokens": 8}]})
    async with running_sluice(settings) as running:
        yield running


async def test_the_simulated_model_answers_chat_with_its_default(
    simulated: RunningSluice, client: httpx.AsyncClient
) -> None:
    """A fresh install: no model named, the built-in model answers /chat."""
    response = await client.post(simulated.base_url + URL,
                                 json={"conversation": [{"role": "user", "content": "hi"}]})
    assert response.status_code == 200
    reply = response.json()
    assert reply["model"] == "sluice-sim"
    assert reply["finish_reason"] == "stop"
    assert reply["content"].endswith(".")  # whole sentences, at least `reply_tokens` long
    assert reply["streaming_stats"]["total_chunks"] == len(reply["content"].split()) >= 8
