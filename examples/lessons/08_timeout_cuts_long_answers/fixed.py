"""Lesson 8, fixed: no total timeout — an idle timeout, on the upstream's silence only.

A long answer is not a failure; a silent upstream is. The relay bounds each
wait for the upstream's next line (``IDLE_TIMEOUT``), and only that: a model
that writes steadily may write for an hour, and time spent waiting for a slow
client does not count. A stall ends with an in-band error, not a silent cut.
Quart's own total, ``RESPONSE_TIMEOUT``, is switched off for the response.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any

import orjson
import trio
from quart import Response, request
from quart_trio import QuartTrio

from server.testing.lessons import app_and_client, serve_lesson, sse

STALLED = {"error": {"message": "The upstream went silent mid-answer.",
                     "type": "timeout_error", "param": None, "code": "upstream_idle_timeout"}}


def create_app(upstream: str) -> QuartTrio:
    app, client = app_and_client(upstream)
    app.config["IDLE_TIMEOUT"] = 30.0  # seconds of upstream silence that end an answer

    @trio.as_safe_channel
    async def relay(body: Any) -> AsyncGenerator[bytes]:
        async with client.stream("POST", "/chat/completions", json=body) as response:
            lines = response.aiter_lines()
            while True:
                with trio.move_on_after(app.config["IDLE_TIMEOUT"]) as idle:
                    line = await anext(lines, None)  # only the upstream's silence counts
                if idle.cancelled_caught:
                    yield b"data: " + orjson.dumps(STALLED) + b"\n\n"
                    return
                if line is None:
                    return
                yield f"{line}\n".encode()

    @app.post("/v1/chat/completions")
    async def chat() -> Response:
        streamed = sse(relay(await request.get_json()))
        streamed.timeout = None  # not Quart's RESPONSE_TIMEOUT either: answers may be long
        return streamed

    return app


if __name__ == "__main__":
    serve_lesson(__file__, create_app, "tokens=400,tps=5", tries=(
        "# the answer runs its 80 s to [DONE]; then try a stalled model:",
        "#   python ... --scenario stall_after=5"))
