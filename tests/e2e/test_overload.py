"""End-to-end: a worker whose event loop falls behind refuses new streams at once, keeps
its admitted ones going, and takes new streams again once it has caught up.

How the loop is made late, honestly: a task of the serving process that
holds the loop — `time.sleep` between checkpoints, as CPU-bound work or a
blocking call would — runs beside Sluice in the same trio loop (Sluice runs
in the test's process here, under hypercorn on loopback). Nothing of
Sluice's is replaced or told: its own monitor measures the lag, its own
guard decides, and the refusal goes out through its real ASGI app.
"""

from __future__ import annotations

import signal
import time
from dataclasses import replace
from pathlib import Path

import httpx
import orjson
import pytest
import trio
import trio.lowlevel

from server.config import CorsSettings, OverloadSettings
from server.limits.overload import LagGuard
from server.testing.fake_upstream import FakeUpstream, Scenario
from tests.conftest import PROMPTLY, chat_body, running_sluice, settings_for
from tests.e2e.test_lifecycle import BOTH, START_BOUND, launched, write_config

URL = "/v1/chat/completions"
PAGE = "https://app.example"  # a page on another origin that CORS allows
# Shed above 50 ms of smoothed lag for 0.2 s; take streams again once under 20 ms for 0.3 s.
OVERLOAD = OverloadSettings(lag_threshold=0.05, onset=0.2, lag_clear=0.02, hold=0.3,
                            retry_after=2.0)
# How long the busy task holds the loop each time: twice the threshold.
HOLD_LOOP = 0.1
# How long after its headers a request's body comes: longer than the loop is held.
BODY_LATE = 0.3
# The admitted stream: 4 s of chunks at 20 per second, longer than the overload lasts.
ADMITTED = Scenario(tokens=80, tps=20)


async def hold_the_loop(stop: trio.Event) -> None:
    """A busy neighbour in the serving process: blocks the loop, yields, blocks again."""
    while not stop.is_set():
        time.sleep(HOLD_LOOP)  # noqa: ASYNC251  (blocking the loop is the point)
        await trio.lowlevel.checkpoint()


