"""End-to-end: how Sluice starts and stops, as real processes with real signals.

Every test runs under both ways of starting it — plain ``hypercorn
--worker-class trio server.app:app`` (whose master forks one worker) and
``python -m server.cli serve`` (``sluice serve``: one worker in-process) —
and the drain tests also under ``hypercorn -w 0`` and ``sluice serve
--workers 2``. The app carries its own shutdown and stall bounds
(`server.serving.worker`, `server.serving.tcp_server`), so each launcher
must behave the same:

- **drain**: SIGTERM turns ``/readyz`` 503 at once and new chat requests into
  a retryable 503; live streams get ``drain_seconds`` to finish; the rest end
  with an in-band ``server_shutting_down`` (no ``[DONE]``), their upstreams
  closed; the process exits 0.
- **dead client**: a client whose packets all vanish (its link goes down in
  a network namespace: no FIN, no RST) is dropped and its upstream closed
  within ``send_stall_timeout`` (plus slack).
- **slow client**: one that stops reading (a zero window) likewise.

The fake upstream runs in the test; Sluice reads a config file named by
``SLUICE_CONFIG``, with short timeouts.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import httpx
import orjson
import pytest
import trio

from server.testing.fake_upstream import FakeUpstream, Scenario
from tests.conftest import PROMPTLY, chat_body, running_sluice, settings_for
from tests.sse_client import Received, receive_stream

ROOT = Path(__file__).resolve().parents[2]
URL = "/v1/chat/completions"

# Launch command (before `--bind HOST:PORT`) and how many workers it serves with.
LAUNCHERS: dict[str, tuple[list[str], int]] = {
    "hypercorn": ([sys.executable, "-m", "hypercorn", "--worker-class", "trio",
                   "server.app:app"], 1),
    "sluice serve": ([sys.executable, "-m", "server.cli", "serve"], 1),
    "hypercorn -w 0": ([sys.executable, "-m", "hypercorn", "--worker-class", "trio", "-w", "0",
                        "server.app:app"], 1),
    "sluice serve --workers 2": ([sys.executable, "-m", "server.cli", "serve", "--workers",
                                  "2"], 2),
}
BOTH = ["hypercorn", "sluice serve"]

STREAMS = 20
# Process start-up (imports, a spawned worker) on a loaded machine.
START_BOUND = 30.0
# The stall bound under test, and how long after it the cleanup may take.
STALL = 1.0
SLACK = 3.0


@dataclass
class Served:
    """A Sluice process: where it listens, and everything it wrote to stderr."""

    base_url: str
    process: trio.Process
    log: bytearray = field(default_factory=bytearray)

    def counts(self, pattern: bytes) -> int:
        """The sum of the numbers the log's lines matching ``pattern`` (one group) report."""
        return sum(int(n) for n in re.findall(pattern, self.log))


def write_config(tmp_path: Path, upstream: FakeUpstream, **server: float) -> Path:
    path = tmp_path / "sluice.toml"
    lines = ["[server]", *(f"{key} = {value}" for key, value in server.items()),
             "[timeouts]", "connect = 2", "first_chunk = 10", "idle = 10",
             "[[backends]]", 'name = "fake"', 'kind = "openai"',
             f'base_url = "{upstream.base_url}"', 'models = ["*"]']
    path.write_text("\n".join(lines) + "\n")
    return path


@asynccontextmanager
async def launched(launcher: str, config: Path, bind: str = "127.0.0.1:0",
                   ) -> AsyncIterator[Served]:
    """Start Sluice with ``launcher``; yield once every worker listens; kill what is left."""
    command, workers = LAUNCHERS[launcher]
    process = await trio.lowlevel.open_process(
        [*command, "--bind", bind], cwd=ROOT, stdin=subprocess.DEVNULL,
        stderr=subprocess.PIPE, start_new_session=True,  # its own group: cleanup reaches all
        env={**os.environ, "SLUICE_CONFIG": str(config), "PYTHONUNBUFFERED": "1"},
    )
    assert process.stderr is not None
    stderr = process.stderr
    served = Served("", process)
    listening = trio.Event()

    async def read_log() -> None:
        while chunk := await stderr.receive_some():
            served.log += chunk
            found = re.findall(rb"Running on (http://\S+)", served.log)
            if len(found) >= workers and not listening.is_set():
                served.base_url = found[0].decode()
                listening.set()
        listening.set()  # ended before listening: the test's assertions will say why

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(read_log)
            with trio.fail_after(START_BOUND):
                await listening.wait()
            assert served.base_url, served.log.decode()
            yield served
            nursery.cancel_scope.cancel("the test is over")
    finally:
        with trio.move_on_after(5, shield=True):
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):  # already gone
                    os.killpg(process.pid, signal.SIGKILL)
            await process.wait()


async def start_streams(base_url: str, upstream: FakeUpstream, results: list[Received],
                        nursery: trio.Nursery, client: httpx.AsyncClient) -> None:
    """`STREAMS` streams, each collected into ``results``; return once all reached upstream."""
    async def one() -> None:
        async with client.stream("POST", base_url + URL, json=chat_body()) as response:
            results.append(await receive_stream(response))

    for _ in range(STREAMS):
        nursery.start_soon(one)
    with trio.fail_after(PROMPTLY * 5):
        await upstream.wait_for_request(STREAMS)


