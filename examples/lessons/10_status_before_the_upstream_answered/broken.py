"""Lesson 10, broken: a 200 for an answer the upstream refused.

Nothing in sight is wrong: this is the plain gateway, lesson 1's fix. But
Quart sends the status line *before* it starts the body — and the body is
where the upstream is asked. When the upstream answers 429 (slow down,
retry after a second) the client has long had its 200: the refusal arrives
as a body that is not an event stream, the openai SDK sees an empty answer,
and nothing backs off or retries.
"""

from __future__ import annotations

from quart_trio import QuartTrio

from server.testing.lessons import plain_gateway, serve_lesson


def create_app(upstream: str) -> QuartTrio:
    return plain_gateway(upstream)  # the view returns at once: Quart sends 200 right away


if __name__ == "__main__":
    serve_lesson(__file__, create_app, "status=429,retry_after=1")
