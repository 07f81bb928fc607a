"""End-to-end: clients that stop reading are dropped, and their upstream closed.

hypercorn's writes are shielded from cancellation, so a client that keeps its
connection open but reads nothing would hold a stream (and its upstream
connection) forever. `server.serving.launch` bounds it with TCP_USER_TIMEOUT on the
listening socket; this proves it on a real socket with a zero receive window.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from functools import partial

import orjson
import pytest
import trio

from server.testing.fake_upstream import FakeUpstream, Scenario
from tests.conftest import chat_body, running_sluice, settings_for

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


# ------------------------------------------------------------------ dead clients

# A client host of our own: a network namespace joined to this one by a veth pair.
NETNS = "sluice-dead-client"
HOST_SIDE, CLIENT_SIDE = "sluice-dh0", "sluice-dc0"
HOST_ADDR, CLIENT_ADDR = "10.213.7.1", "10.213.7.2"

CLIENT = """
import socket, sys, time
s = socket.create_connection((sys.argv[1], int(sys.argv[2])))
body = sys.argv[3].encode()
s.sendall(b"POST /v1/chat/completions HTTP/1.1\\r\\nhost: x\\r\\ncontent-type: application/json"
          b"\\r\\ncontent-length: %d\\r\\n\\r\\n%s" % (len(body), body))
assert s.recv(4096).startswith(b"HTTP/1.1 200")
print("streaming", flush=True)
while True:
    s.recv(65536)
"""


def _can_make_hosts() -> bool:
    return os.geteuid() == 0 and shutil.which("ip") is not None


async def _sh(*command: str) -> None:
    await trio.run_process(list(command), capture_stdout=True, capture_stderr=True)


async def _make_client_host() -> None:
    await _sh("ip", "netns", "add", NETNS)
    await _sh("ip", "link", "add", HOST_SIDE, "type", "veth", "peer", "name", CLIENT_SIDE)
    await _sh("ip", "link", "set", CLIENT_SIDE, "netns", NETNS)
    await _sh("ip", "addr", "add", f"{HOST_ADDR}/30", "dev", HOST_SIDE)
    await _sh("ip", "link", "set", HOST_SIDE, "up")
    await _sh("ip", "netns", "exec", NETNS, "ip", "addr", "add", f"{CLIENT_ADDR}/30",
              "dev", CLIENT_SIDE)
    await _sh("ip", "netns", "exec", NETNS, "ip", "link", "set", CLIENT_SIDE, "up")
    await _sh("ip", "netns", "exec", NETNS, "ip", "link", "set", "lo", "up")


async def _remove_client_host() -> None:
    await trio.run_process(["ip", "netns", "del", NETNS], check=False,
                           capture_stdout=True, capture_stderr=True)
    await trio.run_process(["ip", "link", "del", HOST_SIDE], check=False,
                           capture_stdout=True, capture_stderr=True)


async def test_a_client_that_vanishes_without_fin_or_rst_is_detected(
    upstream: FakeUpstream,
) -> None:
    """Pull the cable: every packet to the client is dropped; no FIN, no RST ever comes."""
    if not _can_make_hosts():
        pytest.skip("needs root and iproute2 to make a client host in a network namespace")
    await _remove_client_host()  # a leftover from an interrupted run
    upstream.scenario = Scenario(tokens=10_000, tps=20)  # a steady trickle to deliver
    settings = settings_for(upstream.base_url, send_stall_timeout=STALL)
    try:
        await _make_client_host()
        async with running_sluice(settings, bind=f"{HOST_ADDR}:0") as sluice, \
                trio.open_nursery() as nursery:
            host, port = sluice.base_url.removeprefix("http://").split(":")
            client = await nursery.start(partial(
                trio.run_process,
                ["ip", "netns", "exec", NETNS, sys.executable, "-c", CLIENT, host, port,
                 orjson.dumps(chat_body()).decode()],
                stdout=subprocess.PIPE, check=False))
            assert client.stdout is not None
            with trio.fail_after(5):
                assert (await client.stdout.receive_some()).startswith(b"streaming")
            await upstream.wait_for_request(1)
            # The client's link goes down: nothing it could send (FIN, RST) gets out,
            # and nothing sent to it is ever acknowledged.
            await _sh("ip", "netns", "exec", NETNS, "ip", "link", "set", CLIENT_SIDE, "down")
            pulled_at = trio.current_time()
            with trio.fail_after(STALL + SLACK):
                await upstream.wait_all_closed()
            assert trio.current_time() - pulled_at >= STALL * 0.5
            await sluice.settle()
            assert sluice.sample("sluice_client_disconnects_total") == 1
            client.kill()
    finally:
        with trio.move_on_after(5, shield=True):
            await _remove_client_host()
