"""End-to-end: the TCP server of `server.serving.tcp_server` keeps hypercorn's connection semantics.

Writes skip trio's layers and the keep-alive timer is one task per connection
instead of one per request; connections must still be reused, closed after
``keep_alive_timeout`` of idleness (never while a request is served), and
leave nothing behind once their clients are gone.
"""

from __future__ import annotations

import orjson
import trio

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
