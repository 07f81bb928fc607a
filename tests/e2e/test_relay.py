"""End-to-end: one stream's life through the real server, against a real fake upstream.

Each test names the behaviour it proves (the numbers are the core issue's).
Tests taking the ``kind`` or ``sluice_of_kind`` fixture run once per HTTP
backend kind (``openai``, ``ollama``): disconnects, timeouts, refused
connections and cuts must behave alike whatever the upstream's wire format.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from functools import partial
from typing import Any

import httpx
import pytest
import trio

from server.config import Settings
from server.testing.fake_upstream import FakeUpstream, Scenario
from tests.conftest import (
    CLOSE_BOUND,
    PROMPTLY,
    RunningSluice,
    chat_body,
    running_sluice,
    settings_for,
)
from tests.sse_client import receive_stream

URL = "/v1/chat/completions"


# What every HTTP backend kind must do alike runs against each: the fake upstream
# answers OpenAI SSE at /v1 and Ollama's NDJSON /api/chat at its root.
@pytest.fixture(params=["openai", "ollama"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def settings_of(kind: str, upstream: FakeUpstream, **overrides: Any) -> Settings:
    url = upstream.base_url if kind == "openai" else upstream.origin
    return settings_for(url, kind, **overrides)


@pytest.fixture
async def sluice_of_kind(kind: str, upstream: FakeUpstream) -> AsyncIterator[RunningSluice]:
    async with running_sluice(settings_of(kind, upstream)) as running:
        yield running

# Pace of the "no buffering" test: chunks this far apart must arrive this far apart.
PACED_INTERVAL = 0.1
# A chunk counts as held back if it reaches the client later than this after it was sent.
HELD_BACK = 0.05


async def test_stream_relays_all_chunks_and_ends_right_after_done(
    sluice: RunningSluice, upstream: FakeUpstream, client: httpx.AsyncClient
) -> None:
    """Behaviours 6 and 8: complete stream, [DONE] last, streaming headers."""
    async with client.stream("POST", sluice.base_url + URL, json=chat_body(),
                             headers={"X-Request-ID": "req-abc"}) as response:
        got = await receive_stream(response)
    assert got.status == 200
    assert got.content == "t0 t1 t2 t3 t4 "
    assert got.done
    assert got.raw.endswith(b"data: [DONE]\n\n")  # and nothing after it
    assert got.headers["content-type"].startswith("text/event-stream")
    assert got.headers["cache-control"] == "no-cache"
    assert got.headers["x-accel-buffering"] == "no"
    assert got.headers["x-request-id"] == "req-abc"
    assert "content-length" not in got.headers
    await sluice.settle()
    assert sluice.sample("sluice_stream_outcomes_total", outcome="completed") == 1
    assert sluice.sample("sluice_time_to_first_chunk_seconds_count", backend="fake") == 1


async def test_a_completed_stream_is_logged_at_debug_a_client_leaving_at_info(
    sluice: RunningSluice, upstream: FakeUpstream, client: httpx.AsyncClient,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="sluice.stream")
    async with client.stream("POST", sluice.base_url + URL, json=chat_body(),
                             headers={"X-Request-ID": "req-done"}) as response:
        await receive_stream(response)
    upstream.scenario = Scenario(tokens=1000, tps=50)
    async with client.stream("POST", sluice.base_url + URL, json=chat_body(),
                             headers={"X-Request-ID": "req-left"}) as response:
        await receive_stream(response, stop_after=1)
    await sluice.settle()
    levels = {r.getMessage().split()[1]: r.levelno for r in caplog.records
              if r.name == "sluice.stream"}
    assert levels == {"req-done": logging.DEBUG, "req-left": logging.INFO}


async def test_chunks_are_not_buffered(
    sluice: RunningSluice, upstream: FakeUpstream, client: httpx.AsyncClient
) -> None:
    """Behaviour 1: each chunk reaches the client as the upstream sends it."""
    upstream.scenario = Scenario(tokens=6, tps=1 / PACED_INTERVAL, timestamps=True)
    async with client.stream("POST", sluice.base_url + URL, json=chat_body()) as response:
        got = await receive_stream(response)
    wall_arrival = time.time() - (trio.current_time() - got.arrivals[-1])
    content = [(chunk, arrival) for chunk, arrival in zip(got.chunks, got.arrivals, strict=False)
               if "sent_at" in chunk]
    assert len(content) == 6
    # Arrival times track send times: gaps between arrivals match the upstream's pace...
    gaps = [b[1] - a[1] for a, b in itertools.pairwise(content)]
    assert all(gap > PACED_INTERVAL / 2 for gap in gaps), gaps
    # ...and the last chunk arrived within HELD_BACK of being sent.
    assert wall_arrival - content[-1][0]["sent_at"] < HELD_BACK


async def test_client_disconnect_mid_stream_closes_the_upstream(
    sluice_of_kind: RunningSluice, upstream: FakeUpstream, client: httpx.AsyncClient
) -> None:
    """Behaviour 2: the client leaves → the upstream connection closes, gauges return."""
    sluice = sluice_of_kind
    upstream.scenario = Scenario(tokens=1000, tps=20)
    with trio.fail_after(PROMPTLY):
        async with client.stream("POST", sluice.base_url + URL, json=chat_body()) as response:
            got = await receive_stream(response, stop_after=3)
            assert got.content == "t0 t1 t2 "
            assert sluice.sample("sluice_active_streams") == 1
        # Leaving the block closed the response; a streaming httpx response that was not
        # read to the end is not returned to the pool: its connection is closed.
        left_at = trio.current_time()
        await upstream.wait_all_closed()
    await _assert_cleaned_up(sluice, upstream, left_at)


@pytest.mark.parametrize("stream", [True, False])
async def test_client_disconnect_before_first_token_closes_the_upstream(
    sluice_of_kind: RunningSluice, upstream: FakeUpstream, stream: bool
) -> None:
    """Behaviour 2, before anything was sent (no status line yet), streaming or not."""
    sluice = sluice_of_kind
    upstream.scenario = Scenario(tokens=5, first_delay=30)
    async with httpx.AsyncClient() as client, trio.open_nursery() as nursery:
        nursery.start_soon(partial(client.post, sluice.base_url + URL, json=chat_body(stream)))
        with trio.fail_after(PROMPTLY):
            await upstream.wait_for_request(1)
        assert sluice.sample("sluice_active_streams") == 1
        nursery.cancel_scope.cancel()  # the client gives up: its connection closes
    left_at = trio.current_time()
    with trio.fail_after(PROMPTLY):
        await upstream.wait_all_closed()
    await _assert_cleaned_up(sluice, upstream, left_at)


async def _assert_cleaned_up(sluice: RunningSluice, upstream: FakeUpstream,
                             left_at: float) -> None:
    closed_at = upstream.connections[0].closed_at
    assert closed_at is not None
    assert closed_at - left_at < CLOSE_BOUND
    await sluice.settle()
    assert upstream.open_connections == 0
    assert sluice.sample("sluice_client_disconnects_total") == 1
    assert sluice.sample("sluice_stream_outcomes_total", outcome="client_disconnect") == 1


@pytest.mark.parametrize(
    ("scenario", "status", "code"),
    [
        (Scenario(status=400, error_code="context_length_exceeded",
                  error_message="This model's maximum context length is 8192 tokens."),
         400, "context_length_exceeded"),
        (Scenario(status=401, error_code="invalid_api_key"), 401, "invalid_api_key"),
        (Scenario(status=403), 403, None),
        (Scenario(status=404, error_code="model_not_found"), 404, "model_not_found"),
        (Scenario(status=429, retry_after=7), 429, None),
        (Scenario(status=500), 502, None),
        (Scenario(status=503), 502, None),
        (Scenario(reset_before_headers=True), 502, None),
        # llama.cpp's server reports some failures as 200 with an empty body, or with
        # an error event before any content: neither is a successful answer.
        (Scenario(empty_ok=True), 502, "stream_truncated"),
        (Scenario(tokens=5, error_event_after=0), 502, None),
    ],
)
async def test_errors_before_the_first_byte_get_a_real_status(
    sluice: RunningSluice, upstream: FakeUpstream, client: httpx.AsyncClient,
    scenario: Scenario, status: int, code: str | None,
) -> None:
    """Behaviour 3: upstream refusals map to statuses with an OpenAI error body."""
    upstream.scenario = scenario
    response = await client.post(sluice.base_url + URL, json=chat_body())
    assert response.status_code == status
    error = response.json()["error"]
    assert set(error) >= {"message", "type", "param", "code"}
    if code is not None:
        assert error["code"] == code
    if scenario.error_message:
        assert error["message"] == scenario.error_message
    if scenario.retry_after is not None:
        assert response.headers["retry-after"] == "7"
    assert upstream.base_url not in response.text
    assert "127.0.0.1" not in response.text


async def test_connection_refused_is_502(client: httpx.AsyncClient, kind: str) -> None:
    with trio.socket.socket() as sock:  # a port nobody listens on
        await sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}" + ("/v1" if kind == "openai" else "")
    async with running_sluice(settings_for(url, kind)) as sluice:
        response = await client.post(sluice.base_url + URL, json=chat_body())
        assert response.status_code == 502
        assert response.json()["error"]["type"] == "upstream_error"
        assert response.json()["error"]["message"] == \
            "Could not connect to the upstream model server."
        assert str(port) not in response.text


@pytest.mark.parametrize("scenario", [Scenario(first_delay=30), Scenario(no_response=True)])
async def test_first_chunk_timeout_is_504(
    upstream: FakeUpstream, client: httpx.AsyncClient, kind: str, scenario: Scenario,
) -> None:
    upstream.scenario = scenario
    async with running_sluice(settings_of(kind, upstream, first_chunk=0.3)) as sluice:
        with trio.fail_after(PROMPTLY):
            response = await client.post(sluice.base_url + URL, json=chat_body())
        assert response.status_code == 504
        assert response.json()["error"]["code"] == "first_chunk_timeout"
        with trio.fail_after(PROMPTLY):
            await upstream.wait_all_closed()  # the silent upstream was hung up on
        await sluice.settle()
        assert sluice.sample("sluice_stream_outcomes_total", outcome="upstream_timeout") == 1


@pytest.mark.parametrize(
    ("scenario", "code"),
    [
        (Scenario(tokens=10, cut_after=3), "stream_truncated"),
        (Scenario(tokens=10, error_event_after=3), None),
        (Scenario(tokens=10, malformed_after=3), None),
        (Scenario(tokens=5, omit_finish=True, no_done=True), "stream_truncated"),
    ],
)
async def test_errors_after_the_first_byte_travel_in_band(
    sluice: RunningSluice, upstream: FakeUpstream, client: httpx.AsyncClient,
    scenario: Scenario, code: str | None,
) -> None:
    """Behaviour 4: an in-band error event, then the body ends without [DONE]."""
    upstream.scenario = scenario
    async with client.stream("POST", sluice.base_url + URL, json=chat_body()) as response:
        got = await receive_stream(response)
    assert got.status == 200
    assert got.content.startswith("t0 t1 t2 ")
    assert not got.done
    assert b"[DONE]" not in got.raw
    assert len(got.errors) == 1
    assert got.chunks[-1] == {"error": got.errors[0]}  # the error is the last event
    assert got.errors[0]["error_id"].startswith("err_")
    if code is not None:
        assert got.errors[0]["code"] == code
    await sluice.settle()
    assert sluice.sample("sluice_stream_outcomes_total", outcome="upstream_error") == 1


async def test_idle_timeout_mid_stream_is_in_band(
    upstream: FakeUpstream, client: httpx.AsyncClient, kind: str
) -> None:
    upstream.scenario = Scenario(tokens=10, stall_after=2)
    async with running_sluice(settings_of(kind, upstream, idle=0.3)) as sluice:
        with trio.fail_after(PROMPTLY):
            async with client.stream("POST", sluice.base_url + URL, json=chat_body()) as response:
                got = await receive_stream(response)
        assert got.content == "t0 t1 "
        assert [e["code"] for e in got.errors] == ["idle_timeout"]
        assert not got.done
        with trio.fail_after(PROMPTLY):
            await upstream.wait_all_closed()


async def test_missing_done_after_finish_is_completed_by_sluice(
    sluice: RunningSluice, upstream: FakeUpstream, client: httpx.AsyncClient
) -> None:
    """Behaviour 4's exception: finish_reason arrived, only [DONE] is missing."""
    upstream.scenario = Scenario(tokens=4, no_done=True)
    async with client.stream("POST", sluice.base_url + URL, json=chat_body()) as response:
        got = await receive_stream(response)
    assert got.content == "t0 t1 t2 t3 "
    assert got.done and not got.errors


