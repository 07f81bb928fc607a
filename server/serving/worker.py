"""The worker every launcher runs: hypercorn's trio ``worker_serve``, draining before it stops.

Sluice is started two ways — ``hypercorn --worker-class trio server.app:app``
(with whatever hypercorn options a user adds: the default one worker under a
forked master, ``--workers N``, ``-w 0`` in-process) and ``sluice serve`` —
and must behave the same under each. Every one of them ends in hypercorn's
``trio_worker``, which first calls ``load_application`` (importing
`server.app`) and only then looks up its module's global ``worker_serve`` to
run. `server.app` calls `install` where it builds the app, so that lookup
finds `worker_serve` here. (`hypercorn.trio.serve`, the programmatic entry
the test suite and embedders use, bound the original at its own import and
is left alone: its caller owns shutdown.)

For an app built by `server.gateway.create_app` (any other is served as
hypercorn would), the worker adds:

- **a drain before hypercorn's shutdown.** hypercorn begins its graceful
  shutdown when its ``shutdown_trigger`` returns. Ours returns only after a
  drain (`server.serving.lifecycle`): it waits for the first of the trigger
  hypercorn passed (the master's shutdown event under ``--workers N``) and a
  SIGTERM or SIGINT to this process — hypercorn's trio worker handles
  neither in-process (``-w 0``, ``sluice serve``): SIGTERM would end the
  process on the spot; and under systemd's default ``KillMode=control-group``
  each worker gets the SIGTERM itself. Then ``/readyz`` turns 503, new chat
  requests get a retryable 503, live streams get ``drain_seconds``, and each
  stream still running ends with an in-band ``server_shutting_down`` and its
  upstream closed. Only then does hypercorn stop listening; its
  ``graceful_timeout`` now only bounds those last writes. A second signal
  cuts the drain short. The start and the end of the drain are logged with
  their counts.
- **the gc setting** (`tune_gc`) in the process that serves.
- **logging that shows.** Under plain hypercorn nothing configures Python
  logging, so the gateway's info lines (the drain, 4xx answers with their
  ``error_id``) would vanish; the ``sluice`` loggers then get a stderr
  handler of their own.

The stall bound on accepted connections is the TCP server's
(`server.serving.tcp_server`), which `install` puts in place too.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import multiprocessing
import os
import signal
import sys
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any, NoReturn

import trio
from hypercorn.config import Config, Sockets
from hypercorn.trio import run as hypercorn_trio_run
from hypercorn.trio.run import worker_serve as hypercorn_worker_serve

from server.access_log import use_log_format
from server.gateway import Gateway, SluiceApp
from server.serving import tcp_server
from server.serving.launch import LOG_FORMAT
from server.serving.lifecycle import Lifecycle

log = logging.getLogger("sluice.serving")

Trigger = Callable[..., Awaitable[None]]
SHUTDOWN_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def install() -> None:
    """Make hypercorn's trio worker serve through `worker_serve` and `LeanTCPServer`."""
    tcp_server.install()
    hypercorn_trio_run.worker_serve = worker_serve  # type: ignore[assignment]  # no task_status


async def worker_serve(
    app: Any,
    config: Config,
    *,
    sockets: Sockets | None = None,
    shutdown_trigger: Trigger | None = None,
) -> None:
    """hypercorn's ``worker_serve``, whose shutdown trigger drains the gateway first.

    Called as ``trio_worker`` calls it (no ``task_status``: nothing starts it in a nursery).
    """
    framework = getattr(app, "app", None)  # hypercorn's ASGIWrapper holds the app
    if isinstance(framework, SluiceApp):
        gateway: Gateway = framework.extensions["sluice.gateway"]
        show_logs()
        use_log_format(gateway.settings.logging.format)  # [logging] format = "json"
        tune_gc()
        shutdown_trigger = partial(drain_on_shutdown, gateway, shutdown_trigger)
    await hypercorn_worker_serve(app, config, sockets=sockets, shutdown_trigger=shutdown_trigger)


