"""A client that asks for an answer, reads its first bytes, and then stops reading.

    python examples/lessons/12_client_stopped_reading/stop_reading.py [URL] [--seconds N]

It stays connected for N seconds (default 40) without reading — its small
receive window fills, then the gateway's send buffer — and then looks: is the
connection still there, or did the gateway let it go?
"""

from __future__ import annotations

import argparse
import json
import socket
import time
from urllib.parse import urlsplit

WINDOW = 4096
"""The client's receive buffer: small, so that it fills at once."""
LOOK = 3.0
"""Seconds the client reads again, at the end, to see whether the answer still flows."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("url", nargs="?", default="http://127.0.0.1:8100")
    parser.add_argument("--seconds", type=float, default=40.0)
    args = parser.parse_args()
    where = urlsplit(args.url)
    body = json.dumps({"model": "m", "stream": True,
                       "messages": [{"role": "user", "content": "hi"}]}).encode()
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, WINDOW)
        sock.connect((where.hostname or "127.0.0.1", where.port or 80))
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: lesson\r\n"
                     b"content-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
                     % (len(body), body))
        print(sock.recv(64).split(b"\r\n")[0].decode(), f"— now reading nothing for "
              f"{args.seconds:g} s", flush=True)
        time.sleep(args.seconds)
        print(look(sock))


def look(sock: socket.socket) -> str:
    """Read again for a few seconds: does the answer still flow, or is the connection gone?"""
    sock.settimeout(LOOK)
    deadline = time.monotonic() + LOOK
    try:
        while time.monotonic() < deadline:
            if not sock.recv(65536):
                return "the gateway closed the connection: it let go of the stream"
    except ConnectionResetError:
        return "the gateway reset the connection: it let go of the stream"
    except TimeoutError:
        return "the answer stopped flowing, but the connection is open"
    return "the answer still flows: the gateway held the stream all along"


if __name__ == "__main__":
    main()
