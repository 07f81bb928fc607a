"""Lesson 11, broken: ``except trio.Cancelled`` that never runs.

The gateway counts how its streams end, to graph clients that give up. A
client that leaves makes quart-trio cancel the request, so the stream counts
`trio.Cancelled` as "client left". It never does. Between the cancellation
and the ``except`` there is a nursery (the stream's pump runs in it, as in
lesson 2), and a nursery raises what its tasks raised *as a group*: a
``BaseExceptionGroup`` of `Cancelled`, which ``except trio.Cancelled`` does
not match. The dashboard says no client ever leaves.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import trio
from quart_trio import QuartTrio

from server.testing.lessons import app_and_client, chat_route, relay, serve_lesson


def create_app(upstream: str) -> QuartTrio:
    app, client = app_and_client(upstream)
    ended = app.extensions["ended"] = Counter[str]()

    async def pump(body: Any, chunks: trio.MemorySendChannel[bytes]) -> None:
        async with chunks, relay(client, body) as answer:
            async for chunk in answer:
                await chunks.send(chunk)

    @asynccontextmanager
    async def counted(body: Any) -> AsyncIterator[trio.MemoryReceiveChannel[bytes]]:
        chunks, received = trio.open_memory_channel[bytes](16)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(pump, body, chunks)
                with received:
                    yield received
        except trio.Cancelled:  # never matches: the nursery raises a BaseExceptionGroup
            ended["client left"] += 1
            raise
        ended["completed"] += 1

    @app.get("/stats")
    async def stats() -> dict[str, int]:
        return dict(ended)

    return chat_route(app, counted)


if __name__ == "__main__":
    serve_lesson(__file__, create_app, "tokens=50,tps=5", tries=(
        "# press Ctrl-C in curl after a few tokens, then:", "curl {url}/stats"))