async def drain_on_shutdown(gateway: Gateway, trigger: Trigger | None) -> None:
    """Wait for hypercorn's trigger or a signal, then drain; return when the drain is over."""
    seconds = gateway.settings.server.drain_seconds
    lifecycle = gateway.lifecycle
    with _shutdown_signals() as signals:
        reason = await _first_of(trigger, signals)
        live = lifecycle.begin_drain()
        log.info("shutting down (%s): draining %d live stream(s) for up to %g s",
                 reason, live, seconds)
        started = trio.current_time()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_cut_short_on_signal, signals, lifecycle)
            stopped = await lifecycle.drain(seconds)
            nursery.cancel_scope.cancel("the drain is over")
    log.info("drain over after %.1f s: %d stream(s) finished, %d told to retry "
             "(server_shutting_down)", trio.current_time() - started, max(0, live - stopped),
             stopped)


async def _first_of(trigger: Trigger | None, signals: AsyncIterator[int] | None) -> str:
    """Wait for whichever comes first; say which it was."""
    reason = "the master's shutdown event"
    async with trio.open_nursery() as nursery:
        if trigger is not None:
            async def triggered() -> None:
                await trigger()
                nursery.cancel_scope.cancel("hypercorn's shutdown trigger")

            nursery.start_soon(triggered)
        if signals is not None:
            async def signalled() -> None:
                nonlocal reason
                async for number in signals:
                    reason = signal.Signals(number).name
                    nursery.cancel_scope.cancel(reason)
                    return

            nursery.start_soon(signalled)
        await trio.sleep_forever()  # neither: only hypercorn's own stop (max_requests) ends it
    return reason


async def _cut_short_on_signal(signals: AsyncIterator[int] | None,
                               lifecycle: Lifecycle) -> None:
    if signals is None:
        return
    async for number in signals:
        log.info("%s again: ending the drain now", signal.Signals(number).name)
        lifecycle.cut_short()
        return


@contextmanager
def _shutdown_signals() -> Iterator[AsyncIterator[int] | None]:
    """SIGTERM and SIGINT as an async iterator, or None off the main thread (Python's rule)."""
    if threading.current_thread() is not threading.main_thread():
        yield None
        return
    with trio.open_signal_receiver(*SHUTDOWN_SIGNALS) as signals:
        yield signals


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


def show_logs() -> None:
    """Give the ``sluice`` loggers a stderr handler at info if nothing would show them."""
    sluice = logging.getLogger("sluice")
    if sluice.hasHandlers():
        return  # `sluice serve`, a --log-config, or an embedder's own set-up decides
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    sluice.addHandler(handler)
    if sluice.level == logging.NOTSET:
        sluice.setLevel(logging.INFO)


def stop_for_bad_config(message: str) -> NoReturn:
    """Print why the app cannot start and exit 2 — non-zero under every launcher.

    hypercorn's master process (``--workers N``, and its default of one
    worker) reports a worker that failed to start as success: its cleanup
    joins the already-reaped workers a second time and returns that 0
    (pgjones/hypercorn#269, fixed by the still-open #372). A worker spawned by
    it therefore stops its master too, with SIGKILL — the one signal the
    master cannot turn into a clean exit — before exiting itself. Every worker
    fails alike on a bad configuration, so no worker is left behind serving.
    (The master's multiprocessing resource tracker then removes the master's
    semaphores itself, with a warning that it did.)
    """
    print(message, file=sys.stderr, flush=True)
    master = _hypercorn_master()
    if master is not None:
        print(f"sluice: stopping hypercorn's master process {master} so that it exits "
              f"non-zero", file=sys.stderr, flush=True)
        with contextlib.suppress(ProcessLookupError):  # another worker was first
            os.kill(master, signal.SIGKILL)
    raise SystemExit(2)


def _hypercorn_master() -> int | None:
    """The PID of the hypercorn master that spawned this process to run its trio worker."""
    parent = multiprocessing.parent_process()
    target = getattr(multiprocessing.current_process(), "_target", None)
    if parent is None or parent.pid is None or target is not hypercorn_trio_run.trio_worker:
        return None  # in-process (-w 0), or spawned by `sluice serve`, which reads exit codes
    return parent.pid
