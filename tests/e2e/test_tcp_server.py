"""End-to-end: the TCP server of `server.serving.tcp_server` keeps hypercorn's connection semantics.

Writes skip trio's layers and the keep-alive timer is one task per connection
instead of one per request; connections must still be reused, closed after
``keep_alive_timeout`` of idleness (never while a request is served), and
leave nothing behind once their clients are gone. A stream's response takes
its connection's shortcuts (`DirectBody`): fewer writes, the same bytes.
"""

from __future__ import annotations

import os
import re

import h11
import orjson
import pytest
import trio

from server.serving import tcp_server
from server.serving.tcp_server import LeanTCPServer
from server.testing.fake_upstream import FakeUpstream, Scenario
from tests.conftest import PROMPTLY, chat_body, running_sluice, settings_for

KEEP_ALIVE = 0.3
HEALTHZ = b"GET /healthz HTTP/1.1\r\nhost: sluice\r\n\r\n"


async def _read_response(stream: trio.SocketStream) -> bytes:
    data = b""
    while b'"status":"ok"' not in data and b"0\r\n\r\n" not in data:
        chunk = await stream.receive_some()
        assert chunk, f"closed mid-response: {data!r}"
        data += chunk
    return data


async def _open(base_url: str) -> trio.SocketStream:
    host, port = base_url.removeprefix("http://").split(":")
    return await trio.open_tcp_stream(host, int(port))


def _tasks(task: trio.lowlevel.Task) -> int:
    return 1 + sum(_tasks(child) for nursery in task.child_nurseries
                   for child in nursery.child_tasks)


def test_hypercorn_serves_with_this_server() -> None:
    from hypercorn.trio import run as hypercorn_trio_run  # conftest installed it

    assert hypercorn_trio_run.TCPServer is LeanTCPServer  # type: ignore[attr-defined]


async def test_an_idle_connection_is_reused_then_closed_after_the_keep_alive_timeout(
    upstream: FakeUpstream,
) -> None:
    settings = settings_for(upstream.base_url)
    async with running_sluice(settings, keep_alive_timeout=KEEP_ALIVE) as sluice:
        stream = await _open(sluice.base_url)
        for _ in range(3):  # one connection, several requests
            await stream.send_all(HEALTHZ)
            assert (await _read_response(stream)).startswith(b"HTTP/1.1 200")
        answered = trio.current_time()
        with trio.fail_after(KEEP_ALIVE + PROMPTLY):
            assert await stream.receive_some() == b""  # the server closed it
        assert trio.current_time() - answered >= KEEP_ALIVE * 0.9
        await stream.aclose()


async def test_a_stream_outlasting_the_keep_alive_timeout_is_not_cut(
    upstream: FakeUpstream,
) -> None:
    upstream.scenario = Scenario(tokens=8, tps=10)  # 0.8 s: well past the keep-alive timeout
    settings = settings_for(upstream.base_url)
    async with running_sluice(settings, keep_alive_timeout=KEEP_ALIVE) as sluice:
        stream = await _open(sluice.base_url)
        body = chat_body(max_tokens=8)
        payload = orjson.dumps(body)
        await stream.send_all(b"POST /v1/chat/completions HTTP/1.1\r\nhost: sluice\r\n"
                              b"content-type: application/json\r\n"
                              b"content-length: %d\r\n\r\n%s" % (len(payload), payload))
        response = await _read_response(stream)
        assert response.startswith(b"HTTP/1.1 200") and b"data: [DONE]" in response
        with trio.fail_after(KEEP_ALIVE + PROMPTLY):
            assert await stream.receive_some() == b""  # then idle: closed as usual
        await stream.aclose()


async def test_connections_closed_by_their_clients_leave_no_task_behind(
    upstream: FakeUpstream,
) -> None:
    async with running_sluice(settings_for(upstream.base_url)) as sluice:
        root = trio.lowlevel.current_root_task()
        assert root is not None
        await trio.sleep(0.1)
        before = _tasks(root)
        for _ in range(30):
            stream = await _open(sluice.base_url)
            await stream.send_all(HEALTHZ)
            await _read_response(stream)
            await stream.aclose()
        for _ in range(int(PROMPTLY / 0.02)):  # the server notices each close on its own
            if _tasks(root) <= before:
                break
            await trio.sleep(0.02)
        assert _tasks(root) <= before


