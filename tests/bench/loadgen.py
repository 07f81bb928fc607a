"""The load generator: many keep-alive HTTP/1.1 streams from one process, built for speed.

Run as its own process (the orchestrator pins it to the load core)::

    python -m tests.bench.loadgen '{"port": 9000, "streams": 100, "tokens": 100, ...}'

It prints one JSON object (`LoadResult`) on stdout. Each stream is one
connection that sends ``POST /v1/chat/completions`` (``stream: true``,
``max_tokens`` = `LoadSpec.tokens`), reads the answer with
`wire.ResponseReader`, and sends the next request on the same connection
(a closed loop) until the run's deadline or its request budget. Stream ``i``
starts at ``i * ramp / streams``; chunks and per-chunk latencies count in
the *window* ``[ramp + warm, ramp + warm + duration)``; TTFB is taken for
every request (one still unanswered at the end counts with its waiting
time — censored — and as a ``no_first_byte`` error).

Three drivers share one per-stream state machine (`_Flow`):

- ``epoll`` (default): one ``select.epoll`` loop over non-blocking sockets,
  no futures, no tasks — the cheapest per read;
- ``asyncio``: protocol callbacks on the default (selector) loop;
- ``trio``: one task per connection on raw ``SocketStream``.

Measured on the 2-core machine (1,000 streams at 50 tok/s straight from the
bench's pacer, 50k chunks/s), the load process spent 9.3 µs (epoll), 12.6 µs
(asyncio) and 11.6 µs (trio) of CPU per chunk, and the chunk latency p99 it
saw was 26, 86 and 172 ms (the load core was 95–100% busy). ``python -m
tests.bench.run --loadgen NAME`` switches; every result carries the load
process's CPU and the load core's busy share, so a reader can check that the
tools were not the bottleneck.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import heapq
import json
import os
import resource
import select
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import Any

import trio

from tests.bench import procfs
from tests.bench.wire import ResponseReader, State, Tally, chat_request

RECEIVE_BYTES = 64 * 1024
# A request sent less than this long before the deadline may rightly be unanswered.
UNANSWERED_GRACE = 1.0
RETRY_DELAY = 0.1
# After a 503 refusal: the Retry-After Sluice sends (1 s), which the openai SDKs honour. A
# client retrying 10x sooner makes refusing dearer than serving (tests/bench/README.md).
REFUSED_RETRY_DELAY = 1.0
DRIVERS = ("epoll", "asyncio", "trio")


@dataclass(frozen=True, slots=True)
class LoadSpec:
    """One run of the load generator (times in seconds)."""

    port: int
    host: str = "127.0.0.1"
    streams: int = 1
    tokens: int = 100
    ramp: float = 0.0
    warm: float = 0.0
    duration: float = 5.0
    requests_per_stream: int | None = None
    """Stop each stream after this many requests (None: loop until the deadline)."""
    latency: bool = True
    latency_every: int = 1
    """Parse one ``sent_at`` in this many content chunks (raise it for thousands of streams)."""
    driver: str = "epoll"
    warmup_requests: int = 0
    warmup_concurrency: int = 10
    monitor: dict[str, int] = field(default_factory=dict)
    """PIDs whose CPU seconds (over the window) and RSS (sampled) are reported."""
    rss_every: float = 0.5
    usr1: tuple[int, ...] = ()
    """PIDs sent SIGUSR1 at the window's start and end (the gc-stats variant dumps on it)."""
    api_key: str = ""
    """Sent as ``Authorization: Bearer`` (the sluice-keys target)."""
    refused_retry_delay: float = REFUSED_RETRY_DELAY
    """After a 503 (a refusal), wait this long before the stream's next request, on the
    same connection when the server keeps it: the Retry-After a polite client honours
    (epoll driver; the others reconnect after 0.1 s)."""

    @classmethod
    def from_json(cls, text: str) -> LoadSpec:
        raw = json.loads(text)
        raw["usr1"] = tuple(raw.get("usr1", ()))
        return cls(**raw)

    def to_json(self) -> str:
        return json.dumps(asdict(self))


