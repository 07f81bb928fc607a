"""``python -m tests.bench.steps``: how many trio task steps one stream costs, and where.

    nox -s steps                   # 3-chunk streams: 10 measured after 20 warm-ups
    nox -s steps -- --timeline     # and the last one's steps in time order, with their CPU

Each task step is a trip through trio's scheduler (~5 µs of CPU on the
benchmark machine before any work is done). Under load, every step of
opening a stream also waits for a whole pass of the run loop, so the count
is what a stream's time to first byte is made of. This runs Sluice, the fake
upstream and one keep-alive client in a single trio run, counts the steps
of every task during the measured requests (a `trio.abc.Instrument`), and
prints them by the place each step ended (the innermost frames outside
trio), so a reader can see which ``await`` cost a step. The fake upstream's
and the client's own steps are included and named as such.
"""

from __future__ import annotations

import collections
import sys
import time
from types import CoroutineType
from typing import Any

import orjson
import trio

from server.testing.fake_upstream import FakeUpstream, Scenario
from tests.conftest import chat_body, running_sluice, settings_for

WARM_UP = 20
MEASURED = 10
_SKIP = ("/trio/", "contextlib", "/outcome/")


def _where(task: trio.lowlevel.Task) -> str:
    """The two innermost frames of the task's await chain that are not trio's own."""
    frames: list[str] = []
    coro: Any = task.coro
    while coro is not None:
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "ag_frame", None)
        if frame is not None and not any(part in frame.f_code.co_filename for part in _SKIP):
            name = frame.f_code.co_filename.rsplit("/", 1)[-1]
            frames.append(f"{name}:{frame.f_lineno} {frame.f_code.co_name}")
        nxt = getattr(coro, "cr_await", None) or getattr(coro, "ag_await", None)
        coro = nxt if isinstance(nxt, CoroutineType) or hasattr(nxt, "ag_frame") else None
    return " < ".join(reversed(frames[-2:])) or "(task start or end)"


class StepCounter(trio.abc.Instrument):
    def __init__(self) -> None:
        self.counting = False
        self.steps: collections.Counter[str] = collections.Counter()
        self.io_waits = 0
        self.timeline: list[tuple[float, float, str]] = []  # (start, CPU, step), last request
        self._request_started = 0.0
        self._step_started = 0.0

    def new_request(self) -> None:
        self.timeline.clear()
        self._request_started = time.perf_counter()

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        if self.counting:
            self._step_started = time.perf_counter()

    def after_task_step(self, task: trio.lowlevel.Task) -> None:
        if self.counting:
            step = f"{task.name.rsplit('.', 1)[-1]:28} {_where(task)}"
            self.steps[step] += 1
            self.timeline.append((self._step_started - self._request_started,
                                  time.perf_counter() - self._step_started, step))

    def before_io_wait(self, timeout: float) -> None:
        if self.counting:
            self.io_waits += 1
            self.timeline.append((time.perf_counter() - self._request_started, 0.0,
                                  "(run loop: poll for I/O)"))


async def _one(stream: trio.SocketStream, request: bytes) -> float:
    """One request; seconds from sending it to its first response byte."""
    sent = time.perf_counter()
    await stream.send_all(request)
    received = b""
    first = 0.0
    while not received.endswith(b"0\r\n\r\n"):
        data = await stream.receive_some()
        assert data, received
        if not received:
            first = time.perf_counter() - sent
        received += data
    return first


async def main(timeline: bool) -> None:
    counter = StepCounter()
    trio.lowlevel.add_instrument(counter)
    upstream = FakeUpstream(Scenario(tokens=3, tps=0))
    body = orjson.dumps(chat_body())
    request = (b"POST /v1/chat/completions HTTP/1.1\r\nhost: sluice\r\n"
               b"content-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
               % (len(body), body))
    async with trio.open_nursery() as nursery:
        await nursery.start(upstream.serve, 0)
        async with running_sluice(settings_for(upstream.base_url)) as sluice:
            host, port = sluice.base_url.removeprefix("http://").split(":")
            stream = await trio.open_tcp_stream(host, int(port))
            for _ in range(WARM_UP):
                await _one(stream, request)
            counter.counting = True
            first_bytes = []
            for _ in range(MEASURED):
                counter.new_request()
                first_bytes.append(await _one(stream, request))
            counter.counting = False
            await stream.aclose()
        nursery.cancel_scope.cancel()
    total = sum(counter.steps.values()) / MEASURED
    print(f"per stream: {total:.1f} task steps, {counter.io_waits / MEASURED:.1f} run-loop "
          f"passes that waited for I/O (client, Sluice and fake upstream together)")
    for where, count in counter.steps.most_common():
        print(f"  {count / MEASURED:5.1f}  {where}")
    if timeline:
        print(f"\nthe last request, step by step (its first byte came after "
              f"{first_bytes[-1] * 1e6:.0f} us; steps of the previous request's "
              f"teardown may come first):")
        for started, cpu, step in counter.timeline:
            print(f"  {started * 1e6:7.0f} us  {cpu * 1e6:4.0f} us CPU  {step}")


if __name__ == "__main__":
    trio.run(main, "--timeline" in sys.argv[1:])
