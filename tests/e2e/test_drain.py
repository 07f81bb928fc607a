"""End-to-end: shutdown drains. The real ``sluice serve`` process gets a real SIGTERM.

During the drain the worker still listens: ``/readyz`` answers 503 and new
chat requests a retryable 503, so a load balancer moves on; streams that
finish within ``drain_seconds`` complete; the rest end with an in-band
"server shutting down" and their upstream is closed; then the process exits.
"""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import trio

from server.testing.fake_upstream import FakeUpstream, Scenario
from tests.conftest import PROMPTLY, chat_body
from tests.e2e.sluice_process import sluice_process
from tests.sse_client import Received, receive_stream

DRAIN = 1.5
URL = "/v1/chat/completions"


@pytest.fixture
async def served(
    upstream: FakeUpstream, tmp_path: Path
) -> AsyncIterator[tuple[str, trio.Process]]:
    config = tmp_path / "sluice.toml"
    config.write_text(
        f'[server]\ndrain_seconds = {DRAIN}\n'
        f'[[backends]]\nname = "fake"\nkind = "openai"\nbase_url = "{upstream.base_url}"\n'
        f'models = ["*"]\n'
    )
    async with sluice_process(config) as served:
        yield served


async def test_sigterm_drains_then_stops_what_is_left(
    served: tuple[str, trio.Process], upstream: FakeUpstream
) -> None:
    base_url, process = served
    upstream.scenario = Scenario(tokens=1000, tps=10)  # runs far longer than the drain
    results: dict[str, Received] = {}

    async def long_stream() -> None:
        async with httpx.AsyncClient(timeout=30) as client, client.stream(
            "POST", base_url + URL, json=chat_body()
        ) as response:
            results["long"] = await receive_stream(response)

    async def short_stream() -> None:
        async with httpx.AsyncClient(timeout=30) as client, client.stream(
            "POST", base_url + URL, json=chat_body(max_tokens=8)
        ) as response:
            results["short"] = await receive_stream(response)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(long_stream)
        with trio.fail_after(PROMPTLY):
            await upstream.wait_for_request(1)
        nursery.start_soon(short_stream)  # 8 tokens at 10/s: done within the drain
        with trio.fail_after(PROMPTLY):
            await upstream.wait_for_request(2)
        process.send_signal(signal.SIGTERM)
        signalled_at = trio.current_time()
        await trio.sleep(0.2)
        async with httpx.AsyncClient() as client:
            ready = await client.get(base_url + "/readyz")
            assert ready.status_code == 503
            refused = await client.post(base_url + URL, json=chat_body())
            assert refused.status_code == 503
            assert refused.json()["error"]["code"] == "server_shutting_down"
            assert refused.headers["retry-after"] == "1"
            assert len(upstream.requests) == 2  # the refused one never went upstream
    with trio.fail_after(DRAIN + 10):
        assert await process.wait() == 0
    assert trio.current_time() - signalled_at >= DRAIN * 0.9

    short = results["short"]
    long = results["long"]
    assert short.done and short.content == "".join(f"t{i} " for i in range(8))
    assert not long.done
    assert [e["code"] for e in long.errors] == ["server_shutting_down"]
    with trio.fail_after(PROMPTLY):
        await upstream.wait_all_closed()
