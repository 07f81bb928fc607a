"""End-to-end: resumable chat streams (``X-Sluice-Resumable: true``), Sluice and the fake upstream.

Resumed twice (``Last-Event-ID``, then ``starting_after``) with the same end
the original would have had; the grace period; a client that leaves before
its status line; cancel; ownership; bad resume requests. Streams without the
header are the ones tests/e2e/test_relay.py covers, unchanged.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from functools import partial
from typing import Any

import httpx
import openai
import pytest
import trio

from server.config import Settings, parse_settings
from server.testing.fake_upstream import FakeUpstream, Scenario
from tests.conftest import PROMPTLY, RunningSluice, chat_body, running_sluice
from tests.e2e.leaving import assert_upstream_closed
from tests.sse_client import Received, receive_stream

URL = "/v1/chat/completions"
RESUMABLE = {"X-Sluice-Resumable": "true"}
GRACE = 0.3


def _settings(upstream: FakeUpstream, **resume: Any) -> Settings:
    return parse_settings({
        "backends": [{"name": "fake", "kind": "openai", "base_url": upstream.base_url,
                      "models": ["*"]}],
        "resume": {"grace": GRACE, **resume},
    })


@pytest.fixture
async def sluice(upstream: FakeUpstream) -> AsyncIterator[RunningSluice]:
    async with running_sluice(_settings(upstream)) as running:
        yield running


async def _resume(client: httpx.AsyncClient, sluice: RunningSluice, stream_id: str,
                  stop_after: int | None = None, query: str = "",
                  headers: dict[str, str] | None = None) -> Received:
    async with client.stream("GET", f"{sluice.base_url}{URL}/{stream_id}/stream{query}",
                             headers=headers) as response:
        return await receive_stream(response, stop_after=stop_after)


async def _collect(response: httpx.Response, into: list[Received]) -> None:
    into.append(await receive_stream(response))


def _ids(received: Received) -> list[int]:
    return [int(line[4:]) for line in received.raw.split(b"\n") if line.startswith(b"id: ")]


async def test_a_resumable_stream_resumed_twice_ends_as_the_original_would_have(
        sluice: RunningSluice, upstream: FakeUpstream) -> None:
    upstream.scenario = Scenario(tokens=15, tps=30)
    async with openai.AsyncOpenAI(base_url=sluice.base_url + "/v1", api_key="k",
                                  max_retries=0) as sdk, httpx.AsyncClient() as client:
        # The original request, with the openai SDK: `id:` lines are no trouble to it.
        raw = await sdk.chat.completions.with_raw_response.create(
            model="m", messages=[{"role": "user", "content": "x"}], stream=True,
            extra_headers=RESUMABLE)
        stream_id = raw.headers["x-sluice-stream-id"]
        assert stream_id.startswith("chatstream_")
        first: list[str] = []
        chunks = 0
        stream = raw.parse()
        async for chunk in stream:
            chunks += 1
            if chunk.choices and chunk.choices[0].delta.content:
                first.append(chunk.choices[0].delta.content)
            if len(first) == 3:
                break
        await stream.close()  # the client drops: the role chunk and 3 tokens seen
        await trio.sleep(0.05)
        assert upstream.open_connections == 1  # the upstream generates on
        auth = {"Authorization": "Bearer k"}
        with trio.fail_after(PROMPTLY):
            second = await _resume(client, sluice, stream_id, stop_after=4,
                                   headers={**auth, "Last-Event-ID": str(chunks - 1)})
            third = await _resume(client, sluice, stream_id, headers=auth,
                                  query=f"?starting_after={_ids(second)[-1]}")
    assert second.status == third.status == 200
    assert second.headers["x-sluice-stream-id"] == stream_id
    assert _ids(second)[0] == chunks
    assert _ids(third) == list(range(_ids(second)[-1] + 1, _ids(third)[-1] + 1))
    assert "".join(first) + second.content + third.content == "".join(
        f"t{i} " for i in range(15))
    assert third.done and not third.errors  # the original's end: [DONE]
    await sluice.settle()
    assert sluice.sample("sluice_stream_outcomes_total", outcome="completed") == 1
    assert sluice.sample("sluice_client_disconnects_total") == 0


async def test_a_resumed_cut_stream_ends_with_the_same_in_band_error(
        sluice: RunningSluice, upstream: FakeUpstream, client: httpx.AsyncClient) -> None:
    upstream.scenario = Scenario(tokens=6, cut_after=3)
    async with client.stream("POST", sluice.base_url + URL, json=chat_body(),
                             headers=RESUMABLE) as response:
        original = await receive_stream(response)
    resumed = await _resume(client, sluice, response.headers["x-sluice-stream-id"],
                            headers={"Last-Event-ID": "1"})
    assert original.content == "t0 t1 t2 " and not original.done
    assert resumed.content == "t1 t2 " and not resumed.done
    assert resumed.errors == original.errors
    assert original.errors[0]["code"] == "stream_truncated"


async def test_an_unread_stream_runs_on_for_the_grace_period_then_ends(
        sluice: RunningSluice, upstream: FakeUpstream, client: httpx.AsyncClient) -> None:
    upstream.scenario = Scenario(tokens=1000, tps=20)
    async with client.stream("POST", sluice.base_url + URL, json=chat_body(),
                             headers=RESUMABLE) as response:
        await receive_stream(response, stop_after=2)
    await assert_upstream_closed(upstream, trio.current_time(), after=GRACE)
    await sluice.settle()
    assert sluice.sample("sluice_stream_outcomes_total", outcome="client_disconnect") == 1
    late = await _resume(client, sluice, response.headers["x-sluice-stream-id"])
    assert late.content.startswith("t0 t1 ") and not late.done
    assert late.errors[-1]["code"] == "stream_cancelled"
    assert "no client read the stream" in late.errors[-1]["message"]


async def test_a_client_that_leaves_before_its_status_line_ends_the_stream_at_once(
        sluice: RunningSluice, upstream: FakeUpstream) -> None:
    """It was never told the stream's id, so nobody can resume it: no grace period."""
    upstream.scenario = Scenario(tokens=5, first_delay=30)
    async with httpx.AsyncClient() as client, trio.open_nursery() as nursery:
        nursery.start_soon(partial(client.post, sluice.base_url + URL, json=chat_body(),
                                   headers=RESUMABLE))
        with trio.fail_after(PROMPTLY):
            await upstream.wait_for_request(1)
        nursery.cancel_scope.cancel()
    await assert_upstream_closed(upstream, trio.current_time())
    await sluice.settle()
    assert sluice.sample("sluice_stream_outcomes_total", outcome="client_disconnect") == 1