async def test_keepalives_during_silence_and_upstream_comments_dropped(
    upstream: FakeUpstream, client: httpx.AsyncClient
) -> None:
    """Behaviour 5: `: keepalive\\n` with no blank line; upstream comments never pass."""
    upstream.scenario = Scenario(tokens=3, first_delay=0.5, keepalive_comments=True)
    settings = settings_for(upstream.base_url, keepalive_interval=0.1)
    async with running_sluice(settings) as sluice:
        async with client.stream("POST", sluice.base_url + URL, json=chat_body()) as response:
            got = await receive_stream(response)
        assert got.content == "t0 t1 t2 "
        assert got.done
        assert got.raw.startswith(b": keepalive\n")
        assert b": keepalive\n\n" not in got.raw  # never a blank line after our comment
        assert b"ping" not in got.raw and b":\n" not in got.raw.replace(b": keepalive\n", b"")
        # Every event the client receives carries a JSON data line.
        blocks = [b for b in got.raw.replace(b": keepalive\n", b"").split(b"\n\n") if b]
        assert blocks and all(b.startswith(b"data: ") for b in blocks)


@pytest.mark.parametrize("scenario", [Scenario(tokens=6, crlf=True),
                                      Scenario(tokens=6, split_writes=True),
                                      Scenario(tokens=6, crlf=True, split_writes=True),
                                      Scenario(tokens=6, no_done=True, split_writes=True)])
