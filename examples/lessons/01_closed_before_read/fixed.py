"""Lesson 1, fixed: the upstream response lives as long as the body that reads it.

The ``async with`` moves into the body. Quart enters a body, iterates it and
exits it in the request's own task (`server.testing.lessons.Body`), so the
upstream response opens when the body starts and closes when it ends —
completed, failed, or cancelled because the client left.
`trio.as_safe_channel` makes the generator safe to suspend inside that
``async with`` (lesson 7).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import trio
from quart import Response, request
from quart_trio import QuartTrio

from server.testing.lessons import SSE, Body, serve_lesson


def create_app(upstream: str) -> QuartTrio:
    app = QuartTrio(__name__)
    client = httpx.AsyncClient(base_url=upstream)

    @app.post("/v1/chat/completions")
    async def chat() -> Response:
        body = await request.get_json()

        @trio.as_safe_channel
        async def relay() -> AsyncIterator[bytes]:
            async with client.stream("POST", "/chat/completions", json=body) as response:
                async for line in response.aiter_lines():
                    yield f"{line}\n".encode()

        return Response(Body(relay()), headers=SSE)

    @app.after_serving
    async def close_client() -> None:
        await client.aclose()

    return app


if __name__ == "__main__":
    serve_lesson(__file__, create_app, "tokens=20,tps=5")