@dataclass(slots=True)
class LoadResult:
    driver: str
    streams: int
    window_s: float
    requests_started: int
    responses_ok: int
    responses_window: int
    errors: dict[str, int]
    chunks_total: int
    chunks_window: int
    chunks_per_s: float
    ttfb_ms: dict[str, float]
    """Time to the first byte of requests not refused."""
    ttfb_censored: int
    refused: int
    """Requests answered 503 (refused: overload, draining), from the start of the run."""
    admitted: int
    """Requests answered with any other status, from the start of the run."""
    refusal_ms: dict[str, float]
    """Time to the first byte of the refused requests."""
    latency_ms: dict[str, float]
    live_max: int
    cut_at_end: int
    load_cpu_s: float
    load_cpu_frac: float
    monitored: dict[str, dict[str, float]]
    cores: dict[str, dict[str, float]]
    """Per core over the window: busy fraction (incl. softirq) and steal fraction."""
    elapsed_s: float


def percentiles(values: list[float], scale: float = 1000.0) -> dict[str, float]:
    """n, p50/p90/p99/max of `values`, times `scale` (seconds → ms by default)."""
    if not values:
        return {"n": 0}
    ordered = sorted(values)
    last = len(ordered) - 1

    def at(q: float) -> float:
        return round(ordered[min(last, int(q * len(ordered)))] * scale, 4)

    return {"n": len(ordered), "p50": at(0.50), "p90": at(0.90), "p99": at(0.99),
            "max": round(ordered[last] * scale, 4)}


# ------------------------------------------------------------ one run's state


@dataclass(slots=True)
class _Phase:
    """One run (the measured one, or the warm-up) shared by all its streams."""

    host: str
    port: int
    streams: int
    per_stream: int | None
    ramp: float
    deadline_wall: float
    tokens: int
    latency: bool
    tally: Tally
    api_key: str = ""
    refused_retry_delay: float = REFUSED_RETRY_DELAY
    request: bytes = b""
    stopping: bool = False
    started: int = 0
    ok: int = 0
    ok_window: int = 0
    live: int = 0
    live_max: int = 0
    cut_at_end: int = 0
    censored: int = 0
    finished: int = 0
    ttfb: list[float] = field(default_factory=list)
    refusals: list[float] = field(default_factory=list)
    admitted: int = 0

    def __post_init__(self) -> None:
        self.request = chat_request(self.host, self.port, self.tokens, self.api_key)

    @property
    def all_finished(self) -> bool:
        return self.finished >= self.streams

    def seconds_left(self) -> float:
        return self.deadline_wall - time.time()


class _Flow:
    """One stream's requests and responses, whatever the driver; drivers do the I/O."""

    __slots__ = ("in_response", "phase", "reader", "refused", "remaining", "sent_at",
                 "waiting_first")

    def __init__(self, phase: _Phase, remaining: int | None) -> None:
        self.phase = phase
        self.remaining = remaining
        self.reader = ResponseReader(phase.tally, expect_chunks=phase.tokens,
                                     latency=phase.latency)
        self.sent_at = 0.0
        self.waiting_first = False
        self.in_response = False
        self.refused = False

    @property
    def wants_more(self) -> bool:
        return self.remaining != 0 and not self.phase.stopping

    def next_request(self) -> bytes | None:
        """The next request to write, or None when this stream is done."""
        phase = self.phase
        if phase.stopping or self.remaining == 0:
            return None
        if self.remaining is not None:
            self.remaining -= 1
        self.reader.reset()
        self.sent_at = time.time()
        self.waiting_first = True
        self.in_response = True
        phase.started += 1
        return phase.request

    def on_data(self, data: bytes, now: float) -> bool | None:
        """Feed a read; None = keep reading, True = send the next request, False = reconnect."""
        phase = self.phase
        first = self.waiting_first
        if first:
            self.waiting_first = False
            phase.live += 1
            if phase.live > phase.live_max:
                phase.live_max = phase.live
        state = self.reader.feed(data, now)
        if first:  # the status line is in the first read (loopback, one small head)
            self.refused = self.reader.status == 503
            if self.refused:
                phase.refusals.append(now - self.sent_at)
            else:
                phase.admitted += 1
                phase.ttfb.append(now - self.sent_at)
        if state is State.MORE:
            return None
        phase.live -= 1
        self.in_response = False
        if self.reader.error is not None:
            phase.tally.errors[self.reader.error] += 1
        else:
            phase.ok += 1
            if phase.tally.window_start <= now < phase.tally.window_end:
                phase.ok_window += 1
        return state is State.DONE and not self.reader.close_after

    def on_lost(self, reset: bool) -> None:
        """The connection ended under us (not at the deadline)."""
        if self.in_response and not self.phase.stopping:
            self.in_response = False
            if not self.waiting_first:
                self.phase.live -= 1
            self.phase.tally.errors["connection_reset" if reset else "connection_closed"] += 1

    def on_stop(self) -> None:
        """The deadline: a stream in flight is cut (not an error); an unanswered one counts."""
        phase = self.phase
        if not self.in_response:
            return
        self.in_response = False
        if self.waiting_first:
            waited = phase.deadline_wall - self.sent_at
            if waited > UNANSWERED_GRACE:
                phase.ttfb.append(waited)
                phase.censored += 1
                phase.tally.errors["no_first_byte"] += 1
        else:
            phase.live -= 1
            phase.cut_at_end += 1