async def test_upstream_framing_variants_are_parsed(
    sluice_of_kind: RunningSluice, upstream: FakeUpstream, client: httpx.AsyncClient,
    scenario: Scenario,
) -> None:
    """Behaviour 11, end to end: CRLF line endings, events (or NDJSON lines) split
    across reads, a last line without its end."""
    upstream.scenario = scenario
    url = sluice_of_kind.base_url + URL
    async with client.stream("POST", url, json=chat_body()) as response:
        got = await receive_stream(response)
    assert got.content == "t0 t1 t2 t3 t4 t5 "
    assert got.done


async def test_usage_chunk_when_asked(
    sluice: RunningSluice, upstream: FakeUpstream, client: httpx.AsyncClient
) -> None:
    body = chat_body(stream_options={"include_usage": True}, tools=[], seed=7)
    async with client.stream("POST", sluice.base_url + URL, json=body) as response:
        got = await receive_stream(response)
    usage = [c for c in got.chunks if c.get("usage")]
    assert len(usage) == 1 and usage[0]["choices"] == []
    assert usage[0]["usage"]["completion_tokens"] == 5
    # Fields Sluice does not use reach the upstream unchanged.
    sent = upstream.requests[0].json
    assert sent is not None and sent["seed"] == 7 and sent["tools"] == []


