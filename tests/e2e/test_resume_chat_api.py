"""End-to-end: resumable ``/chat`` streams, and the limits every resume counts against.

``/chat`` (the browser API) opts in with the same header as ``/v1`` and is
resumed the way a browser's ``EventSource`` does it: ``GET`` with
``Last-Event-ID``. Resumes, polls and cancels are requests for the rate
limits — the gateway's per client, and a key's requests per minute — but
they take no second concurrency slot: the stream they read holds its own.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import trio

from server.config import parse_settings
from server.keys.secret import new_key
from server.testing.fake_upstream import FakeUpstream, Scenario
from tests.conftest import PROMPTLY, RunningSluice, chat_body, running_sluice
from tests.e2e.leaving import assert_upstream_closed
from tests.e2e.test_keys import bearer, keyed_settings
from tests.sse_client import Received, receive_stream

RESUMABLE = {"X-Sluice-Resumable": "true"}
GRACE = 0.3


def _chat(**fields: Any) -> dict[str, Any]:
    return {"conversation": [{"role": "user", "content": "hi"}], "model": "m",
            "stream": True, **fields}


@pytest.fixture
async def sluice(upstream: FakeUpstream) -> AsyncIterator[RunningSluice]:
    settings = parse_settings({
        "backends": [{"name": "fake", "kind": "openai", "base_url": upstream.base_url,
                      "models": ["*"]}],
        "resume": {"grace": GRACE},
    })
    async with running_sluice(settings) as running:
        yield running


def _ids(received: Received) -> list[int]:
    return [int(line[4:]) for line in received.raw.split(b"\n") if line.startswith(b"id: ")]


def _events(received: Received) -> list[dict[str, Any]]:
    return [json.loads(event) for event in received.events]


async def _start(client: httpx.AsyncClient, sluice: RunningSluice,
                 stop_after: int) -> tuple[httpx.Response, Received]:
    """Start a resumable /chat stream and leave after ``stop_after`` content events."""
    async with client.stream("POST", sluice.base_url + "/chat", json=_chat(),
                             headers=RESUMABLE) as response:
        return response, await receive_stream(response, stop_after=stop_after)


async def _resume(client: httpx.AsyncClient, sluice: RunningSluice, stream_id: str,
                  query: str = "", **headers: str) -> Received:
    async with client.stream("GET", f"{sluice.base_url}/chat/{stream_id}/stream{query}",
                             headers=headers) as response:
        return await receive_stream(response)


async def test_a_chat_api_stream_resumed_with_last_event_id_ends_as_the_original(
        sluice: RunningSluice, upstream: FakeUpstream, client: httpx.AsyncClient) -> None:
    upstream.scenario = Scenario(tokens=12, tps=30)
    response, first = await _start(client, sluice, stop_after=3)  # then the page reloads
    stream_id = response.headers["x-sluice-stream-id"]
    assert response.status_code == 200 and stream_id.startswith("chatstream_")
    assert _ids(first) == [0, 1, 2]
    assert [event["content"] for event in _events(first)] == ["t0 ", "t1 ", "t2 "]
    await trio.sleep(0.05)
    assert upstream.open_connections == 1  # the upstream generates on
    with trio.fail_after(PROMPTLY):
        # What an EventSource sends on its own when it reconnects.
        second = await _resume(client, sluice, stream_id, **{"Last-Event-ID": "2"})
    events = _events(second)
    assert _ids(second) == list(range(3, 3 + len(events)))
    assert "".join(event["content"] for event in events) == "".join(
        f"t{i} " for i in range(3, 12))
    done = events[-1]
    assert done["done"] is True and done["finish_reason"] == "stop"
    assert done["full_content"] == "".join(f"t{i} " for i in range(12))
    assert second.headers["x-sluice-stream-id"] == stream_id
    # An EventSource opened at ?starting_after=0 that reconnects keeps its URL and sends the
    # newer position in the header: the header wins.
    third = await _resume(client, sluice, stream_id, "?starting_after=0",
                          **{"Last-Event-ID": str(_ids(second)[-2])})
    assert _ids(third) == [_ids(second)[-1]] and _events(third)[-1]["done"] is True
    await sluice.settle()
    assert sluice.sample("sluice_stream_outcomes_total", outcome="completed") == 1


async def test_a_chat_api_stream_is_cancelled_and_its_readers_are_told(
        sluice: RunningSluice, upstream: FakeUpstream, client: httpx.AsyncClient) -> None:
    upstream.scenario = Scenario(tokens=1000, tps=20)
    response, _ = await _start(client, sluice, stop_after=2)
    stream_id = response.headers["x-sluice-stream-id"]
    cancelled_at = trio.current_time()
    cancel = await client.post(f"{sluice.base_url}/chat/{stream_id}/cancel")
    await assert_upstream_closed(upstream, cancelled_at)
    assert cancel.json()["object"] == "chat.stream" and cancel.json()["status"] == "cancelled"
    late = await _resume(client, sluice, stream_id)
    done = _events(late)[-1]
    assert done["done"] is True and done["error_code"] == "stream_cancelled"
    assert done["full_content"].startswith("t0 t1 ")
    # A /chat stream is not a /v1 one: each API resumes only its own.
    wrong = await client.get(f"{sluice.base_url}/v1/chat/completions/{stream_id}/stream")
    assert wrong.status_code == 404


async def test_an_unread_chat_api_stream_ends_after_the_grace_period(
        sluice: RunningSluice, upstream: FakeUpstream, client: httpx.AsyncClient) -> None:
    upstream.scenario = Scenario(tokens=1000, tps=20)
    await _start(client, sluice, stop_after=1)
    await assert_upstream_closed(upstream, trio.current_time(), after=GRACE)


@pytest.mark.parametrize(("body", "headers", "param"), [
    (_chat(stream=False), RESUMABLE, "stream"),
    (_chat(), {"X-Sluice-Resumable": "maybe"}, "X-Sluice-Resumable"),
])
async def test_bad_chat_api_opt_ins_are_400s(
        sluice: RunningSluice, client: httpx.AsyncClient, body: dict[str, Any],
        headers: dict[str, str], param: str) -> None:
    response = await client.post(sluice.base_url + "/chat", json=body, headers=headers)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == param


async def test_resumes_count_against_the_clients_rate_limit(
        upstream: FakeUpstream, client: httpx.AsyncClient) -> None:
    settings = parse_settings({
        "backends": [{"name": "fake", "kind": "openai", "base_url": upstream.base_url,
                      "models": ["*"]}],
        "admission": {"requests_per_minute": 3, "burst": 3},
    })
    upstream.scenario = Scenario(tokens=3)
    async with running_sluice(settings) as sluice:
        created = await client.post(sluice.base_url + "/v1/chat/completions",
                                    json=chat_body(), headers=RESUMABLE)
        stream_id = created.headers["x-sluice-stream-id"]
        url = f"{sluice.base_url}/v1/chat/completions/{stream_id}/stream"
        assert (await client.get(url)).status_code == 200
        assert (await client.get(url)).status_code == 200
        refused = await client.get(url)
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "rate_limit_exceeded"
    assert float(refused.headers["retry-after"]) > 0


async def test_with_keys_a_resume_needs_the_key_counts_its_rpm_and_takes_no_slot(
        upstream: FakeUpstream, client: httpx.AsyncClient) -> None:
    mine, theirs = new_key(), new_key()
    settings = keyed_settings(upstream.base_url, {
        "mine": (mine, {"rpm": 3, "burst": 3, "max_streams": 1}),
        "theirs": (theirs, {}),
    })
    upstream.scenario = Scenario(tokens=1000, tps=20)
    async with running_sluice(settings) as sluice:
        async with client.stream("POST", sluice.base_url + "/v1/chat/completions",
                                 json=chat_body(), headers={**RESUMABLE, **bearer(mine)},
                                 ) as response:
            await receive_stream(response, stop_after=1)  # request 1 of 3; the one slot
        stream_id = response.headers["x-sluice-stream-id"]
        base = f"{sluice.base_url}/v1/chat/completions/{stream_id}"
        assert (await client.get(base + "/stream")).status_code == 401
        assert (await client.get(base + "/stream", headers=bearer(theirs))).status_code == 404
        # Its one stream is live and holds the key's one slot: the resume takes no second.
        async with client.stream("GET", base + "/stream", headers=bearer(mine)) as resumed:
            assert resumed.status_code == 200  # request 2 of 3
            await receive_stream(resumed, stop_after=1)
        assert (await client.post(base + "/cancel", headers=bearer(mine))).status_code == 200
        refused = await client.get(base + "/stream", headers=bearer(mine))  # 4 > 3
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "rate_limit_exceeded"
    assert refused.headers["x-ratelimit-limit-requests"] == "3"