Timers = list[tuple[float, Callable[[], None]]]  # (wall time, callback)


# --------------------------------------------------------------- epoll driver


class _Sock:
    __slots__ = ("closed", "connecting", "flow", "sock")

    def __init__(self, sock: socket.socket, flow: _Flow) -> None:
        self.sock = sock
        self.flow = flow
        self.connecting = True
        self.closed = False


def drive_epoll(phase: _Phase, timers: Timers, every: float, sample: Callable[[], None]) -> None:
    """Run `phase` on one epoll loop; `timers` fire at their wall times, `sample` periodically."""
    ep = select.epoll()
    socks: dict[int, _Sock] = {}
    heap: list[tuple[float, int, Callable[[], None]]] = []
    seq = 0

    def at(when: float, action: Callable[[], None]) -> None:
        nonlocal seq
        seq += 1
        heapq.heappush(heap, (when, seq, action))

    def open_stream(remaining: int | None) -> None:
        if phase.stopping:
            return
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        entry = _Sock(sock, _Flow(phase, remaining))
        code = sock.connect_ex((phase.host, phase.port))
        if code not in (0, errno.EINPROGRESS):
            sock.close()
            connect_failed(remaining)
            return
        socks[sock.fileno()] = entry
        ep.register(sock.fileno(), select.EPOLLOUT)

    def connect_failed(remaining: int | None) -> None:
        phase.tally.errors["connect_failed"] += 1
        at(time.time() + RETRY_DELAY, lambda: open_stream(remaining))

    def send_next(entry: _Sock) -> None:
        request = entry.flow.next_request()
        if request is None:
            close(entry, reconnect=False)
            return
        try:
            sent = entry.sock.send(request)
        except OSError:
            sent = -1
        if sent != len(request):
            entry.flow.on_lost(reset=True)
            close(entry, reconnect=True)

    def retry(entry: _Sock) -> None:
        if not entry.closed:
            send_next(entry)

    def close(entry: _Sock, *, reconnect: bool) -> None:
        if entry.closed:
            return
        entry.closed = True
        fd = entry.sock.fileno()
        socks.pop(fd, None)
        with contextlib.suppress(OSError):
            ep.unregister(fd)
        entry.sock.close()
        flow = entry.flow
        if reconnect and flow.wants_more:
            delay = phase.refused_retry_delay if flow.refused else RETRY_DELAY
            at(time.time() + delay, lambda: open_stream(flow.remaining))
        else:
            phase.finished += 1

    def periodic() -> None:
        sample()
        at(time.time() + every, periodic)

    start = time.time()
    for i in range(phase.streams):
        at(start + i * phase.ramp / phase.streams, lambda: open_stream(phase.per_stream))
    for when, action in timers:
        at(when, action)
    if every > 0:
        at(start, periodic)
    try:
        while not phase.all_finished:
            now = time.time()
            if now >= phase.deadline_wall:
                break
            while heap and heap[0][0] <= now:
                heapq.heappop(heap)[2]()
            timeout = min(phase.deadline_wall, heap[0][0] if heap else phase.deadline_wall) - now
            for fd, _events in ep.poll(max(timeout, 0.0), 4096):
                entry = socks.get(fd)
                if entry is None:
                    continue
                if entry.connecting:
                    entry.connecting = False
                    if entry.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                        remaining = entry.flow.remaining
                        entry.closed = True
                        socks.pop(fd, None)
                        ep.unregister(fd)
                        entry.sock.close()
                        connect_failed(remaining)
                        continue
                    ep.modify(fd, select.EPOLLIN)
                    send_next(entry)
                    continue
                try:
                    data = entry.sock.recv(RECEIVE_BYTES)
                except BlockingIOError:
                    continue
                except OSError:
                    entry.flow.on_lost(reset=True)
                    close(entry, reconnect=True)
                    continue
                if not data:
                    entry.flow.on_lost(reset=False)
                    close(entry, reconnect=True)
                    continue
                verdict = entry.flow.on_data(data, time.time())
                if verdict is None:
                    continue
                if verdict:
                    send_next(entry)
                elif entry.flow.refused and not entry.flow.reader.close_after:
                    # A refusal read whole: retry on the same connection, as an HTTP
                    # client's pool would, after the Retry-After.
                    at(time.time() + phase.refused_retry_delay, partial(retry, entry))
                else:
                    close(entry, reconnect=True)
    finally:
        phase.stopping = True
        for entry in list(socks.values()):
            entry.flow.on_stop()
            close(entry, reconnect=False)
        ep.close()


