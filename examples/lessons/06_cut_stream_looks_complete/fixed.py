"""Lesson 6, fixed: a cut stream ends with an error event, and never with ``[DONE]``.

Once the status line and some text are out, a failure can only travel
in-band: one last ``data: {"error": {...}}`` event in the OpenAI shape, and
the body ends *without* ``[DONE]``. The openai SDK raises `APIError` on that
event; every client can tell a cut answer from a complete one.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any

import httpx
import orjson
import trio
from quart_trio import QuartTrio

from server.testing.lessons import app_and_client, chat_route, serve_lesson

DONE = b"data: [DONE]\n\n"
CUT = {"error": {"message": "The upstream broke off mid-answer; the answer is incomplete.",
                 "type": "upstream_error", "param": None, "code": "stream_truncated"}}


def create_app(upstream: str) -> QuartTrio:
    app, client = app_and_client(upstream)

    @trio.as_safe_channel
    async def relay(body: Any) -> AsyncGenerator[bytes]:
        try:
            async with client.stream("POST", "/chat/completions", json=body) as response:
                async for line in response.aiter_lines():
                    if line != "data: [DONE]":  # not every upstream sends it: we send our own
                        yield f"{line}\n".encode()
        except httpx.HTTPError as exc:
            app.logger.warning("the upstream failed mid-answer: %r", exc)
            yield b"data: " + orjson.dumps(CUT) + b"\n\n"
            return  # no [DONE]: the answer is not complete
        yield DONE

    return chat_route(app, relay)


if __name__ == "__main__":
    serve_lesson(__file__, create_app, "tokens=20,tps=5,cut_after=5")