async def refused_then_reused(base_url: str) -> tuple[int, int]:
    """On one raw connection: a chat request whose body comes `BODY_LATE` after its headers, then
    ``GET /healthz``; the two statuses (a closed connection fails the test)."""
    host, port = base_url.removeprefix("http://").rsplit(":", 1)
    body = b'{"model": "fake-model", "stream": true, "messages": []}'
    statuses = []
    async with await trio.open_tcp_stream(host, int(port)) as stream:
        await stream.send_all(b"POST " + URL.encode() + b" HTTP/1.1\r\nHost: x\r\n"
                              b"Content-Type: application/json\r\n"
                              b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n")
        await trio.sleep(BODY_LATE)
        await stream.send_all(body)
        with trio.fail_after(PROMPTLY):
            statuses.append(await read_response_status(stream))
            await stream.send_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            statuses.append(await read_response_status(stream))
    return statuses[0], statuses[1]


async def read_response_status(stream: trio.SocketStream) -> int:
    """Read one response with a Content-Length body; its status."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = await stream.receive_some()
        assert chunk, "the server closed the connection"
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    length = next(int(line.split(b":")[1]) for line in head.lower().split(b"\r\n")
                  if line.startswith(b"content-length:"))
    while len(rest) < length:
        chunk = await stream.receive_some()
        assert chunk, "the server closed the connection"
        rest += chunk
    return int(head.split(b" ")[1])


async def test_new_streams_are_refused_while_the_loop_is_behind_and_admitted_ones_go_on(
        nursery: trio.Nursery) -> None:
    upstream = FakeUpstream(ADMITTED)
    await nursery.start(upstream.serve, 0)
    settings = replace(settings_for(upstream.base_url), overload=OVERLOAD,
                       cors=CorsSettings(allow_origins=(PAGE,)))
    async with running_sluice(settings, overload=True) as sluice, \
            httpx.AsyncClient(base_url=sluice.base_url, timeout=30.0) as client:
        stop = trio.Event()
        admitted: list[str] = []
        during: list[int] = []  # chunks the admitted stream had when shedding began, and ended

        async def admitted_stream() -> None:
            async with client.stream("POST", URL, json=chat_body()) as response:
                assert response.status_code == 200
                async for line in response.aiter_lines():
                    if line:
                        admitted.append(line)

        async with trio.open_nursery() as streams:
            streams.start_soon(admitted_stream)
            with trio.fail_after(PROMPTLY):
                await upstream.wait_for_request(1)
            assert sluice.sample("sluice_overload_shedding") == 0.0
            streams.start_soon(hold_the_loop, stop)
            with trio.fail_after(PROMPTLY):
                while not sluice.sample("sluice_overload_shedding"):  # noqa: ASYNC110
                    await trio.sleep(0.01)
            assert sluice.sample("sluice_event_loop_lag_seconds") > OVERLOAD.lag_threshold
            during.append(len(admitted))

            # A new stream: refused at once with a retryable, OpenAI-shaped 503 (that a page
            # on an allowed origin may read)...
            refused = await client.post(URL, json=chat_body(), headers={"Origin": PAGE})
            assert refused.status_code == 503
            assert refused.headers["retry-after"] == "2"
            assert refused.headers["access-control-allow-origin"] == PAGE
            assert "Retry-After" in refused.headers["access-control-expose-headers"]
            error = refused.json()["error"]
            assert (error["type"], error["code"]) == ("service_unavailable",
                                                      "gateway_overloaded")
            assert error["error_id"].startswith("err_")
            # ...that never reached the upstream: one request so far, the admitted one.
            assert len(upstream.requests) == 1
            # A client whose body comes after its headers keeps its connection: the
            # refusal reads the body first (hypercorn recycles only a request read whole).
            assert await refused_then_reused(sluice.base_url) == (503, 200)
            # Health, readiness, metrics and the model list answer as usual; a non-streaming
            # chat request is new work like any other.
            for path in ("/healthz", "/readyz", "/metrics", "/v1/models"):
                assert (await client.get(path)).status_code == 200
            assert (await client.post(URL, json=chat_body(stream=False))).status_code == 503
            assert sluice.sample("sluice_overload_refusals_total") == 3.0

            await trio.sleep(0.5)  # the admitted stream goes on while new ones are refused
            during.append(len(admitted))
            stop.set()
            with trio.fail_after(PROMPTLY):  # the lag clears, held for 0.3 s: streams again
                while sluice.sample("sluice_overload_shedding"):  # noqa: ASYNC110
                    await trio.sleep(0.01)
            recovered = await client.post(URL, json=chat_body(max_tokens=3))
            assert recovered.status_code == 200
            assert recovered.text.rstrip().endswith("data: [DONE]")
        assert during[1] > during[0], "the admitted stream stopped while the loop was behind"
        assert admitted[-1] == "data: [DONE]"  # it finished, whole
        assert sluice.sample("sluice_overload_refusals_total") == 3.0


@pytest.mark.parametrize("launcher", BOTH)
async def test_the_guard_runs_in_the_app_under_every_launcher_and_ends_with_it(
        launcher: str, upstream: FakeUpstream, tmp_path: Path) -> None:
    """Plain hypercorn and `sluice serve` alike: the lag is sampled while serving (the
    app's lifespan starts the guard), and the guard does not hold up the exit."""
    async with launched(launcher, write_config(tmp_path, upstream)) as sluice, \
            httpx.AsyncClient(base_url=sluice.base_url, timeout=PROMPTLY) as client:

        async def samples() -> float:
            for line in (await client.get("/metrics")).text.splitlines():
                if line.startswith("sluice_event_loop_lag_samples_seconds_count "):
                    return float(line.split()[1])
            return 0.0

        first = await samples()
        with trio.fail_after(PROMPTLY):
            while await samples() <= first:  # noqa: ASYNC110  (another process's metric)
                await trio.sleep(0.05)
        assert "sluice_overload_shedding 0.0" in (await client.get("/metrics")).text
        sluice.process.send_signal(signal.SIGTERM)
        with trio.fail_after(START_BOUND):
            assert await sluice.process.wait() == 0


class SpawnCounter(trio.abc.Instrument):
    """Counts the tasks started in the serving process (the test's own included)."""

    def __init__(self) -> None:
        self.spawned = 0

    def task_spawned(self, task: trio.lowlevel.Task) -> None:
        self.spawned += 1


async def test_a_refusal_whose_request_came_whole_is_answered_by_the_connection_itself(
        upstream: FakeUpstream) -> None:
    """Sluice's TCP server asks the app first (`SluiceApp.immediate_response`): a refused
    request that came whole with its head is answered from the connection's task, without
    starting the app's — one pass of a busy loop sooner. A body in pieces goes the ASGI way.
    Both keep the connection for the next request."""
    async with running_sluice(settings_for(upstream.base_url)) as sluice:
        guard = LagGuard(OVERLOAD)  # no sampler: a guard that says the loop is behind
        guard.shedding, guard.lag = True, 1.0
        sluice.app.overload = guard
        host, port = sluice.base_url.removeprefix("http://").rsplit(":", 1)
        body = orjson.dumps(chat_body())
        head = (b"POST " + URL.encode() + b" HTTP/1.1\r\nHost: x\r\nContent-Type: "
                b"application/json\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n")
        counter = SpawnCounter()
        async with await trio.open_tcp_stream(host, int(port)) as stream:
            with trio.fail_after(PROMPTLY):
                await read_healthz(stream)  # the connection's task is running
                trio.lowlevel.add_instrument(counter)
                try:
                    await stream.send_all(head + body)  # one write: the request whole
                    assert await read_response_status(stream) == 503
                    whole = counter.spawned
                    await stream.send_all(head)  # the body after the head: the ASGI way
                    await trio.sleep(0.05)
                    await stream.send_all(body)
                    assert await read_response_status(stream) == 503
                    in_pieces = counter.spawned - whole
                finally:
                    trio.lowlevel.remove_instrument(counter)
                await read_healthz(stream)  # still the same connection
        assert whole == 0, "the app's task was started for a request the server could answer"
        assert in_pieces == 1, "a body in pieces is the app's to read and answer"
        assert guard.refusals == 2
        assert len(upstream.requests) == 0


async def read_healthz(stream: trio.SocketStream) -> None:
    await stream.send_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert await read_response_status(stream) == 200
