"""Lesson 4, broken: a limit of 10 streams that lets 200 through.

The view takes a slot with ``async with slots`` and returns the body. But
returning *leaves* the ``async with``: the slot is free again before the
body — the stream the slot was for — has even started. The limit counts
views, which last a millisecond, not streams, which last minutes; the model
server behind it gets every request at once.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import trio
from quart import Response, request
from quart_trio import QuartTrio

from server.testing.lessons import SSE, Body, serve_lesson

MAX_STREAMS = 10
BUSY = {"error": {"message": "The gateway is at capacity; retry shortly.",
                  "type": "rate_limit_error", "param": None, "code": "gateway_busy"}}


def create_app(upstream: str) -> QuartTrio:
    app = QuartTrio(__name__)
    # No pool limit: the gateway's limit is MAX_STREAMS (httpx's 100 would be a hidden second one).
    client = httpx.AsyncClient(base_url=upstream, limits=httpx.Limits(max_connections=None))
    slots = trio.Semaphore(MAX_STREAMS)

    @app.post("/v1/chat/completions")
    async def chat() -> Response | tuple[dict[str, object], int, dict[str, str]]:
        if slots.value == 0:
            return BUSY, 429, {"retry-after": "1"}
        async with slots:  # held while the view runs, and released as it returns:
            body = await request.get_json()

            @trio.as_safe_channel
            async def relay() -> AsyncIterator[bytes]:
                async with client.stream("POST", "/chat/completions", json=body) as response:
                    async for line in response.aiter_lines():
                        yield f"{line}\n".encode()

            return Response(Body(relay()), headers=SSE)  # the stream starts after this

    @app.after_serving
    async def close_client() -> None:
        await client.aclose()

    return app


if __name__ == "__main__":
    serve_lesson(__file__, create_app, "tokens=100,tps=5", tries=(
        "for i in $(seq 20); do curl -sN {url}/v1/chat/completions -H 'content-type: "
        """application/json' -d '{{"model": "m", "stream": true, "messages": []}}' """
        "-o /dev/null -w '%{{http_code}} ' & done; wait",))
