"""Lesson 9, fixed: every timeout set on purpose.

Connecting, writing the request and waiting for a pooled connection keep
httpx's 5 s. Reading does not: httpx's read timeout bounds *every* wait for
bytes, and the first one is a model thinking — minutes, for a reasoning
model. Here it is set to what a first token may take; lesson 8 bounds the
gaps after it on its own, and Sluice bounds both with timers of its own.
"""

from __future__ import annotations

import httpx
from quart_trio import QuartTrio

from server.testing.lessons import plain_gateway, serve_lesson

FIRST_TOKEN_TIMEOUT = 300.0  # seconds a model may think before it writes


def create_app(upstream: str) -> QuartTrio:
    return plain_gateway(upstream, timeout=httpx.Timeout(5.0, read=FIRST_TOKEN_TIMEOUT))


if __name__ == "__main__":
    serve_lesson(__file__, create_app, "tokens=20,tps=5,first_delay=8")