# ------------------------------------------------------------- asyncio driver


class _Protocol(asyncio.Protocol):
    def __init__(self, flow: _Flow, ended: Callable[[_Protocol, bool], None]) -> None:
        self.flow = flow
        self.ended = ended
        self.transport: asyncio.Transport | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.send_next()

    def send_next(self) -> None:
        request = self.flow.next_request()
        if request is None:
            self.close(reconnect=False)
        elif self.transport is not None:
            self.transport.write(request)

    def data_received(self, data: bytes) -> None:
        verdict = self.flow.on_data(data, time.time())
        if verdict is None:
            return
        if verdict:
            self.send_next()
        else:
            self.close(reconnect=True)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed:
            self.flow.on_lost(reset=exc is not None)
            self.close(reconnect=True)

    def stop(self) -> None:
        self.flow.on_stop()
        self.close(reconnect=False)

    def close(self, *, reconnect: bool) -> None:
        if self.closed:
            return
        self.closed = True
        if self.transport is not None:
            self.transport.close()
        self.ended(self, reconnect)


def drive_asyncio(phase: _Phase, timers: Timers, every: float,
                  sample: Callable[[], None]) -> None:
    asyncio.run(_asyncio_phase(phase, timers, every, sample))


async def _asyncio_phase(phase: _Phase, timers: Timers, every: float,
                         sample: Callable[[], None]) -> None:
    loop = asyncio.get_running_loop()
    live: set[_Protocol] = set()
    tasks: set[asyncio.Task[None]] = set()
    handles: list[asyncio.TimerHandle] = []
    all_done = asyncio.Event()

    def later(delay: float, remaining: int | None) -> None:
        def go() -> None:
            task = loop.create_task(open_stream(remaining))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

        handles.append(loop.call_later(delay, go))

    def ended(protocol: _Protocol, reconnect: bool) -> None:
        live.discard(protocol)
        if reconnect and protocol.flow.wants_more:
            later(RETRY_DELAY, protocol.flow.remaining)
            return
        phase.finished += 1
        if phase.all_finished:
            all_done.set()

    async def open_stream(remaining: int | None) -> None:
        if phase.stopping:
            return
        protocol = _Protocol(_Flow(phase, remaining), ended)
        live.add(protocol)
        try:
            await loop.create_connection(lambda: protocol, phase.host, phase.port)
        except OSError:
            live.discard(protocol)
            phase.tally.errors["connect_failed"] += 1
            if not phase.stopping:
                later(RETRY_DELAY, remaining)

    async def periodic() -> None:
        while True:
            sample()
            await asyncio.sleep(every)

    for i in range(phase.streams):
        later(i * phase.ramp / phase.streams, phase.per_stream)
    for when, action in timers:
        handles.append(loop.call_later(max(0.0, when - time.time()), action))
    sampler = loop.create_task(periodic()) if every > 0 else None
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(all_done.wait(), timeout=max(0.0, phase.seconds_left()))
    phase.stopping = True
    for handle in handles:
        handle.cancel()
    for protocol in list(live):
        protocol.stop()
    for task in list(tasks):
        task.cancel()
    if sampler is not None:
        sampler.cancel()
    await asyncio.sleep(0)


