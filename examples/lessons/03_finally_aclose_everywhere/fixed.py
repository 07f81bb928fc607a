"""Lesson 3, fixed: nothing is closed by hand — the response is owned by an ``async with``.

``async with client.stream(...)`` closes the upstream response however the
block is left: the end of the answer, an upstream error, an exception of our
own, or the cancellation that comes when the client leaves (httpx shields
its own close). The usage record, which has to await, runs after it,
bounded and shielded: a cancellation can neither skip it nor hang it.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator

import trio
from quart import Response, request
from quart_trio import QuartTrio

from server.testing.lessons import app_and_client, serve_lesson, sse


class Ledger:
    """Chunks served per answer: what a real gateway bills, a network round trip away."""

    def __init__(self) -> None:
        self.entries: list[int] = []

    async def record(self, chunks: int) -> None:
        await trio.sleep(0.001)  # the round trip
        self.entries.append(chunks)
        print(f"ledger: an answer of {chunks} chunks recorded", flush=True)


def create_app(upstream: str) -> QuartTrio:
    app, client = app_and_client(upstream)
    ledger = app.extensions["ledger"] = Ledger()

    @app.post("/v1/chat/completions")
    async def chat() -> Response:
        body = await request.get_json()

        @trio.as_safe_channel
        async def relay() -> AsyncGenerator[bytes]:
            chunks = 0
            try:
                async with client.stream("POST", "/chat/completions", json=body) as response:
                    response.raise_for_status()
                    async for line in response.aiter_lines():
                        chunks += line.startswith("data: {")
                        yield f"{line}\n".encode()
            finally:
                with trio.move_on_after(1.0, shield=True):  # bounded, and deaf to the cancel
                    await ledger.record(chunks)

        return sse(relay())

    return app


if __name__ == "__main__":
    serve_lesson(__file__, create_app, "tokens=50,tps=5")
