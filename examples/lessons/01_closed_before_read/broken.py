"""Lesson 1, broken: the upstream response is closed before its body is read.

The view opens the upstream stream with ``async with`` and returns a
generator that reads it. But Quart runs that generator *after* the view has
returned — and returning left the ``async with``, which closed the response.
The client gets a 200 and then a cut; the gateway's log says "Attempted to
read or stream content, but the stream has been closed."
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from quart import request
from quart_trio import QuartTrio

from server.testing.lessons import SSE, app_and_client, serve_lesson


def create_app(upstream: str) -> QuartTrio:
    app, client = app_and_client(upstream)

    @app.post("/v1/chat/completions")
    async def chat() -> tuple[AsyncIterator[bytes], dict[str, str]]:
        body = await request.get_json()
        async with client.stream("POST", "/chat/completions", json=body) as response:

            async def relay() -> AsyncIterator[bytes]:
                async for line in response.aiter_lines():
                    yield f"{line}\n".encode()

            return relay(), SSE  # Quart iterates relay() after this return: too late

    return app


if __name__ == "__main__":
    serve_lesson(__file__, create_app, "tokens=20,tps=5")
