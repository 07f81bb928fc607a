"""End-to-end: detached streams shared between two Sluice instances through a real Redis.

Instance A produces; instance B (its own app, same Redis) resumes, polls and
cancels A's streams; and when A's process is killed outright, a reader on B
learns it within the liveness bound instead of waiting forever.
"""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import trio
from openai.types.responses import ResponseStreamEvent

from server.config import Settings, parse_settings
from server.errors import UpstreamStatusError, openai_error_body
from server.stream.redis_log import LIVENESS, error_from_json, error_json
from server.testing.fake_upstream import FakeUpstream, Scenario
from tests.conftest import PROMPTLY, RunningSluice, chat_body, running_sluice
from tests.e2e.leaving import assert_upstream_closed
from tests.e2e.sluice_process import sluice_process
from tests.sse_client import receive_stream

URL = "/v1/chat/completions"
RESUMABLE = {"X-Sluice-Resumable": "true", "Authorization": "Bearer k"}
AUTH = {"Authorization": "Bearer k"}


def _settings(upstream: FakeUpstream, redis_url: str, **resume: Any) -> Settings:
    return parse_settings({
        "backends": [{"name": "fake", "kind": "openai", "base_url": upstream.base_url,
                      "models": ["*"]}],
        "resume": {"redis_url": redis_url, **resume},
    })


@pytest.fixture
async def pair(upstream: FakeUpstream,
               redis_url: str) -> AsyncIterator[tuple[RunningSluice, RunningSluice]]:
    settings = _settings(upstream, redis_url)
    async with running_sluice(settings) as a, running_sluice(settings) as b:
        yield a, b


def _ids(raw: bytes) -> list[int]:
    return [int(line[4:]) for line in raw.split(b"\n") if line.startswith(b"id: ")]


async def test_a_chat_stream_resumed_on_another_instance_then_on_its_own(
        pair: tuple[RunningSluice, RunningSluice], upstream: FakeUpstream) -> None:
    a, b = pair
    upstream.scenario = Scenario(tokens=15, tps=30)
    async with httpx.AsyncClient() as client:
        async with client.stream("POST", a.base_url + URL, json=chat_body(),
                                 headers=RESUMABLE) as response:
            stream_id = response.headers["x-sluice-stream-id"]
            first = await receive_stream(response, stop_after=3)
        with trio.fail_after(PROMPTLY):
            async with client.stream("GET", f"{b.base_url}{URL}/{stream_id}/stream",
                                     headers={**AUTH, "Last-Event-ID": str(_ids(first.raw)[-1])}
                                     ) as response:
                assert response.headers["x-sluice-stream-id"] == stream_id
                second = await receive_stream(response, stop_after=4)
            async with client.stream(
                    "GET", f"{a.base_url}{URL}/{stream_id}/stream?starting_after="
                    f"{_ids(second.raw)[-1]}", headers=AUTH) as response:
                third = await receive_stream(response)
        elsewhere = await client.get(f"{b.base_url}{URL}/{stream_id}/stream",
                                     headers={"Authorization": "Bearer other"})
    ids = _ids(first.raw) + _ids(second.raw) + _ids(third.raw)
    assert ids == list(range(len(ids)))
    assert first.content + second.content + third.content == "".join(
        f"t{i} " for i in range(15))
    assert third.done and not third.errors
    assert elsewhere.status_code == 404  # another client's stream, on any instance


async def test_a_background_response_resumed_polled_and_cancelled_elsewhere(
        pair: tuple[RunningSluice, RunningSluice], upstream: FakeUpstream) -> None:
    a, b = pair
    upstream.scenario = Scenario(tokens=10, tps=30)
    async with openai.AsyncOpenAI(base_url=a.base_url + "/v1", api_key="k",
                                  max_retries=0) as on_a, \
            openai.AsyncOpenAI(base_url=b.base_url + "/v1", api_key="k",
                               max_retries=0) as on_b:
        stream = await on_a.responses.create(model="m", input="x", background=True,
                                             stream=True)
        before: list[ResponseStreamEvent] = []
        async for event in stream:
            before.append(event)
            if event.type == "response.output_text.delta":
                break
        await stream.close()
        response_id = before[0].response.id  # type: ignore[union-attr]
        with trio.fail_after(PROMPTLY * 2):
            rest = [e async for e in await on_b.responses.retrieve(
                response_id, stream=True, starting_after=before[-1].sequence_number)]
        polled = await on_b.responses.retrieve(response_id)
        assert polled.status == "completed" and polled.output_text == "".join(
            f"t{i} " for i in range(10))
        assert [e.sequence_number for e in before + rest] == list(range(len(before + rest)))
        assert rest[-1].type == "response.completed"

        upstream.scenario = Scenario(tokens=1000, tps=20)
        long = await on_a.responses.create(model="m", input="x", background=True)
        with trio.fail_after(PROMPTLY):
            await upstream.wait_for_request(2)
        cancelled_at = trio.current_time()
        cancelled = await on_b.responses.cancel(long.id)  # produced on A, cancelled via B
        assert cancelled.status == "cancelled"
    connection = upstream.connections[-1]
    assert connection.closed_at is not None
    assert connection.closed_at - cancelled_at < PROMPTLY


