"""Lesson 6, broken: a cut stream that looks complete.

Not every upstream ends its stream with ``data: [DONE]``, so the gateway
drops theirs and always sends its own — including after the upstream broke
off mid-answer, which it logs and otherwise forgets. The client reads some
text and then ``[DONE]``: the openai SDK reports success, and the user has
half an answer that looks whole.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any

import httpx
import trio
from quart_trio import QuartTrio

from server.testing.lessons import app_and_client, chat_route, serve_lesson

DONE = b"data: [DONE]\n\n"


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
        yield DONE  # ours: whether the answer ended or broke off

    return chat_route(app, relay)


if __name__ == "__main__":
    serve_lesson(__file__, create_app, "tokens=20,tps=5,cut_after=5")
