"""Lesson 2, broken: the client left, and the model kept generating.

Lesson 1's error invites a fix that seems obvious: read the upstream in a
background task, which outlives the view, and hand the chunks to the body
over a channel. It streams. But the task outlives the client too. When the
client leaves, quart-trio cancels the request and the body stops reading —
and the background task, which is no part of the request, goes on holding
the upstream connection: through the model's thinking, then blocked on a
channel that nobody will ever read again.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import trio
from quart import request
from quart_trio import QuartTrio

from server.testing.lessons import SSE, app_and_client, serve_lesson


def create_app(upstream: str) -> QuartTrio:
    app, client = app_and_client(upstream)

    async def pump(body: Any, chunks: trio.MemorySendChannel[bytes]) -> None:
        """The upstream's answer, line by line, into the channel the body reads."""
        async with chunks, client.stream("POST", "/chat/completions", json=body) as response:
            async for line in response.aiter_lines():
                await chunks.send(f"{line}\n".encode())

    @app.post("/v1/chat/completions")
    async def chat() -> tuple[AsyncIterator[bytes], dict[str, str]]:
        chunks, received = trio.open_memory_channel[bytes](16)
        app.add_background_task(pump, await request.get_json(), chunks)  # outlives the client

        async def relay() -> AsyncIterator[bytes]:
            async for chunk in received:
                yield chunk

        return relay(), SSE

    return app


if __name__ == "__main__":
    serve_lesson(__file__, create_app, "tokens=200,tps=4")