async def test_cancel_stops_the_upstream_and_ends_every_reader(
        sluice: RunningSluice, upstream: FakeUpstream, client: httpx.AsyncClient) -> None:
    upstream.scenario = Scenario(tokens=1000, tps=20)
    got: list[Received] = []
    async with client.stream("POST", sluice.base_url + URL, json=chat_body(),
                             headers=RESUMABLE) as response:
        stream_id = response.headers["x-sluice-stream-id"]
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: _collect(response, got))
            await trio.sleep(0.15)  # a few tokens flow to the reader
            cancelled_at = trio.current_time()
            cancel = await client.post(f"{sluice.base_url}{URL}/{stream_id}/cancel")
            await assert_upstream_closed(upstream, cancelled_at)
    [rest] = got
    assert cancel.json() == {"id": stream_id, "object": "chat.completion.stream",
                             "status": "cancelled", "last_event_id": cancel.json()[
                                 "last_event_id"]}
    assert rest.content.startswith("t0 t1 ")
    assert not rest.done and rest.errors[-1]["code"] == "stream_cancelled"
    again = await client.post(f"{sluice.base_url}{URL}/{stream_id}/cancel")
    assert again.json()["status"] == "ended"
    await sluice.settle()
    assert sluice.sample("sluice_stream_outcomes_total", outcome="cancelled") == 1


async def test_only_the_client_that_started_it_may_resume_or_cancel_it(
        sluice: RunningSluice, upstream: FakeUpstream, client: httpx.AsyncClient) -> None:
    upstream.scenario = Scenario(tokens=1000, tps=20)
    mine = {**RESUMABLE, "Authorization": "Bearer mine"}
    async with client.stream("POST", sluice.base_url + URL, json=chat_body(),
                             headers=mine) as response:
        stream_id = response.headers["x-sluice-stream-id"]
        await receive_stream(response, stop_after=1)
    base = f"{sluice.base_url}{URL}"
    for headers in ({}, {"Authorization": "Bearer theirs"}):
        assert (await client.get(f"{base}/{stream_id}/stream", headers=headers)).status_code \
            == 404
        assert (await client.post(f"{base}/{stream_id}/cancel", headers=headers)).status_code \
            == 404
    assert (await client.get(f"{base}/chatstream_{'0' * 32}/stream")).status_code == 404
    cancel = await client.post(f"{base}/{stream_id}/cancel",
                               headers={"Authorization": "Bearer mine"})
    assert cancel.json()["status"] == "cancelled"


async def test_an_early_failure_keeps_its_status_for_the_original_and_a_resume(
        sluice: RunningSluice, upstream: FakeUpstream, client: httpx.AsyncClient) -> None:
    upstream.scenario = Scenario(status=429, retry_after=3)
    original = await client.post(sluice.base_url + URL, json=chat_body(), headers=RESUMABLE)
    assert original.status_code == 429 and original.headers["retry-after"] == "3"
    stream_id = original.headers["x-sluice-stream-id"]
    resumed = await client.get(f"{sluice.base_url}{URL}/{stream_id}/stream")
    assert resumed.status_code == 429
    assert resumed.json()["error"]["error_id"] == original.json()["error"]["error_id"]


@pytest.mark.parametrize(("method", "path", "body", "headers", "param"), [
    ("POST", "", chat_body(), {"X-Sluice-Resumable": "yes"}, "X-Sluice-Resumable"),
    ("POST", "", chat_body(stream=False), RESUMABLE, "stream"),
    ("GET", "/{id}/stream", None, {"Last-Event-ID": "abc"}, "Last-Event-ID"),
    ("GET", "/{id}/stream?starting_after=-2", None, {}, "starting_after"),
    ("GET", "/{id}/stream?starting_after=99999", None, {}, "starting_after"),
])
async def test_bad_resume_requests_are_400s(
        sluice: RunningSluice, upstream: FakeUpstream, client: httpx.AsyncClient,
        method: str, path: str, body: Any, headers: dict[str, str], param: str) -> None:
    upstream.scenario = Scenario(tokens=3)
    created = await client.post(sluice.base_url + URL, json=chat_body(), headers=RESUMABLE)
    response = await client.request(
        method, sluice.base_url + URL + path.format(id=created.headers["x-sluice-stream-id"]),
        json=body, headers=headers)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == param


async def test_a_stream_without_the_header_is_not_resumable(
        sluice: RunningSluice, client: httpx.AsyncClient) -> None:
    response = await client.post(sluice.base_url + URL, json=chat_body())
    assert "x-sluice-stream-id" not in response.headers
    assert b"\nid: " not in b"\n" + response.content