async def test_a_reader_elsewhere_keeps_an_unread_stream_alive_past_its_grace(
        upstream: FakeUpstream, redis_url: str) -> None:
    grace = 1.0
    upstream.scenario = Scenario(tokens=60, tps=20)  # 3 s of tokens: three grace periods
    settings = _settings(upstream, redis_url, grace=grace)
    async with running_sluice(settings) as a, running_sluice(settings) as b, \
            httpx.AsyncClient() as client:
        async with client.stream("POST", a.base_url + URL, json=chat_body(),
                                 headers=RESUMABLE) as response:
            stream_id = response.headers["x-sluice-stream-id"]
            await receive_stream(response, stop_after=1)
        with trio.fail_after(PROMPTLY * 3 + 3):
            async with client.stream("GET", f"{b.base_url}{URL}/{stream_id}/stream",
                                     headers=AUTH) as response:
                whole = await receive_stream(response)
    assert whole.done  # read to the end on B, long after A's own client left
    assert whole.content == "".join(f"t{i} " for i in range(60))


@pytest.fixture
async def killable(upstream: FakeUpstream, redis_url: str,
                   tmp_path: Path) -> AsyncIterator[tuple[str, trio.Process]]:
    """Instance A as its own ``sluice serve`` process, so that it can really die."""
    config = tmp_path / "sluice.toml"
    config.write_text(
        f'[resume]\nredis_url = "{redis_url}"\n'
        f'[[backends]]\nname = "fake"\nkind = "openai"\nbase_url = "{upstream.base_url}"\n'
        f'models = ["*"]\n')
    async with sluice_process(config) as served:
        yield served


async def test_when_the_producing_instance_dies_readers_elsewhere_are_told(
        killable: tuple[str, trio.Process], upstream: FakeUpstream, redis_url: str) -> None:
    a_url, a_process = killable
    upstream.scenario = Scenario(tokens=1000, tps=20)
    async with running_sluice(_settings(upstream, redis_url)) as b, \
            httpx.AsyncClient() as client:
        async with client.stream("POST", a_url + URL, json=chat_body(),
                                 headers=RESUMABLE) as response:
            stream_id = response.headers["x-sluice-stream-id"]
            await receive_stream(response, stop_after=2)
        got: list[Any] = []

        async def read(response: httpx.Response) -> None:
            got.append(await receive_stream(response))

        with trio.fail_after(LIVENESS * 2 + PROMPTLY * 2):
            async with client.stream("GET", f"{b.base_url}{URL}/{stream_id}/stream",
                                     headers=AUTH) as response, trio.open_nursery() as nursery:
                nursery.start_soon(read, response)
                await trio.sleep(0.3)  # B's client is reading live
                killed_at = trio.current_time()
                a_process.send_signal(signal.SIGKILL)
        ended_at = trio.current_time()
    [received] = got
    assert received.content.startswith("t0 t1 ")
    assert not received.done
    assert received.errors[-1]["code"] == "producer_lost"
    assert ended_at - killed_at < LIVENESS * 2 + PROMPTLY
    await assert_upstream_closed(upstream, killed_at)  # the kernel closed A's sockets


def test_a_failure_read_back_from_redis_keeps_status_body_and_id() -> None:
    original = UpstreamStatusError(429, public_message="slow down", type_=None, code="busy",
                                   param="model", retry_after=3.0, detail="secret detail")
    again = error_from_json(error_json(original))
    assert openai_error_body(again) == openai_error_body(original)
    assert (again.status, again.retry_after, again.error_id) == (429, 3.0, original.error_id)
    assert b"secret detail" not in error_json(original)  # the detail stays in the log
