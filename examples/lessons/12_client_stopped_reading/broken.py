"""Lesson 12, broken: a client that stopped reading holds its stream forever.

Nothing in sight is wrong: this is the plain gateway, lesson 1's fix. A
client that *leaves* is noticed at once. A client that stays connected but
stops reading — a hung browser tab, a consumer stuck on a lock — is never
noticed: the kernel's buffers fill, hypercorn's write waits for room, and
it waits shielded from every cancel scope, for as long as the connection is
open. Backpressure stops the pump and TCP stops the model, so memory stays
bounded; but the stream, its upstream connection and the model's slot are
held until TCP gives up on the client, which it does not while the client's
kernel keeps answering.
"""

from __future__ import annotations

from quart_trio import QuartTrio

from server.testing.lessons import plain_gateway, serve_lesson


def create_app(upstream: str) -> QuartTrio:
    return plain_gateway(upstream)


if __name__ == "__main__":
    serve_lesson(__file__, create_app, "tokens=1000000", tries=(
        "python examples/lessons/12_client_stopped_reading/stop_reading.py {url}",))
