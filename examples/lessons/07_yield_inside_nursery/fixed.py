"""Lesson 7, fixed: every stage that yields runs in a task of its own, behind a memory channel.

`trio.as_safe_channel` runs a generator in a task of its own and hands its
items over a memory channel; the consumer iterates inside ``async with``. A
``yield`` inside a nursery or a cancel scope is safe there: while the
generator waits to be asked for more, its scopes wrap nobody else's code.
The hand-made pump and its nursery are gone — that is what
``as_safe_channel`` is (the kit's `relay`, lesson 1's fix, is one too) — and
the upstream's failure surfaces where it happened, as itself.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any

import trio
from quart_trio import QuartTrio

from server.testing.lessons import app_and_client, chat_route, relay, serve_lesson


async def check(chunk: bytes) -> None:
    """Moderation: a call to a classifier, a few milliseconds away."""
    await trio.sleep(0.01)


def create_app(upstream: str) -> QuartTrio:
    app, client = app_and_client(upstream)

    @trio.as_safe_channel
    async def moderated(body: Any) -> AsyncGenerator[bytes]:
        async with relay(client, body) as chunks:
            async for chunk in chunks:
                await check(chunk)
                yield chunk

    return chat_route(app, moderated)


if __name__ == "__main__":
    serve_lesson(__file__, create_app, "tokens=20,tps=5,cut_after=5")
