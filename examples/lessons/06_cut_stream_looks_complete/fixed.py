"""Lesson 6, fixed: a cut stream ends with an error event, and never with ``[DONE]``.

Once the status line and some text are out, a failure can only travel
in-band: one last ``data: {"error": {...}}`` event in the OpenAI shape, and
the body ends *without* ``[DONE]``. The openai SDK raises `APIError` on that
event; every client can tell a cut answer from a complete one.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import orjson
import trio
from quart import Response, request
from quart_trio import QuartTrio

from server.testing.lessons import SSE, Body, serve_lesson

DONE = b"data: [DONE]\n\n"
CUT = {"error": {"message": "The upstream broke off mid-answer; the answer is incomplete.",
                 "type": "upstream_error", "param": None, "code": "stream_truncated"}}


def create_app(upstream: str) -> QuartTrio:
    app = QuartTrio(__name__)
    client = httpx.AsyncClient(base_url=upstream)

    @app.post("/v1/chat/completions")
    async def chat() -> Response:
        body = await request.get_json()

        @trio.as_safe_channel
        async def relay() -> AsyncIterator[bytes]:
            try:
                async with client.stream("POST", "/chat/completions", json=body) as response:
                    async for line in response.aiter_lines():
                        if line != DONE.decode().strip():  # we always send our own, below
                            yield f"{line}\n".encode()
            except httpx.HTTPError as exc:
                app.logger.warning("the upstream failed mid-answer: %r", exc)
                yield b"data: " + orjson.dumps(CUT) + b"\n\n"
                return  # no [DONE]: the answer is not complete
            yield DONE

        return Response(Body(relay()), headers=SSE)

    @app.after_serving
    async def close_client() -> None:
        await client.aclose()

    return app


if __name__ == "__main__":
    serve_lesson(__file__, create_app, "tokens=20,tps=5,cut_after=5")
