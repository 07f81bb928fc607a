"""Lesson 4, fixed: the slot is held by the stream's scope, from its first byte to its last.

The stream takes its slot when it starts and gives it back when its scope
ends — completed, failed, or cancelled because the client left. The view
still answers 429 at once when every slot is visibly taken. A request that
passed that check in a burst and then finds no slot free gets the same
error in-band: its 200 is already on the wire, because Quart sends the
status before the body runs (lesson 10 shows how to wait with it).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator

import httpx
import orjson
import trio
from quart import request
from quart.typing import ResponseReturnValue
from quart_trio import QuartTrio

from server.testing.lessons import app_and_client, relay, serve_lesson, sse

MAX_STREAMS = 10
BUSY = {"error": {"message": "The gateway is at capacity; retry shortly.",
                  "type": "rate_limit_error", "param": None, "code": "gateway_busy"}}


def create_app(upstream: str) -> QuartTrio:
    # No pool limit: the gateway's limit is MAX_STREAMS (httpx's 100 would be a hidden second one).
    app, client = app_and_client(upstream, limits=httpx.Limits(max_connections=None))
    slots = trio.Semaphore(MAX_STREAMS)

    @app.post("/v1/chat/completions")
    async def chat() -> ResponseReturnValue:
        if slots.value == 0:
            return BUSY, 429, {"retry-after": "1"}
        body = await request.get_json()

        @trio.as_safe_channel
        async def held() -> AsyncGenerator[bytes]:
            try:
                slots.acquire_nowait()  # the stream takes the slot...
            except trio.WouldBlock:
                yield b"data: " + orjson.dumps(BUSY) + b"\n\n"
                return
            try:
                async with relay(client, body) as chunks:
                    async for chunk in chunks:
                        yield chunk
            finally:
                slots.release()  # ...and gives it back when it ends, however it ends

        return sse(held())

    return app


if __name__ == "__main__":
    serve_lesson(__file__, create_app, "tokens=100,tps=5", tries=(
        "for i in $(seq 20); do curl -sN -m 5 {url}/v1/chat/completions -H 'content-type: "
        """application/json' -d '{{"model": "m", "stream": true, "messages": []}}' """
        "-o /dev/null -w '%{{http_code}} ' & done; wait",))
