"""Lesson 11, fixed: ``except* trio.Cancelled``, which looks inside the group.

Python 3.11's ``except*`` matches the exceptions *inside* an exception
group: here, the `Cancelled` that the nursery gathered from its tasks. The
handler counts the client that left and re-raises, so the cancellation goes
on to the scope that owns it. (Sluice does not infer why from what was
raised at all: its connection class sets an event when the client leaves,
and the stream records its outcome from that, in a ``finally``.)
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
        except* trio.Cancelled:  # the Cancelled inside the nursery's group
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
