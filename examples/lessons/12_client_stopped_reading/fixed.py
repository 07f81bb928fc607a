"""Lesson 12, fixed: a bound on how long a write may stall, kept by the kernel.

No cancel scope can interrupt hypercorn's shielded write, so the bound
lives below it: ``TCP_USER_TIMEOUT`` on the listening socket (accepted
connections inherit it, on Linux). Data that stays unacknowledged — or stuck
behind a zero window — for ``SEND_STALL_TIMEOUT`` aborts the connection;
the write fails, hypercorn reports the client gone, quart-trio cancels the
request, and the stream's scope lets go of the upstream like for any
client that left. TCP keepalive does the same for a peer that vanished.
"""

from __future__ import annotations

import socket

from quart_trio import QuartTrio

from server.testing.lessons import plain_gateway, serve_lesson


def tune_listener(app: QuartTrio, sock: socket.socket) -> None:
    """Abort a connection whose sent data goes unacknowledged for ``SEND_STALL_TIMEOUT``."""
    seconds = app.config["SEND_STALL_TIMEOUT"]
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, int(seconds * 1000))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)  # probes for a silent peer


def create_app(upstream: str) -> QuartTrio:
    app = plain_gateway(upstream)
    app.config["SEND_STALL_TIMEOUT"] = 30.0  # seconds a write to the client may stall
    return app


if __name__ == "__main__":
    serve_lesson(__file__, create_app, "tokens=1000000", tune_listener=tune_listener, tries=(
        "python examples/lessons/12_client_stopped_reading/stop_reading.py {url}",))
