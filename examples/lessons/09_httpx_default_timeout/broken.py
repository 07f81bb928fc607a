"""Lesson 9, broken: httpx's default timeout kills a slow first token.

Nothing in sight is wrong: this is the plain gateway, lesson 1's fix. The
bug is in what it leaves unsaid. ``httpx.AsyncClient()`` comes with a 5 s
timeout on everything, reads included: every wait for the upstream's next
bytes may last 5 s. A reasoning model that thinks for 6 s before its first
token never gets to say it: httpx raises ``ReadTimeout``, and the client's
answer is cut after its headers.
"""

from __future__ import annotations

from quart_trio import QuartTrio

from server.testing.lessons import plain_gateway, serve_lesson


def create_app(upstream: str) -> QuartTrio:
    return plain_gateway(upstream)  # httpx.AsyncClient's defaults: 5 s for everything


if __name__ == "__main__":
    serve_lesson(__file__, create_app, "tokens=20,tps=5,first_delay=8")
