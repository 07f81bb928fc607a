"""Accept every connection that waits, in one step of the accept loop.

A listening socket's backlog fills when many clients connect at once: a
load balancer's pool warming up, a thousand streams opening, clients coming
back after a refusal. trio accepts one connection per task step — a
successful ``accept`` ends with a scheduler checkpoint, so the next one waits
for the following pass of the run loop. A pass lasts as long as the work the
loop has: ~1 ms idle, 20–50 ms on a worker that relays a thousand streams.
At one accept per pass, such a worker took 20–50 connections a second while
clients opened 250, so connections queued in the kernel for seconds before
Sluice read a byte of them: first bytes 9 s late, refusals that should take
milliseconds taking 1.6 s (`tests/bench/README.md`). asyncio's servers take
up to their backlog's worth per readiness event; this does the same for trio.

`BatchAcceptListener` waits for a connection as `trio.SocketListener` does,
then takes what else is already waiting (up to `ACCEPT_BATCH`) without
waiting, and hands those out before it waits again. `install` makes the
listeners hypercorn's trio worker builds be these.
"""

from __future__ import annotations

import os
import socket
import types
from collections import deque
from typing import Any

import trio
from hypercorn.trio import run as hypercorn_trio_run

# At most this many connections taken per wait (one wait: one pass of the loop).
ACCEPT_BATCH = 64


class BatchAcceptListener(trio.abc.Listener[trio.SocketStream]):
    """A `trio.SocketListener` that, once a connection came, takes all that wait with it."""

    def __init__(self, sock: trio.socket.SocketType) -> None:
        self._listener = trio.SocketListener(sock)
        self.socket = sock
        # The same listening socket through a second descriptor, for accepts that never
        # wait (the first one's non-blocking flag is the socket's, shared by both).
        self._now = socket.socket(fileno=os.dup(sock.fileno()))
        self._now.setblocking(False)
        self._waiting: deque[trio.SocketStream] = deque()

    async def accept(self) -> trio.SocketStream:
        """The next connection: one taken earlier, else the next to come and those with it.

        A connection taken earlier is returned without a checkpoint; the loop
        that calls this checkpoints on every wait, one in `ACCEPT_BATCH`
        connections at least.
        """
        if self._waiting:
            return self._waiting.popleft()
        stream = await self._listener.accept()
        for _ in range(ACCEPT_BATCH - 1):
            try:
                sock, _ = self._now.accept()
            except OSError:
                break  # none waits (or an error the next real accept will report)
            self._waiting.append(trio.SocketStream(trio.socket.from_stdlib_socket(sock)))
        return stream

    async def aclose(self) -> None:
        while self._waiting:
            self._waiting.popleft().socket.close()  # taken, never served
        self._now.close()
        await self._listener.aclose()


class _TrioForHypercorn(types.ModuleType):
    """trio as hypercorn's ``run`` module sees it: trio, but its plain listeners batch."""

    SocketListener = BatchAcceptListener

    def __getattr__(self, name: str) -> Any:
        return getattr(trio, name)


def install() -> None:
    """Make the listeners hypercorn's trio ``worker_serve`` builds be `BatchAcceptListener`s.

    hypercorn builds them with ``trio.SocketListener(...)`` in its ``run``
    module; that module's name ``trio`` is pointed at a view of trio where this
    one class is ours (TLS listeners wrap it the same way). Nothing else of
    trio, and no other module, changes.
    """
    hypercorn_trio_run.trio = _TrioForHypercorn("trio")  # type: ignore[attr-defined]
