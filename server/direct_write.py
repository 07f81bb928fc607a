"""hypercorn's trio TCP server with a direct write path for plain-TCP connections.

Every ASGI body message reaches the socket through hypercorn's
``TCPServer.protocol_send``: a `trio.Lock`, a shielded `trio.CancelScope`,
then `trio.SocketStream.send_all`, which adds a conflict detector, an
error-translating context manager and two scheduler checkpoints. Measured on
the benchmark machine (`tests/bench`), that is ~25 µs of Python per write
for what the kernel does in ~2 µs; a relay makes one write per batch of
chunks, so it was the largest single cost of relaying a chunk.

`DirectWriteTCPServer.protocol_send` first tries the write the way the kernel
sees it: one non-blocking ``send`` of the whole block, when no other write is
in progress. Only what the kernel does not take (a full send buffer: a slow
or stalled client) goes the original way, under the lock and the shield,
which then waits for the socket to drain — so backpressure, ordering and the
slow-client bound (``TCP_USER_TIMEOUT``, `server.serving`) are unchanged.
A failed send means the client is gone, exactly as hypercorn treats a
`trio.BrokenResourceError`. TLS connections always take the original path.

The fast path never yields to the scheduler. That is safe for hypercorn's
callers (the write was shielded anyway) and fair for ours: a stream's writer
checkpoints on its channel between writes (`server.writers`).

`install` points hypercorn's ``worker_serve`` at this class; ``sluice serve``
and the test suite's server both call it, so what is tested is what is served.
"""

from __future__ import annotations

import os

import trio
from hypercorn.events import Closed, Event, RawData
from hypercorn.trio import run as hypercorn_trio_run
from hypercorn.trio.tcp_server import TCPServer


class DirectWriteTCPServer(TCPServer):
    """hypercorn's `TCPServer`, writing straight to the socket when the kernel can take it all."""

    async def protocol_send(self, event: Event) -> None:
        if type(event) is not RawData or self.send_lock.locked():
            await super().protocol_send(event)
            return
        stream = self.stream
        if not isinstance(stream, trio.SocketStream):
            await super().protocol_send(event)  # TLS: the SSL object frames the bytes
            return
        data = event.data
        fd = stream.socket.fileno()  # -1 once closed: never a recycled descriptor
        if fd < 0:
            await super().protocol_send(event)  # reports the closed socket the usual way
            return
        try:
            sent = os.write(fd, data)
        except BlockingIOError:
            sent = 0
        except OSError:
            await self.protocol.handle(Closed())  # reset, broken pipe, timed out
            return
        if sent < len(data):  # the send buffer is full: wait for it the original way
            await super().protocol_send(RawData(data=data[sent:]))


def install() -> None:
    """Make hypercorn's trio ``worker_serve`` (and so ``hypercorn.trio.serve``) use it."""
    hypercorn_trio_run.TCPServer = DirectWriteTCPServer  # type: ignore[attr-defined]
