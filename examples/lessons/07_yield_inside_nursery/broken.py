"""Lesson 7, broken: a ``yield`` inside a nursery.

``relayed`` reads the upstream in a task of its own (a pump, in a nursery)
and yields the chunks it receives — from *inside* the nursery. A second
stage, moderation, awaits a check on each chunk before passing it on.

While ``relayed`` is suspended at its ``yield``, its nursery is still open
on the request's task, around code that is not its own: moderation's
awaits. When the upstream breaks, the pump fails, the nursery cancels — and
the cancellation lands in moderation's ``await``, which has no idea why. It
unwinds the wrong code, ``relayed`` is left suspended in its nursery, and
trio reports "Cancel scope stack corrupted ... from now on there are no
guarantees". flake8-async's ASYNC119 (and ASYNC101) flag the ``yield``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import trio
from quart import request
from quart_trio import QuartTrio

from server.testing.lessons import SSE, app_and_client, relay, serve_lesson


async def check(chunk: bytes) -> None:
    """Moderation: a call to a classifier, a few milliseconds away."""
    await trio.sleep(0.01)


def create_app(upstream: str) -> QuartTrio:
    app, client = app_and_client(upstream)

    async def pump(body: Any, chunks: trio.MemorySendChannel[bytes]) -> None:
        """The upstream's answer (lesson 1's relay) into a channel, from a task of its own."""
        async with chunks, relay(client, body) as answer:
            async for chunk in answer:
                await chunks.send(chunk)

    async def relayed(body: Any) -> AsyncIterator[bytes]:
        chunks, received = trio.open_memory_channel[bytes](0)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pump, body, chunks)
            async for chunk in received:
                yield chunk  # suspended here, the nursery wraps whoever awaits the chunk

    async def moderated(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        async for chunk in chunks:
            await check(chunk)  # ...here: the relay's cancellation lands in this await
            yield chunk

    @app.post("/v1/chat/completions")
    async def chat() -> tuple[AsyncIterator[bytes], dict[str, str]]:
        return moderated(relayed(await request.get_json())), SSE

    return app


if __name__ == "__main__":
    serve_lesson(__file__, create_app, "tokens=20,tps=5,cut_after=5")
