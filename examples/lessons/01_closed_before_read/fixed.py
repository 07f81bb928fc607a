"""Lesson 1, fixed: the upstream response lives as long as the body that reads it.

The ``async with`` moves into the body. Quart enters a response body,
iterates it and exits it, all in the request's own task
(`server.testing.lessons.Body`), so the upstream response opens when the body
starts and closes when it ends — completed, failed, or cancelled because the
client left. `trio.as_safe_channel` turns the generator into such a body, and
makes it safe to suspend inside the ``async with`` (lesson 7 tells why).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator

import trio
from quart import Response, request
from quart_trio import QuartTrio

from server.testing.lessons import app_and_client, serve_lesson, sse


def create_app(upstream: str) -> QuartTrio:
    app, client = app_and_client(upstream)

    @app.post("/v1/chat/completions")
    async def chat() -> Response:
        body = await request.get_json()

        @trio.as_safe_channel
        async def relay() -> AsyncGenerator[bytes]:
            async with client.stream("POST", "/chat/completions", json=body) as response:
                async for line in response.aiter_lines():
                    yield f"{line}\n".encode()

        return sse(relay())  # Quart enters relay(), iterates it and leaves it: one scope

    return app


if __name__ == "__main__":
    serve_lesson(__file__, create_app, "tokens=20,tps=5")
