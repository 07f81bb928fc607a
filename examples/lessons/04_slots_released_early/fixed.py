"""Lesson 4, fixed: the slot is held by the stream's scope, from its first byte to its last.

The stream takes its slot when it starts and gives it back when its scope
ends — completed, failed, or cancelled because the client left. The view
still answers 429 at once when every slot is visibly taken; a request that
passes that check in a burst and then finds none free gets the same error
in-band (its 200 is already sent: Quart sends the status before the body
runs — see lesson 10).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import orjson
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
        body = await request.get_json()

        @trio.as_safe_channel
        async def relay() -> AsyncIterator[bytes]:
            try:
                slots.acquire_nowait()  # the stream takes the slot...
            except trio.WouldBlock:
                yield b"data: " + orjson.dumps(BUSY) + b"\n\n"
                return
            try:
                async with client.stream("POST", "/chat/completions", json=body) as response:
                    async for line in response.aiter_lines():
                        yield f"{line}\n".encode()
            finally:
                slots.release()  # ...and gives it back when it ends, however it ends

        return Response(Body(relay()), headers=SSE)

    @app.after_serving
    async def close_client() -> None:
        await client.aclose()

    return app


if __name__ == "__main__":
    serve_lesson(__file__, create_app, "tokens=100,tps=5", tries=(
        "for i in $(seq 20); do curl -sN {url}/v1/chat/completions -H 'content-type: "
        """application/json' -d '{{"model": "m", "stream": true, "messages": []}}' """
        "-o /dev/null -w '%{{http_code}} ' & done; wait",))
