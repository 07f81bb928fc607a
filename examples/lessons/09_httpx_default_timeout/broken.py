"""Lesson 9, broken: httpx's default timeout kills a slow first token.

``httpx.AsyncClient()`` comes with a 5 s timeout on everything, reads
included: every wait for the upstream's next bytes may last 5 s. A reasoning
model that thinks for 6 s before its first token never gets to say it:
httpx raises ``ReadTimeout``, and the client's answer is cut after its
headers.
"""

from __future__ import annotations

from quart import Response, request
from quart_trio import QuartTrio

from server.testing.lessons import app_and_client, relay, serve_lesson, sse


def create_app(upstream: str) -> QuartTrio:
    app, client = app_and_client(upstream)  # httpx's defaults: 5 s for everything

    @app.post("/v1/chat/completions")
    async def chat() -> Response:
        return sse(relay(client, await request.get_json()))

    return app


if __name__ == "__main__":
    serve_lesson(__file__, create_app, "tokens=20,tps=5,first_delay=8")
