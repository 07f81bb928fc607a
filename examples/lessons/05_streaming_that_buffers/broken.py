"""Lesson 5, broken: "streaming" that buffers.

Every piece of this gateway streams — except one argument. ``aiter_bytes(
chunk_size=8192)`` asks httpx for chunks of 8 KiB, and httpx obliges: it
holds what has arrived until 8 KiB have, then hands them over at once. An
answer shorter than that arrives whole, at its end; a longer one in bursts.
The client's spinner spins, then the text appears all at once.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any

import trio
from quart_trio import QuartTrio

from server.testing.lessons import app_and_client, chat_route, serve_lesson


def create_app(upstream: str) -> QuartTrio:
    app, client = app_and_client(upstream)

    @trio.as_safe_channel
    async def relay(body: Any) -> AsyncGenerator[bytes]:
        async with client.stream("POST", "/chat/completions", json=body) as response:
            async for chunk in response.aiter_bytes(chunk_size=8192):  # waits for 8 KiB
                yield chunk

    return chat_route(app, relay)


if __name__ == "__main__":
    serve_lesson(__file__, create_app, "tokens=20,tps=5", tries=(
        "python examples/lessons/05_streaming_that_buffers/gaps.py {url}",))
