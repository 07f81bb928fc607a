"""Lesson 2, fixed: the pump is a child of the stream's nursery, and dies with the request.

The same pump and channel, but the nursery that runs the pump belongs to the
stream: it is opened by the body Quart sends. quart-trio runs each request
beside a sibling task that waits for hypercorn's ``http.disconnect``; when
the client leaves, that watcher cancels the request's scope, and with it
this nursery, the pump and the upstream connection — within milliseconds,
thinking model or not.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import trio
from quart_trio import QuartTrio

from server.testing.lessons import app_and_client, chat_route, serve_lesson


def create_app(upstream: str) -> QuartTrio:
    app, client = app_and_client(upstream)

    async def pump(body: Any, chunks: trio.MemorySendChannel[bytes]) -> None:
        """The upstream's answer, line by line, into the channel the body reads."""
        async with chunks, client.stream("POST", "/chat/completions", json=body) as response:
            async for line in response.aiter_lines():
                await chunks.send(f"{line}\n".encode())

    @asynccontextmanager
    async def stream(body: Any) -> AsyncIterator[trio.MemoryReceiveChannel[bytes]]:
        chunks, received = trio.open_memory_channel[bytes](16)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pump, body, chunks)  # a child of the stream: cancelled with it
            with received:
                yield received

    return chat_route(app, stream)


if __name__ == "__main__":
    serve_lesson(__file__, create_app, "tokens=200,tps=4")
