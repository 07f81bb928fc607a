"""Tests of streams whose client leaves: leave mid-stream, then prove the upstream closed."""

from __future__ import annotations

from typing import Any

import httpx
import trio

from server.testing.fake_upstream import FakeUpstream
from tests.conftest import CLOSE_BOUND, PROMPTLY


async def leave_mid_stream(base_url: str, path: str, body: dict[str, Any], marker: bytes,
                           count: int = 2) -> float:
    """POST a stream, read until ``marker`` came ``count`` times, leave; return when it left."""
    async with httpx.AsyncClient() as client:
        with trio.fail_after(PROMPTLY):
            async with client.stream("POST", base_url + path, json=body) as response:
                seen = b""
                async for raw in response.aiter_raw():
                    seen += raw
                    if seen.count(marker) >= count:
                        break
    return trio.current_time()


async def assert_upstream_closed(upstream: FakeUpstream, since: float,
                                 after: float = 0.0) -> None:
    """The upstream's connection closed ``after`` seconds after ``since``, within CLOSE_BOUND."""
    with trio.fail_after(after + PROMPTLY):
        await upstream.wait_all_closed()
    closed_at = upstream.connections[0].closed_at
    assert closed_at is not None
    assert after <= closed_at - since < after + CLOSE_BOUND