# ---------------------------------------------------------------- trio driver


def drive_trio(phase: _Phase, timers: Timers, every: float, sample: Callable[[], None]) -> None:
    trio.run(_trio_phase, phase, timers, every, sample)


async def _trio_phase(phase: _Phase, timers: Timers, every: float,
                      sample: Callable[[], None]) -> None:
    async def fire(when: float, action: Callable[[], None]) -> None:
        await trio.sleep(max(0.0, when - time.time()))
        action()

    async def periodic() -> None:
        while True:
            sample()
            await trio.sleep(every)

    async with trio.open_nursery() as helpers:
        for when, action in timers:
            helpers.start_soon(fire, when, action)
        if every > 0:
            helpers.start_soon(periodic)
        with trio.move_on_after(max(0.0, phase.seconds_left())):
            async with trio.open_nursery() as nursery:
                for i in range(phase.streams):
                    nursery.start_soon(_trio_stream, phase, i * phase.ramp / phase.streams)
        phase.stopping = True
        helpers.cancel_scope.cancel("run over")


async def _trio_stream(phase: _Phase, delay: float) -> None:
    await trio.sleep(delay)
    flow = _Flow(phase, phase.per_stream)
    try:
        while flow.wants_more:
            try:
                stream = await trio.open_tcp_stream(phase.host, phase.port)
            except OSError:
                phase.tally.errors["connect_failed"] += 1
                await trio.sleep(RETRY_DELAY)
                continue
            async with stream:
                await _trio_exchange(stream, flow)
            if flow.wants_more:
                await trio.sleep(RETRY_DELAY)
    except trio.Cancelled:
        flow.on_stop()
        raise
    phase.finished += 1


async def _trio_exchange(stream: trio.SocketStream, flow: _Flow) -> None:
    """Requests on one connection until it must be closed."""
    while (request := flow.next_request()) is not None:
        try:
            await stream.send_all(request)
            while True:
                data = await stream.receive_some(RECEIVE_BYTES)
                if not data:
                    flow.on_lost(reset=False)
                    return
                verdict = flow.on_data(data, time.time())
                if verdict is not None:
                    break
        except trio.BrokenResourceError:
            flow.on_lost(reset=True)
            return
        if not verdict:
            return


# ----------------------------------------------------------------------- main


class _Monitor:
    """CPU snapshots of the monitored PIDs and of this process; sampled RSS."""

    def __init__(self, pids: dict[str, int], usr1: tuple[int, ...]) -> None:
        self.pids = pids
        self.usr1 = usr1
        self.rss_start = {name: procfs.rss_kb(pid) for name, pid in pids.items()}
        self.rss_max = dict(self.rss_start)
        self.rss_end: dict[str, int] = {}
        self.cpu_start: dict[str, float] = {}
        self.cpu_end: dict[str, float] = {}
        self.own_start = 0.0
        self.own_end = 0.0
        self.cores_start: dict[str, list[int]] = {}
        self.cores_end: dict[str, list[int]] = {}

    def sample(self) -> None:
        for name, pid in self.pids.items():
            rss = procfs.rss_kb(pid)
            if rss > self.rss_max[name]:
                self.rss_max[name] = rss

    def start(self) -> None:
        _signal_all(self.usr1)
        self.cpu_start = {name: procfs.cpu_seconds(pid) for name, pid in self.pids.items()}
        self.own_start = _own_cpu()
        self.cores_start = procfs.cpu_times()

    def end(self) -> None:
        if not self.cpu_start:
            self.start()  # the run ended before its window opened
        _signal_all(self.usr1)
        self.cpu_end = {name: procfs.cpu_seconds(pid) for name, pid in self.pids.items()}
        self.own_end = _own_cpu()
        self.cores_end = procfs.cpu_times()
        self.sample()
        self.rss_end = {name: procfs.rss_kb(pid) for name, pid in self.pids.items()}

    def report(self) -> dict[str, dict[str, float]]:
        return {
            name: {
                "cpu_s": round(self.cpu_end[name] - self.cpu_start[name], 3),
                "rss_start_kb": self.rss_start[name],
                "rss_max_kb": self.rss_max[name],
                "rss_end_kb": self.rss_end[name],
            }
            for name in self.pids
        }


