"""Lesson 4, broken: a limit of 10 streams that lets every stream through.

The view takes a slot with ``async with slots`` and returns the response.
But returning *leaves* the ``async with``: the slot is free again before the
body — the stream the slot was for — has even started. The limit counts
views, which last a millisecond, not streams, which last minutes, and the
model server behind it gets every request at once.
"""

from __future__ import annotations

import httpx
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
        async with slots:  # taken while the view runs, and given back as it returns
            return sse(relay(client, await request.get_json()))  # the stream starts after

    return app


if __name__ == "__main__":
    serve_lesson(__file__, create_app, "tokens=100,tps=5", tries=(
        "for i in $(seq 20); do curl -sN -m 5 {url}/v1/chat/completions -H 'content-type: "
        """application/json' -d '{{"model": "m", "stream": true, "messages": []}}' """
        "-o /dev/null -w '%{{http_code}} ' & done; wait",))
