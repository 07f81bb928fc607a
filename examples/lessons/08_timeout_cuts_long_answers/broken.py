"""Lesson 8, broken: a timeout that cuts long answers.

"No answer should take more than a minute", so the relay runs under a total
timeout — and so does Quart, whose ``RESPONSE_TIMEOUT`` is 60 s by default.
A long answer from a healthy model that writes steadily is cut at exactly
60 s: the relay's timeout ends the body quietly (no error event, no
``[DONE]``), Quart's breaks it off mid-body, and neither logs a line. A
stalled model is cut at 60 s too, in the same silent way.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any

import trio
from quart_trio import QuartTrio

from server.testing.lessons import app_and_client, chat_route, serve_lesson


def create_app(upstream: str) -> QuartTrio:
    app, client = app_and_client(upstream)
    app.config["ANSWER_TIMEOUT"] = 60.0  # seconds for a whole answer (Quart's own total: 60 s)

    @trio.as_safe_channel
    async def relay(body: Any) -> AsyncGenerator[bytes]:
        with trio.move_on_after(app.config["ANSWER_TIMEOUT"]):
            async with client.stream("POST", "/chat/completions", json=body) as response:
                async for line in response.aiter_lines():
                    yield f"{line}\n".encode()

    return chat_route(app, relay)


if __name__ == "__main__":
    serve_lesson(__file__, create_app, "tokens=400,tps=5", tries=(
        "# a minute later the answer stops at token ~300 of 400; then try a stalled model:",
        "#   python ... --scenario stall_after=5"))
