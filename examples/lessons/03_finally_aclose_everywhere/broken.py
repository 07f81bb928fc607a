"""Lesson 3, broken: ``finally: await response.aclose()`` — on every path but two.

The generator opens the upstream response itself and closes it by hand in
``finally``, after recording the answer's usage. Two paths skip that:

- an upstream error: ``raise_for_status()`` raises before the ``try``, so
  the ``finally`` never runs and the connection is never closed;
- a client that leaves: quart-trio cancels the request, and in a cancelled
  scope *every* ``await`` raises `trio.Cancelled` at once — so the first one
  in the ``finally``, the usage record, raises, and nothing after it runs.
  The usage is lost. (The connection does close — not here, but when trio
  finalises httpx's abandoned generators. Nobody chose that moment.)

flake8-async's ASYNC102 flags the ``await`` in the ``finally``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import trio
from quart import request
from quart_trio import QuartTrio

from server.testing.lessons import SSE, app_and_client, serve_lesson


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
    async def chat() -> tuple[AsyncIterator[bytes], dict[str, str]]:
        body = await request.get_json()

        async def relay() -> AsyncIterator[bytes]:
            question = client.build_request("POST", "/chat/completions", json=body)
            response = await client.send(question, stream=True)
            response.raise_for_status()  # an upstream error raises here, before the `try`
            chunks = 0
            try:
                async for line in response.aiter_lines():
                    chunks += line.startswith("data: {")
                    yield f"{line}\n".encode()
            finally:
                await ledger.record(chunks)  # cancelled? this raises at once...
                await response.aclose()  # ...and the close never runs

        return relay(), SSE

    return app


if __name__ == "__main__":
    serve_lesson(__file__, create_app, "tokens=50,tps=5")
