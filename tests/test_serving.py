"""End-to-end: clients that stop reading are dropped, and their upstream closed.

hypercorn's writes are shielded from cancellation, so a client that keeps its
connection open but reads nothing would hold a stream (and its upstream
connection) forever. `server.serving` bounds it with TCP_USER_TIMEOUT on the
listening socket; this proves it on a real socket with a zero receive window.
"""

from __future__ import annotations

import socket

import orjson
import trio

from server.fake_upstream import FakeUpstream, Scenario

from .conftest import chat_body, running_sluice, settings_for

# The stall bound under test, and how long after it the cleanup may take.
STALL = 1.0
SLACK = 3.0


async def test_a_client_that_stops_reading_is_dropped_and_its_upstream_closed(
    upstream: FakeUpstream,
) -> None:
    upstream.scenario = Scenario(tokens=1_000_000)  # as fast as it goes: fills every buffer
    settings = settings_for(upstream.base_url, send_stall_timeout=STALL)
    async with running_sluice(settings) as sluice:
        host, port = sluice.base_url.removeprefix("http://").split(":")
        sock = trio.socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a small window
        with sock:
            await sock.connect((host, int(port)))
            body = orjson.dumps(chat_body())
            await sock.send(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n"
                            b"content-type: application/json\r\n"
                            b"content-length: %d\r\n\r\n%s" % (len(body), body))
            head = await sock.recv(1024)
            assert head.startswith(b"HTTP/1.1 200")
            # ...and now the client reads nothing more. Backpressure fills the channel,
            # the pump stops reading, TCP pushes back on the upstream; the stall bound
            # must end it all.
            stopped_at = trio.current_time()
            with trio.fail_after(STALL + SLACK):
                await upstream.wait_all_closed()
            elapsed = trio.current_time() - stopped_at
            assert elapsed >= STALL * 0.5  # it was the stall bound, not something sooner
        await sluice.settle()
        assert sluice.sample("sluice_client_disconnects_total") == 1
