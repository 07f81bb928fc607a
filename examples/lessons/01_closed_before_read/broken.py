"""Lesson 1, broken: the upstream response is closed before its body is read.

The view opens the upstream stream with ``async with`` and returns a
generator that reads it. But Quart runs that generator *after* the view has
returned — and returning left the ``async with``, which closed the response.
The client gets a 200 and no tokens; the log says "Attempted to read or
stream content, but the stream has been closed."
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
from quart import request
from quart_trio import QuartTrio

from server.testing.lessons import SSE, serve_lesson


def create_app(upstream: str) -> QuartTrio:
    app = QuartTrio(__name__)
    client = httpx.AsyncClient(base_url=upstream)

    @app.post("/v1/chat/completions")
    async def chat() -> tuple[AsyncIterator[bytes], dict[str, str]]:
        body = await request.get_json()
        async with client.stream("POST", "/chat/completions", json=body) as response:

            async def relay() -> AsyncIterator[bytes]:
                async for line in response.aiter_lines():
                    yield f"{line}\n".encode()

            return relay(), SSE  # the generator runs after this return: too late

    @app.after_serving
    async def close_client() -> None:
        await client.aclose()

    return app


if __name__ == "__main__":
    serve_lesson(__file__, create_app, "tokens=20,tps=5")