async def assert_draining(base_url: str, upstream: FakeUpstream) -> None:
    """``/readyz`` says 503 at once; a new request gets a retryable 503 and never goes upstream."""
    async with httpx.AsyncClient(timeout=PROMPTLY) as client:
        with trio.fail_after(PROMPTLY):
            # Another process's readiness: no event to wait on.
            while (await client.get(base_url + "/readyz")).status_code != 503:  # noqa: ASYNC110
                await trio.sleep(0.02)
        requests_before = len(upstream.requests)
        refused = await client.post(base_url + URL, json=chat_body())
    assert refused.status_code == 503
    assert refused.json()["error"]["code"] == "server_shutting_down"
    assert refused.headers["retry-after"] == "1"
    assert len(upstream.requests) == requests_before


def streaming_client() -> httpx.AsyncClient:
    return httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=STREAMS * 2))


# ------------------------------------------------------------------ drain

@pytest.mark.slow
@pytest.mark.parametrize("launcher", list(LAUNCHERS))
async def test_sigterm_lets_live_streams_finish_then_exits(
    launcher: str, upstream: FakeUpstream, tmp_path: Path
) -> None:
    drain = 20.0  # far longer than the streams: they must finish, and the exit not wait
    upstream.scenario = Scenario(tokens=15, tps=10)  # 1.5 s each
    config = write_config(tmp_path, upstream, drain_seconds=drain)
    results: list[Received] = []
    async with launched(launcher, config) as sluice, streaming_client() as client:
        assert sluice.log.count(b"Running on") == LAUNCHERS[launcher][1]  # once per worker
        async with trio.open_nursery() as nursery:
            await start_streams(sluice.base_url, upstream, results, nursery, client)
            sluice.process.send_signal(signal.SIGTERM)
            await assert_draining(sluice.base_url, upstream)
        with trio.fail_after(drain - 5):  # it stops when the streams are done, not at `drain`
            assert await sluice.process.wait() == 0
    assert len(results) == STREAMS
    for received in results:
        assert received.status == 200
        assert received.done and not received.errors
        assert received.content == "".join(f"t{i} " for i in range(15))
    assert sluice.counts(rb"draining (\d+) live stream") == STREAMS
    assert sluice.counts(rb"(\d+) stream\(s\) finished") == STREAMS
    assert sluice.counts(rb"(\d+) told to retry") == 0


@pytest.mark.slow
@pytest.mark.parametrize("launcher", list(LAUNCHERS))
async def test_streams_outlasting_the_drain_end_in_band_and_their_upstreams_close(
    launcher: str, upstream: FakeUpstream, tmp_path: Path
) -> None:
    drain = 1.0
    upstream.scenario = Scenario(tokens=10_000, tps=10)  # runs far longer than the drain
    config = write_config(tmp_path, upstream, drain_seconds=drain)
    results: list[Received] = []
    async with launched(launcher, config) as sluice, streaming_client() as client:
        async with trio.open_nursery() as nursery:
            await start_streams(sluice.base_url, upstream, results, nursery, client)
            sluice.process.send_signal(signal.SIGTERM)
            signalled_at = trio.current_time()
            await assert_draining(sluice.base_url, upstream)
            with trio.fail_after(drain + PROMPTLY * 5):
                await upstream.wait_all_closed()
        assert trio.current_time() - signalled_at >= drain * 0.9  # they had the drain time
        with trio.fail_after(PROMPTLY * 5):
            assert await sluice.process.wait() == 0
    assert len(results) == STREAMS
    for received in results:
        assert received.status == 200 and received.content  # they were live...
        assert not received.done  # ...and never look complete:
        assert [error["code"] for error in received.errors] == ["server_shutting_down"]
    assert sluice.counts(rb"(\d+) told to retry") == STREAMS


async def test_a_stream_hypercorn_cancels_still_ends_with_an_in_band_error(
    upstream: FakeUpstream, client: httpx.AsyncClient
) -> None:
    """Served without a drain (``hypercorn.trio.serve``), shutdown cancels what runs at the end
    of hypercorn's graceful timeout: a live stream still says why, and one that has sent
    nothing yet gets a real 503."""
    upstream.scenario = Scenario(tokens=10_000, tps=10)
    results: dict[str, Received] = {}
    started = trio.Event()

    async def live(base_url: str) -> None:
        async with client.stream("POST", base_url + URL, json=chat_body()) as response:
            started.set()
            results["live"] = await receive_stream(response)

    async def waiting(base_url: str) -> None:
        body = chat_body(stream=False)  # buffered: nothing is sent before the end
        async with client.stream("POST", base_url + URL, json=body) as response:
            results["waiting"] = await receive_stream(response)

    # The clients' nursery outlives the server on purpose: they read what shutdown sends.
    async with trio.open_nursery() as nursery:  # noqa: SIM117
        async with running_sluice(settings_for(upstream.base_url)) as sluice:
            base_url = sluice.base_url
            nursery.start_soon(live, base_url)
            nursery.start_soon(waiting, base_url)
            with trio.fail_after(PROMPTLY):
                await started.wait()
                await upstream.wait_for_request(2)
        # Leaving `running_sluice` stopped hypercorn: it cancelled both after its grace.
    assert not results["live"].done
    assert [e["code"] for e in results["live"].errors] == ["server_shutting_down"]
    assert results["waiting"].status == 503
    assert orjson.loads(results["waiting"].raw)["error"]["code"] == "server_shutting_down"
    with trio.fail_after(PROMPTLY):
        await upstream.wait_all_closed()


