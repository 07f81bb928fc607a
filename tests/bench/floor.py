"""``python -m tests.bench.floor``: what relaying a chunk costs in Trio before any HTTP.

    python -m tests.bench.floor                       # 100 streams at 50 chunks/s, all shapes
    python -m tests.bench.floor --streams 1000 --rounds 3

The relay skeleton with nothing in it: no HTTP parsing, no SSE, no framework.
Each stream is two loopback TCP connections, "upstream" and "client". A driver
process (core 1) writes one 200-byte event to each upstream connection at the
paced rate and drains the client ones; the relay process (core 0) moves the
bytes across in one of these shapes:

- ``epoll``: no Trio: one epoll loop (``select.epoll``), ``read`` and ``write``,
  the shape of an event-driven C server, in Python;
- ``one-task``: one task per stream: wait until the upstream socket is
  readable, ``recv``, ``send`` to the client;
- ``two-tasks``: the design card's shape: a reader task and a writer task per
  stream joined by a bounded memory channel (``send_nowait`` / ``receive``),
  inside a per-stream nursery beside a watcher task that only waits;
- ``two-tasks-streams``: the same over `trio.SocketStream` (``receive_some`` /
  ``send_all``), the API most Trio code uses.

It reports the relay's CPU per relayed chunk (µs, the process's user+system
time over the window ÷ chunks), median over rounds. Compare it with a full
run's ``relay CPU per chunk`` for nginx and Sluice at the same load: the
difference between a shape and Sluice is HTTP, SSE, the gateway's logic and
the framework; the difference between shapes is the price of the shape.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import selectors
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

SHAPES = ("epoll", "one-task", "two-tasks", "two-tasks-streams")
EVENT = b"data: " + b'{"choices":[{"delta":{"content":"x"}}]}'.ljust(190, b" ") + b"\n\n"


def pairs(count: int) -> list[tuple[socket.socket, socket.socket]]:
    """`count` connected loopback TCP pairs (driver end, relay end)."""
    listener = socket.create_server(("127.0.0.1", 0), backlog=count)
    made = []
    for _ in range(count):
        driver = socket.create_connection(listener.getsockname())
        relay, _ = listener.accept()
        for sock in (driver, relay):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        made.append((driver, relay))
    listener.close()
    return made


# ----------------------------------------------------------------- the relay (child)


def relay_main(shape: str, fds: list[tuple[int, int]], seconds: float, warm: float,
               coalesce: float = 0.0) -> None:
    os.sched_setaffinity(0, {0})
    if shape == "epoll":
        epoll_relay(fds, seconds, warm)
        return
    import trio

    counted = [0]

    async def one_task(up: socket.socket, down: socket.socket) -> None:
        while True:
            await trio.lowlevel.wait_readable(up)
            data = up.recv(65536)
            if not data:
                return
            down.send(data)
            counted[0] += 1

    async def two_tasks(up: socket.socket, down: socket.socket) -> None:
        send, receive = trio.open_memory_channel[bytes](16)

        async def reader() -> None:
            async with send:
                while True:
                    await trio.lowlevel.wait_readable(up)
                    data = up.recv(65536)
                    if not data:
                        return
                    try:
                        send.send_nowait(data)
                    except trio.WouldBlock:
                        await send.send(data)

        async def writer() -> None:
            async with receive:
                async for data in receive:
                    down.send(data)
                    counted[0] += 1
            nursery.cancel_scope.cancel()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader)
            nursery.start_soon(writer)
            nursery.start_soon(trio.sleep_forever)  # the disconnect watcher's place

    async def two_tasks_streams(up_sock: socket.socket, down_sock: socket.socket) -> None:
        up = trio.SocketStream(trio.socket.from_stdlib_socket(up_sock))
        down = trio.SocketStream(trio.socket.from_stdlib_socket(down_sock))
        send, receive = trio.open_memory_channel[bytes](16)

        async def reader() -> None:
            async with send:
                while data := await up.receive_some(65536):
                    await send.send(data)

        async def writer() -> None:
            async with receive:
                async for data in receive:
                    await down.send_all(data)
                    counted[0] += 1
            nursery.cancel_scope.cancel()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader)
            nursery.start_soon(writer)
            nursery.start_soon(trio.sleep_forever)

    body = {"one-task": one_task, "two-tasks": two_tasks,
            "two-tasks-streams": two_tasks_streams}[shape]

    async def main() -> None:
        socks = []
        for up_fd, down_fd in fds:
            up = socket.socket(fileno=up_fd)
            down = socket.socket(fileno=down_fd)
            up.setblocking(False)
            down.setblocking(False)
            socks.append((up, down))
        async with trio.open_nursery() as nursery:
            for up, down in socks:
                nursery.start_soon(body, up, down)
            await trio.sleep(warm)
            cpu, chunks = time.process_time(), counted[0]
            await trio.sleep(seconds)
            cpu, chunks = time.process_time() - cpu, counted[0] - chunks
            print(json.dumps({"cpu_s": cpu, "chunks": chunks}), flush=True)
            nursery.cancel_scope.cancel()

    instruments = []
    if coalesce:
        class Coalesce(trio.abc.Instrument):
            def before_io_wait(self, timeout: float) -> None:
                if timeout >= coalesce:
                    time.sleep(coalesce)

        instruments.append(Coalesce())
    trio.run(main, instruments=instruments)


def epoll_relay(fds: list[tuple[int, int]], seconds: float, warm: float) -> None:
    """No Trio: one level-triggered epoll loop, as an event-driven C server is built."""
    import select

    poller = select.epoll()
    route = {}
    for up_fd, down_fd in fds:
        os.set_blocking(up_fd, False)
        poller.register(up_fd, select.EPOLLIN)
        route[up_fd] = down_fd
    chunks = 0
    start = time.monotonic()
    cpu = 0.0
    measuring = False
    while True:
        now = time.monotonic()
        if not measuring and now - start >= warm:
            measuring, cpu, chunks = True, time.process_time(), 0
        if now - start >= warm + seconds:
            break
        for fd, _ in poller.poll(0.05):
            data = os.read(fd, 65536)
            os.write(route[fd], data)
            chunks += 1
    print(json.dumps({"cpu_s": time.process_time() - cpu, "chunks": chunks}), flush=True)


# ----------------------------------------------------------------- the driver (parent)


def run_shape(shape: str, streams: int, rate: float, seconds: float, warm: float,
              coalesce: float = 0.0) -> dict[str, float]:
    upstream = pairs(streams)
    client = pairs(streams)
    fds = [(up[1].fileno(), down[1].fileno()) for up, down in zip(upstream, client, strict=True)]
    spec = json.dumps({"shape": shape, "fds": fds, "seconds": seconds, "warm": warm,
                       "coalesce": coalesce})
    child = subprocess.Popen(
        [sys.executable, "-m", "tests.bench.floor", "--child", spec],
        pass_fds=[fd for pair in fds for fd in pair], stdout=subprocess.PIPE, text=True,
        cwd=Path(__file__).resolve().parents[2])
    for up, down in zip(upstream, client, strict=True):
        up[1].close()
        down[1].close()
    os.sched_setaffinity(0, {1})
    readers = selectors.DefaultSelector()
    for driver_end, _ in client:
        driver_end.setblocking(False)
        readers.register(driver_end, selectors.EVENT_READ)
    period = 1.0 / rate
    start = time.monotonic()
    # Streams are spread evenly over one period, as independent clients would be.
    due = [start + period * index / streams for index in range(streams)]
    deadline = start + warm + seconds + 30  # the child ends the run; this only bounds it
    try:
        while child.poll() is None and time.monotonic() < deadline:
            now = time.monotonic()
            for index in range(streams):
                if due[index] <= now:
                    upstream[index][0].send(EVENT)
                    due[index] += period
            for key, _ in readers.select(timeout=0.001):
                with contextlib.suppress(BlockingIOError):
                    key.fileobj.recv(1 << 16)  # type: ignore[union-attr]
    except OSError:
        pass  # the child's window is over and it has closed its ends
    out, _ = child.communicate(timeout=30)
    for up, down in zip(upstream, client, strict=True):
        up[0].close()
        down[0].close()
    result: dict[str, float] = json.loads(out.strip().splitlines()[-1])
    result["us_per_chunk"] = 1e6 * result["cpu_s"] / max(1, result["chunks"])
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.floor")
    parser.add_argument("--streams", type=int, default=100)
    parser.add_argument("--rate", type=float, default=50.0, help="chunks per second per stream")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--shapes", default=",".join(SHAPES))
    parser.add_argument("--coalesce-ms", type=float, default=0.0,
                        help="Trio shapes: before the loop blocks for I/O, sleep this long")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        spec = json.loads(args.child)
        relay_main(spec["shape"], [tuple(pair) for pair in spec["fds"]],
                   spec["seconds"], spec["warm"], spec["coalesce"])
        return 0
    shapes = args.shapes.split(",")
    results: dict[str, list[float]] = {shape: [] for shape in shapes}
    for round_ in range(args.rounds):
        for shape in shapes:  # alternate, so drift in the machine's load hits every shape
            result = run_shape(shape, args.streams, args.rate, args.seconds, warm=1.0,
                               coalesce=args.coalesce_ms / 1000)
            results[shape].append(result["us_per_chunk"])
            print(f"round {round_ + 1} {shape:18} {result['chunks'] / args.seconds:8,.0f} "
                  f"chunks/s  {result['us_per_chunk']:6.1f} us/chunk", flush=True)
    print(f"\n{args.streams} streams at {args.rate:g} chunks/s, median of {args.rounds}:")
    for shape in shapes:
        print(f"  {shape:18} {statistics.median(results[shape]):6.1f} us per relayed chunk")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
