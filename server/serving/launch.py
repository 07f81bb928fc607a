"""``sluice serve``: hypercorn's trio worker, with hypercorn settings chosen for long streams.

What a worker does at shutdown, at start and per connection belongs to the
app, not to this launcher (`server.serving.worker`, `server.serving.tcp_server`):
plain ``hypercorn --worker-class trio server.app:app`` drains, bounds stalled
sends and tunes gc the same way. What is left here is what only a launcher
can choose:

- **hypercorn's settings** (`hypercorn_config`). Its defaults suit short
  requests: a listen backlog of 100 drops bursts of new streams, and a
  ``graceful_timeout`` of 3 s is tight for the last writes after a drain.
  ``sluice serve`` and the tests both use these settings, so what is tested
  is what is served. (Under plain hypercorn, pass ``--backlog`` and
  ``--graceful-timeout`` yourself.)
- **the processes** (`run`). One worker is served in this process — no
  forked master, whose only job would be to relay a signal, and one process's
  memory. With more, each is spawned with the listening sockets, the master
  tells them all to stop on SIGINT/SIGTERM and exits with the first failing
  worker's code (hypercorn's own master exits 0 even when a worker failed).
  ``--workers auto`` is one per core this process may run on.
- **failures before serving**, as one line: an address already in use is
  ``sluice: cannot listen on 127.0.0.1:8000: Address already in use``, exit 1.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import sys
from multiprocessing.synchronize import Event as ProcessEvent
from typing import Any

from hypercorn.config import Config, Sockets
from hypercorn.trio.run import trio_worker

APP_PATH = "server.app:app"
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"

# After the drain, how long hypercorn lets the stopped streams write their last event.
DRAIN_MARGIN = 5.0


def hypercorn_config(bind: str = "127.0.0.1:8000", workers: int = 1) -> Config:
    config = Config()
    config.bind = [bind]
    config.workers = workers
    config.worker_class = "trio"
    config.application_path = APP_PATH
    config.graceful_timeout = DRAIN_MARGIN  # the app drains first (server.serving.worker)
    config.backlog = 2048
    config.keep_alive_timeout = 75.0  # longer than common load balancers' idle timeouts
    config.accesslog = None
    # hypercorn's own logger, without a handler of its own: its lines go through the
    # root handler `configure_logging` sets up, once each.
    config.errorlog = logging.getLogger("hypercorn.error")
    return config


def workers_from(text: str) -> int:
    """``--workers``: a count ≥ 1, or ``auto`` for one per core this process may use."""
    if text == "auto":
        return len(os.sched_getaffinity(0))
    count = int(text)  # argparse turns the ValueError into a usage message
    if count < 1:
        raise ValueError(f"expected at least 1 worker, got {count}")
    return count


def configure_logging(level: str) -> None:
    """One line per record on stderr; in a spawned worker too (it starts unconfigured)."""
    logging.basicConfig(level=level.upper(), format=LOG_FORMAT)


def run(config: Config, log_level: str = "info") -> int:
    """Serve until SIGINT/SIGTERM (each worker drains first); return the exit code."""
    try:
        sockets = config.create_sockets()
    except OSError as error:
        print(f"sluice: cannot listen on {', '.join(config.bind)}: "
              f"{error.strerror or error}", file=sys.stderr)
        return 1
    if config.workers <= 1:
        trio_worker(config, sockets)  # in this process; drains on SIGINT/SIGTERM itself
        return 0
    context = multiprocessing.get_context("spawn")
    shutdown = context.Event()
    workers = [
        context.Process(target=serve_worker, args=(config, sockets, shutdown, log_level))
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
    return exit_code([worker.exitcode for worker in workers])


def exit_code(codes: list[int | None]) -> int:
    """The first failing worker's code; a worker killed by signal N counts as 128 + N."""
    for code in codes:
        if code:
            return code if code > 0 else 128 - code
    return 0


def serve_worker(config: Config, sockets: Sockets, shutdown: ProcessEvent,
                 log_level: str = "info") -> None:
    """One spawned worker: hypercorn's own trio worker, stopped by the master's event."""
    configure_logging(log_level)
    trio_worker(config, sockets, shutdown)