class _Writes:
    """Stands in for the module's ``os``: records each write to a client, then makes it."""

    def __init__(self) -> None:
        self.data: list[bytes] = []

    def write(self, fd: int, data: bytes) -> int:
        self.data.append(bytes(data))
        return os.write(fd, data)


async def _stream_over_raw_socket(base_url: str, max_tokens: int) -> bytes:
    """A whole streamed chat response as the client's socket received it."""
    stream = await _open(base_url)
    payload = orjson.dumps(chat_body(max_tokens=max_tokens))
    await stream.send_all(b"POST /v1/chat/completions HTTP/1.1\r\nhost: sluice\r\n"
                          b"content-type: application/json\r\n"
                          b"content-length: %d\r\n\r\n%s" % (len(payload), payload))
    data = b""
    while not data.endswith(b"0\r\n\r\n"):
        chunk = await stream.receive_some()
        assert chunk, f"closed mid-response: {data!r}"
        data += chunk
    await stream.aclose()
    return data


def _comparable(response: bytes) -> tuple[list[tuple[bytes, bytes]], bytes]:
    """The response as an HTTP client reads it (headers, de-chunked body), without what
    differs between two runs: the date, the request id, chunk ids and timestamps. (How
    the body is cut into chunks depends on timing: the writer coalesces what waits.)"""
    client = h11.Connection(h11.CLIENT)
    client.send(h11.Request(method="POST", target="/", headers=[("host", "x"),
                                                               ("content-length", "0")]))
    client.send(h11.EndOfMessage())
    client.receive_data(response)
    head = client.next_event()
    assert isinstance(head, h11.Response) and head.status_code == 200
    body = b""
    while not isinstance(event := client.next_event(), h11.EndOfMessage):
        assert isinstance(event, h11.Data)
        body += event.data
    headers = [(name, value) for name, value in head.headers
               if name not in (b"date", b"x-request-id")]
    return headers, re.sub(rb'"(id|created)":("[^"]*"|\d+)', rb'"\1":_', body)


async def test_a_streamed_response_goes_out_in_fewer_writes_with_the_same_bytes(
    upstream: FakeUpstream, monkeypatch: pytest.MonkeyPatch,
) -> None:
    upstream.scenario = Scenario(tokens=5, tps=50)
    writes = _Writes()
    monkeypatch.setattr(tcp_server, "os", writes)
    async with running_sluice(settings_for(upstream.base_url)) as sluice:
        direct = await _stream_over_raw_socket(sluice.base_url, max_tokens=5)
        ours = writes.data  # only the TCP server's writes to its clients pass here
        assert len(ours) >= 3
        # The headers leave with the first chunk, the last chunk with the end of the body,
        # and every chunk between is one write, framed as h11 frames it.
        assert ours[0].startswith(b"HTTP/1.1 200") and b"\r\n\r\n" in ours[0]
        assert ours[0].split(b"\r\n\r\n", 1)[1].endswith(b"\n\n\r\n")  # a whole first chunk
        assert ours[-1].endswith(b"data: [DONE]\n\n\r\n0\r\n\r\n")
        for middle in ours[1:-1]:
            size, _, rest = middle.partition(b"\r\n")
            assert int(size, 16) == len(rest) - 2 and rest.endswith(b"\n\n\r\n")
        assert b"".join(ours) == direct  # nothing else went to this client

        # The same stream through hypercorn's and h11's own path: the same bytes.
        monkeypatch.setattr(tcp_server.DirectBody, "of", classmethod(lambda cls, send: None))
        asgi = await _stream_over_raw_socket(sluice.base_url, max_tokens=5)
    assert _comparable(direct) == _comparable(asgi)
    assert direct.count(b"data: [DONE]") == 1
