"""Lesson 3, broken: ``finally: await response.aclose()`` — on every path but two.

The generator opens the upstream response itself and closes it by hand in
``finally``. Two paths skip that line:

- an upstream error: ``raise_for_status()`` raises before the ``try``, so
  the ``finally`` is never entered;
- a client that leaves: quart-trio cancels the request, and in a cancelled
  scope *every* ``await`` raises `trio.Cancelled` at once — the first await
  in the ``finally`` (recording usage) raises, and the close below it never
  runs.

Either way the upstream connection stays open, out of the pool, until the
process ends.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import trio
from quart import request
from quart_trio import QuartTrio

from server.testing.lessons import SSE, serve_lesson


class Ledger:
    """Content chunks served per answer: what a real gateway bills, a network round trip away."""

    def __init__(self) -> None:
        self.entries: list[int] = []

    async def record(self, chunks: int) -> None:
        await trio.sleep(0.001)  # the round trip
        self.entries.append(chunks)


def create_app(upstream: str) -> QuartTrio:
    app = QuartTrio(__name__)
    client = httpx.AsyncClient(base_url=upstream)
    ledger = app.extensions["ledger"] = Ledger()

    @app.post("/v1/chat/completions")
    async def chat() -> tuple[AsyncIterator[bytes], dict[str, str]]:
        body = await request.get_json()

        async def relay() -> AsyncIterator[bytes]:
            upstream = client.build_request("POST", "/chat/completions", json=body)
            response = await client.send(upstream, stream=True)
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

    @app.after_serving
    async def close_client() -> None:
        await client.aclose()

    return app


if __name__ == "__main__":
    serve_lesson(__file__, create_app, "tokens=50,tps=5",
                 tries=("# and an upstream error: python ... --scenario status=503",))
