"""`BatchAcceptListener`: connections that wait together are taken in one step.

Real sockets on loopback: clients connect (the kernel completes each
handshake into the listening socket's backlog) before the listener is asked,
so what waits is known; the checks are on trio's checkpoints, which is what a
busy loop pays a pass for.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager

import trio
import trio.testing
from hypercorn.trio import run as hypercorn_trio_run

from server.serving.accept import ACCEPT_BATCH, BatchAcceptListener


@contextmanager
def clients(count: int, port: int) -> Iterator[list[socket.socket]]:
    """``count`` blocking client connections to ``port``, closed on exit."""
    opened = [socket.create_connection(("127.0.0.1", port)) for _ in range(count)]
    try:
        yield opened
    finally:
        for sock in opened:
            sock.close()


async def listening() -> tuple[BatchAcceptListener, int]:
    sock = trio.socket.socket()
    await sock.bind(("127.0.0.1", 0))
    sock.listen(ACCEPT_BATCH * 2)
    return BatchAcceptListener(sock), sock.getsockname()[1]


async def test_connections_waiting_together_are_taken_in_one_step() -> None:
    listener, port = await listening()
    async with listener:
        with clients(10, port) as sent:
            with trio.testing.assert_checkpoints():
                first = await listener.accept()  # waits (and checkpoints) as trio's does
            with trio.testing.assert_no_checkpoints():
                rest = [await listener.accept() for _ in range(9)]
            with trio.move_on_after(0.05) as nothing_more:
                await listener.accept()
            assert nothing_more.cancelled_caught
            # Each is a working connection, in the clients' order.
            for number, client in enumerate(sent):
                client.sendall(b"%d" % number)
            for number, stream in enumerate([first, *rest]):
                assert await stream.receive_some(16) == b"%d" % number
                await stream.aclose()


async def test_one_wait_takes_at_most_a_batch() -> None:
    listener, port = await listening()
    async with listener:
        with clients(ACCEPT_BATCH + 3, port):
            streams = [await listener.accept()]
            with trio.testing.assert_no_checkpoints():
                streams += [await listener.accept() for _ in range(ACCEPT_BATCH - 1)]
            with trio.testing.assert_checkpoints():  # the batch is out: it waits again
                streams.append(await listener.accept())
            for stream in streams:
                await stream.aclose()


async def test_closing_closes_the_connections_taken_but_not_handed_out() -> None:
    listener, port = await listening()
    with clients(3, port) as sent:
        async with listener:
            stream = await listener.accept()  # the other two are taken with it
        for client in sent[1:]:
            client.settimeout(5)
            assert client.recv(1) == b""  # closed by the server
        await stream.aclose()


def test_hypercorn_builds_its_listeners_with_it() -> None:
    # tests/conftest.py installed the serving set-up, as server.app does.
    view = hypercorn_trio_run.trio  # type: ignore[attr-defined]
    assert view.SocketListener is BatchAcceptListener
    assert view.SSLListener is trio.SSLListener and view.socket is trio.socket
    assert trio.SocketListener is not BatchAcceptListener  # trio itself is untouched