def _own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _signal_all(pids: tuple[int, ...]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGUSR1)


_DRIVE: dict[str, Callable[[_Phase, Timers, float, Callable[[], None]], None]] = {
    "epoll": drive_epoll,
    "asyncio": drive_asyncio,
    "trio": drive_trio,
}


def run_spec(spec: LoadSpec) -> LoadResult:
    """Warm up (unmeasured), then run `spec` and summarise it."""
    drive = _DRIVE[spec.driver]
    if spec.warmup_requests:
        per = max(1, spec.warmup_requests // max(1, spec.warmup_concurrency))
        warm = _Phase(spec.host, spec.port, spec.warmup_concurrency, per, 0.0,
                      time.time() + 30, 1, False, Tally(), spec.api_key)
        drive(warm, [], 0.0, lambda: None)
        time.sleep(0.2)
    monitor = _Monitor(spec.monitor, spec.usr1)
    t0 = time.time()
    window_start = t0 + spec.ramp + spec.warm
    deadline = window_start + spec.duration
    budget = spec.requests_per_stream is not None
    # With a request budget the whole run is the window; it ends when the budget is spent.
    tally = Tally(window_start=t0 if budget else window_start, window_end=deadline,
                  sample_every=max(1, spec.latency_every))
    phase = _Phase(spec.host, spec.port, spec.streams, spec.requests_per_stream, spec.ramp,
                   deadline, spec.tokens, spec.latency, tally, spec.api_key,
                   spec.refused_retry_delay)
    timers: Timers = [(t0 if budget else window_start, monitor.start)]
    drive(phase, timers, spec.rss_every, monitor.sample)
    end = time.time()
    monitor.end()
    window = max((min(end, deadline) - (t0 if budget else window_start)), 1e-9)
    own = monitor.own_end - monitor.own_start
    return LoadResult(
        driver=spec.driver,
        streams=spec.streams,
        window_s=round(window, 3),
        requests_started=phase.started,
        responses_ok=phase.ok,
        responses_window=phase.ok_window,
        errors=dict(tally.errors),
        chunks_total=tally.chunks,
        chunks_window=tally.window_chunks,
        chunks_per_s=round(tally.window_chunks / window, 1),
        ttfb_ms=percentiles(phase.ttfb),
        ttfb_censored=phase.censored,
        refused=len(phase.refusals),
        admitted=phase.admitted,
        refusal_ms=percentiles(phase.refusals),
        latency_ms=percentiles(list(tally.latencies)),
        live_max=phase.live_max,
        cut_at_end=phase.cut_at_end,
        load_cpu_s=round(own, 3),
        load_cpu_frac=round(own / window, 3),
        monitored=monitor.report(),
        cores=procfs.core_usage(monitor.cores_start, monitor.cores_end),
        elapsed_s=round(end - t0, 3),
    )


def raise_fd_limit(want: int = 200_000) -> int:
    """Raise RLIMIT_NOFILE (root may raise the hard limit too); return the soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    for limits in ((max(soft, want), max(hard, want)), (hard, hard)):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, limits)
            break
        except (ValueError, OSError):
            continue
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m tests.bench.loadgen '<LoadSpec as JSON>'", file=sys.stderr)
        return 2
    raise_fd_limit()
    spec = LoadSpec.from_json(argv[0])
    if spec.driver not in _DRIVE:
        print(f"unknown driver {spec.driver!r}; choose from {', '.join(DRIVERS)}",
              file=sys.stderr)
        return 2
    out: dict[str, Any] = asdict(run_spec(spec))
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