# ------------------------------------------------------------------ start-up


@pytest.mark.parametrize("launcher", [*BOTH, "hypercorn -w 0"])
async def test_a_bad_config_stops_every_launcher_with_a_non_zero_exit(
    launcher: str, tmp_path: Path
) -> None:
    config = tmp_path / "sluice.toml"
    config.write_text('[timeouts]\nidel = 5\n[[backends]]\nname = "s"\nkind = "simulated"\n'
                      'models = ["m"]\n')
    command, _ = LAUNCHERS[launcher]
    with trio.fail_after(START_BOUND):
        done = await trio.run_process(
            [*command, "--bind", "127.0.0.1:0"], cwd=ROOT, check=False, capture_stdout=True,
            capture_stderr=True, start_new_session=True,
            env={**os.environ, "SLUICE_CONFIG": str(config)})
    assert done.returncode != 0
    assert b"sluice: configuration error: timeouts.idel: unknown setting" in done.stderr
    assert b"Traceback" not in done.stderr


# ------------------------------------------------------------------ slow clients


@pytest.mark.slow
@pytest.mark.parametrize("launcher", BOTH)
async def test_a_client_that_stops_reading_is_dropped_and_its_upstream_closed(
    launcher: str, upstream: FakeUpstream, tmp_path: Path
) -> None:
    upstream.scenario = Scenario(tokens=1_000_000)  # as fast as it goes: fills every buffer
    config = write_config(tmp_path, upstream, send_stall_timeout=STALL)
    async with launched(launcher, config) as sluice:
        host, port = sluice.base_url.removeprefix("http://").rsplit(":", 1)
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
            assert trio.current_time() - stopped_at >= STALL * 0.5  # the bound, not sooner
        await assert_cleaned_up(sluice.base_url)


async def assert_cleaned_up(base_url: str) -> None:
    """The process counted the client as gone and holds no stream (bounded: cleanup ends
    just after the upstream closes)."""
    expected = ("sluice_client_disconnects_total 1.0", "sluice_active_streams 0.0")
    async with httpx.AsyncClient(timeout=PROMPTLY) as client:
        with trio.fail_after(PROMPTLY):
            while True:
                metrics = (await client.get(base_url + "/metrics")).text
                if all(line in metrics for line in expected):
                    return
                await trio.sleep(0.05)


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


@pytest.mark.slow
@pytest.mark.parametrize("launcher", BOTH)
async def test_a_client_that_vanishes_without_fin_or_rst_is_dropped(
    launcher: str, upstream: FakeUpstream, tmp_path: Path
) -> None:
    """Pull the cable: every packet to the client is dropped; no FIN, no RST ever comes."""
    if not _can_make_hosts():
        pytest.skip("needs root and iproute2 to make a client host in a network namespace")
    await _remove_client_host()  # a leftover from an interrupted run
    upstream.scenario = Scenario(tokens=10_000, tps=20)  # a steady trickle to deliver
    config = write_config(tmp_path, upstream, send_stall_timeout=STALL)
    try:
        await _make_client_host()
        async with launched(launcher, config, bind=f"{HOST_ADDR}:0") as sluice, \
                trio.open_nursery() as nursery:
            host, port = sluice.base_url.removeprefix("http://").rsplit(":", 1)
            client = await nursery.start(partial(
                trio.run_process,
                ["ip", "netns", "exec", NETNS, sys.executable, "-c", CLIENT, host, port,
                 orjson.dumps(chat_body()).decode()],
                stdout=subprocess.PIPE, check=False))
            assert client.stdout is not None
            with trio.fail_after(PROMPTLY * 2):
                assert (await client.stdout.receive_some()).startswith(b"streaming")
                await upstream.wait_for_request(1)
            # The client's link goes down: nothing it could send (FIN, RST) gets out,
            # and nothing sent to it is ever acknowledged.
            await _sh("ip", "netns", "exec", NETNS, "ip", "link", "set", CLIENT_SIDE, "down")
            pulled_at = trio.current_time()
            with trio.fail_after(STALL + SLACK):
                await upstream.wait_all_closed()
            assert trio.current_time() - pulled_at >= STALL * 0.5
            await assert_cleaned_up(sluice.base_url)
            client.kill()
    finally:
        with trio.move_on_after(5, shield=True):
            await _remove_client_host()
