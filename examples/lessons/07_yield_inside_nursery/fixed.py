"""Lesson 7, fixed: every stage that yields runs in a task of its own, behind a memory channel.

`trio.as_safe_channel` runs a generator in a task of its own and hands its
items over a memory channel; the consumer iterates inside ``async with``. A
``yield`` inside a nursery or a cancel scope is safe there: while the
generator waits to be asked for more, its scopes wrap nobody else's code.
The pump and its nursery are gone — that is what ``as_safe_channel`` is —
and the upstream's failure surfaces where it happened, as itself.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any

import trio
from quart import Response, request
from quart_trio import QuartTrio

from server.testing.lessons import app_and_client, serve_lesson, sse


async def check(chunk: bytes) -> None:
    """Moderation: a call to a classifier, a few milliseconds away."""
    await trio.sleep(0.01)


def create_app(upstream: str) -> QuartTrio:
    app, client = app_and_client(upstream)

    @trio.as_safe_channel
    async def relay(body: Any) -> AsyncGenerator[bytes]:
        async with client.stream("POST", "/chat/completions", json=body) as response:
            async for line in response.aiter_lines():
                yield f"{line}\n".encode()

    @trio.as_safe_channel
    async def moderated(body: Any) -> AsyncGenerator[bytes]:
        async with relay(body) as chunks:
            async for chunk in chunks:
                await check(chunk)
                yield chunk

    @app.post("/v1/chat/completions")
    async def chat() -> Response:
        return sse(moderated(await request.get_json()))

    return app


if __name__ == "__main__":
    serve_lesson(__file__, create_app, "tokens=20,tps=5,cut_after=5")