async def test_non_streaming_request_is_aggregated(
    sluice_of_kind: RunningSluice, upstream: FakeUpstream, client: httpx.AsyncClient
) -> None:
    """Behaviour 9: one chat.completion from the upstream's stream."""
    response = await client.post(sluice_of_kind.base_url + URL, json=chat_body(False))
    assert response.status_code == 200
    completion = response.json()
    assert completion["object"] == "chat.completion"
    assert completion["model"] == "fake-model"
    assert completion["choices"][0]["message"] == {"role": "assistant",
                                                   "content": "t0 t1 t2 t3 t4 "}
    assert completion["choices"][0]["finish_reason"] == "stop"
    usage = completion["usage"]
    assert usage["completion_tokens"] == 5
    assert usage["total_tokens"] == usage["prompt_tokens"] + 5
    sent = upstream.requests[0].json
    assert sent is not None and sent["stream"] is True  # Sluice streams and aggregates itself


async def test_a_backend_that_rejects_stream_options_is_never_sent_them(
    upstream: FakeUpstream, client: httpx.AsyncClient
) -> None:
    settings = settings_for(upstream.base_url)
    backend = replace(settings.backends[0], stream_options=False)
    async with running_sluice(replace(settings, backends=(backend,))) as sluice:
        response = await client.post(sluice.base_url + URL, json=chat_body(False))
        assert response.status_code == 200
        completion = response.json()
        assert completion["choices"][0]["message"]["content"] == "t0 t1 t2 t3 t4 "
        assert completion.get("usage") is None  # not asked for, so none came
        body = chat_body(stream_options={"include_usage": True})
        async with client.stream("POST", sluice.base_url + URL, json=body) as streamed:
            got = await receive_stream(streamed)
        assert got.done and got.content == "t0 t1 t2 t3 t4 "
    sent = [request.json for request in upstream.requests]
    assert len(sent) == 2
    assert all(body is not None and "stream_options" not in body and body["stream"] is True
               for body in sent)


async def test_non_streaming_upstream_cut_is_an_error_status(
    sluice_of_kind: RunningSluice, upstream: FakeUpstream, client: httpx.AsyncClient
) -> None:
    upstream.scenario = Scenario(tokens=10, cut_after=3)
    response = await client.post(sluice_of_kind.base_url + URL, json=chat_body(False))
    assert response.status_code == 502
    assert response.json()["error"]["code"] == "stream_truncated"


@pytest.mark.slow
@pytest.mark.timeout(150)
async def test_a_stream_longer_than_sixty_seconds_completes(
    sluice: RunningSluice, upstream: FakeUpstream, client: httpx.AsyncClient
) -> None:
    """Behaviour 7: no default timeout (Quart's 60 s, httpx's 5 s) cuts a healthy stream."""
    upstream.scenario = Scenario(tokens=32, tps=0.5)  # a chunk every 2 s for 64 s
    started = trio.current_time()
    async with client.stream("POST", sluice.base_url + URL, json=chat_body()) as response:
        got = await receive_stream(response)
    assert trio.current_time() - started > 60
    assert got.content == "".join(f"t{i} " for i in range(32))
    assert got.done


async def test_finished_streams_reuse_the_upstream_connection(
    sluice: RunningSluice, upstream: FakeUpstream, client: httpx.AsyncClient
) -> None:
    """A stream read to its end leaves its connection idle; the next stream reuses it."""
    for _ in range(3):
        async with client.stream("POST", sluice.base_url + URL, json=chat_body()) as response:
            assert (await receive_stream(response)).done
    assert len(upstream.requests) == 3
    assert [c.requests for c in upstream.connections] == [3]
