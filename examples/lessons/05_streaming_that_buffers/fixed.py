"""Lesson 5, fixed: each chunk is passed on the moment it arrives.

``aiter_bytes()`` without a size yields whatever each read brought, at once;
Quart sends each item as its own ASGI message, and hypercorn writes each
message straight to the socket. Nothing on the way holds a byte back, so
the client sees each token when the model writes it.
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
            async for chunk in response.aiter_bytes():  # whatever each read brought
                yield chunk

    return chat_route(app, relay)


if __name__ == "__main__":
    serve_lesson(__file__, create_app, "tokens=20,tps=5", tries=(
        "python examples/lessons/05_streaming_that_buffers/gaps.py {url}",))
