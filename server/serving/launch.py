"""hypercorn, configured for long-lived streams.

hypercorn's defaults suit short requests: ``graceful_timeout`` of 3 s would
cut every live stream at shutdown, and a listen backlog of 100 drops bursts
of new streams. `hypercorn_config` sets each on purpose; the ``sluice serve``
command and the tests both use it, so what is tested is what is served.
(Plain ``hypercorn --worker-class trio server.app:app`` works too, with
hypercorn's defaults: pass ``--graceful-timeout`` and ``--backlog`` there.)

**Slow and dead clients.** hypercorn writes a response with a *shielded*
``send_all`` (`server.serving.tcp_server` first tries one non-blocking write, and
sends what the kernel did not take that same shielded way): no cancel scope
of ours can interrupt a write to a client that stopped reading, and a
client that vanished without FIN/RST is invisible until TCP gives up (~15
minutes). Both are bounded in the kernel instead: the
listening sockets get ``TCP_USER_TIMEOUT`` — unacknowledged data, or data
that cannot be sent into a zero window, for longer than ``send_stall_timeout``
aborts the connection — and TCP keepalive probes for idle connections. The
write then fails, hypercorn reports ``http.disconnect`` and the stream's
disconnect watcher cancels it, closing the upstream. Keepalive comments mean
a silent stream still has bytes in flight, so a dead client is noticed within
``keepalive_interval + send_stall_timeout``. Accepted sockets inherit the
options from the listening socket (Linux).

**Shutdown.** `run` replaces ``hypercorn.run.run`` for ``sluice serve``:
with one worker it serves in-process (no forked master); with more it
starts them and tells them to stop on SIGINT/SIGTERM. Each worker's
shutdown trigger *drains* before hypercorn's own shutdown begins
(`server.serving.lifecycle`): ``/readyz`` turns 503 and new chat requests get a
retryable 503 while the worker still listens (so load balancers notice),
live streams get ``drain_seconds`` to finish, then each remaining stream
ends with a retryable in-band "server shutting down" and its upstream is
closed. Only then does the trigger return: hypercorn stops listening and
gives the stopped streams ``DRAIN_MARGIN`` seconds for their last writes.
(Under plain ``hypercorn`` there is no drain: ``--graceful-timeout`` is all.)
"""

from __future__ import annotations

import gc
import logging
import multiprocessing
import signal
import socket
from functools import partial
from multiprocessing.synchronize import Event as ProcessEvent
from typing import Any

import trio
from hypercorn.config import Config, Sockets
from hypercorn.trio.run import worker_serve
from hypercorn.utils import check_multiprocess_shutdown_event, wrap_app

APP_PATH = "server.app:app"


class StreamingConfig(Config):
    """hypercorn's Config whose listening sockets bound how long a send may stall."""

    send_stall_timeout: float = 60.0

    def create_sockets(self) -> Sockets:
        sockets = super().create_sockets()
        for sock in [*sockets.secure_sockets, *sockets.insecure_sockets]:
            bound_stalls(sock, self.send_stall_timeout)
        return sockets


def bound_stalls(sock: socket.socket, seconds: float) -> None:
    """Abort a TCP connection whose sent data stays unacknowledged for ``seconds``."""
    if sock.family not in (socket.AF_INET, socket.AF_INET6):
        return  # unix sockets: no TCP
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    if hasattr(socket, "TCP_USER_TIMEOUT"):  # Linux
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, int(seconds * 1000))
    if hasattr(socket, "TCP_KEEPIDLE"):
        idle = max(1, int(seconds / 2))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, idle)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, max(1, idle // 3))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 3)


def hypercorn_config(
    bind: str = "127.0.0.1:8000", workers: int = 1, *, send_stall_timeout: float = 60.0
) -> StreamingConfig:
    config = StreamingConfig()
    config.send_stall_timeout = send_stall_timeout
    config.bind = [bind]
    config.workers = workers
    config.worker_class = "trio"
    config.application_path = APP_PATH
    config.graceful_timeout = 30.0  # `run` drains first, then needs only DRAIN_MARGIN
    config.backlog = 2048
    config.keep_alive_timeout = 75.0  # longer than common load balancers' idle timeouts
    config.accesslog = None
    config.errorlog = "-"
    return config


# After the drain, how long hypercorn lets the stopped streams write their last event.
DRAIN_MARGIN = 5.0


def configure_logging(level: str) -> None:
    """One line per record on stderr; in a spawned worker too (it starts unconfigured)."""
    logging.basicConfig(level=level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")


def run(config: StreamingConfig, drain_seconds: float, log_level: str = "info") -> int:
    """Serve until SIGINT/SIGTERM, then drain; return the exit code."""
    config.graceful_timeout = DRAIN_MARGIN  # after the drain, which our trigger runs
    sockets = config.create_sockets()
    for sock in [*sockets.secure_sockets, *sockets.insecure_sockets]:
        sock.listen(config.backlog)
    if config.workers <= 1:
        serve_worker(config, sockets, None, drain_seconds, log_level)
        return 0
    context = multiprocessing.get_context("spawn")
    shutdown = context.Event()
    workers = [
        context.Process(target=serve_worker,
                        args=(config, sockets, shutdown, drain_seconds, log_level))
        for _ in range(config.workers)
    ]

    def stop(*_: Any) -> None:
        shutdown.set()

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the workers inherit this: we decide
    for worker in workers:
        worker.start()
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    for worker in workers:
        worker.join()
    return max((w.exitcode or 0 for w in workers), default=0)


def tune_gc() -> None:
    """Fewer, cheaper collections for a process holding thousands of live streams.

    Measured by the benchmark at 2,000 live streams: with Python's defaults
    the worker spent 30% of its CPU in gc, with pauses up to 362 ms; with
    start-up objects frozen and a gen-0 threshold of 50,000, 6.7% and 71 ms.
    Streams make few reference cycles, so rarer collections cost little memory.
    """
    gc.collect()
    gc.freeze()  # everything built so far lives as long as the process
    gc.set_threshold(50_000, 20, 1_000)


def serve_worker(config: StreamingConfig, sockets: Sockets, shutdown: ProcessEvent | None,
                 drain_seconds: float, log_level: str = "info") -> None:
    """One worker process: the app under hypercorn's trio server, draining on shutdown."""
    configure_logging(log_level)  # a no-op where `sluice serve` already did it
    from server.access_log import use_log_format
    from server.app import app  # built here, in the worker, from $SLUICE_CONFIG

    tune_gc()

    gateway = app.extensions["sluice.gateway"]
    use_log_format(gateway.settings.logging.format)  # [logging] format = "json": JSON lines

    async def drain_then_stop() -> None:
        if shutdown is None:
            with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for _ in signals:
                    break
        else:
            await check_multiprocess_shutdown_event(shutdown, trio.sleep)
        await gateway.lifecycle.drain(drain_seconds)

    trio.run(partial(worker_serve, wrap_app(app, config.wsgi_max_body_size, "asgi"), config,
                     sockets=sockets, shutdown_trigger=drain_then_stop))
