"""Taking a backend for one attempt: a concurrency slot and, if its circuit is half-open, the probe.

    async with reserve(routes, excluded, rng, queue_timeout=5.0) as reservation:
        if reservation is None:
            ...                                    # nothing usable, or all stayed full
        ... the attempt, via reservation.route ...
        change = reservation.record(error, trio.current_time())   # None: the attempt went well
    # left, however: the slot is given back, and a probe with no recorded outcome too

A route is chosen by `server.limits.routing.pick`: the first usable tier,
the least busy route within it. Asking a half-open breaker lets one request
through, the *probe*; a reservation that leaves without recording an outcome
(the client left, the attempt never ran, the wait for a slot timed out)
frees it, so the next request may probe instead. When every usable route is
at its ``max_concurrency``, the reservation waits in line for the least busy
one, up to ``queue_timeout`` (``0``: no wait).

``prefer`` names the route of a retry: it is taken again if its breaker
still lets a request through (waiting for its slot if another stream took
it meanwhile); if the breaker tripped meanwhile, another route is picked.
``last_resort`` names routes that are excluded unless nothing else is
usable (a backend that cut the answer a continuation is to repair).
``strategy`` is the model's way of choosing within a tier.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass

import trio

from server.config import Strategy
from server.errors import NoBackendAvailable, SluiceError
from server.limits.breaker import State
from server.limits.retry_policy import counts_against_backend
from server.limits.routing import Route, pick


@dataclass(eq=False, slots=True)
class Reservation:
    """A slot of ``route`` held for one attempt, and whether the breaker's probe is ours."""

    route: Route
    probe: bool  # allowed through a half-open breaker: this attempt is its one probe
    recorded: bool = False

    def record(self, error: SluiceError | None, now: float) -> State | None:
        """Tell the route's breaker how the attempt ended; return its new state if it changed.

        A relayed request error (a 400) says nothing about the backend's health.
        """
        self.recorded = True
        healthy = error is None or not counts_against_backend(error)
        return self.route.breaker.record(healthy, now)


@asynccontextmanager
async def reserve(routes: Sequence[Route], excluded: set[str], rng: random.Random, *,
                  queue_timeout: float, prefer: str | None = None,
                  last_resort: frozenset[str] | set[str] = frozenset(),
                  strategy: Strategy = "least_busy") -> AsyncIterator[Reservation | None]:
    """A slot of the best usable route for the next attempt, held until the ``async with`` ends."""
    reservation = None
    if last_resort:
        reservation = await _take(routes, excluded | last_resort, rng, 0.0, None, strategy)
        excluded = excluded - last_resort
    if reservation is None:
        reservation = await _take(routes, excluded, rng, queue_timeout, prefer, strategy)
    if reservation is None:
        yield None
        return
    try:
        yield reservation
    finally:
        reservation.route.limiter.release()
        if reservation.probe and not reservation.recorded:
            reservation.route.breaker.abandon()


def no_backend(routes: Sequence[Route], now: float) -> NoBackendAvailable:
    """Why nothing could be reserved; retry when the first open breaker would allow a probe."""
    error = NoBackendAvailable("No backend is available for this model right now.")
    waits = [r.breaker.retry_in(now) for r in routes if r.breaker.state == "open"]
    error.retry_after = min(waits) if waits else 1.0
    return error


async def _take(routes: Sequence[Route], excluded: set[str], rng: random.Random,
                queue_timeout: float, prefer: str | None,
                strategy: Strategy) -> Reservation | None:
    now = trio.current_time()
    if prefer is not None:
        again = next((r for r in routes if r.name == prefer), None)
        if again is not None and again.breaker.allow(now):
            return await _wait_for_slot(again, queue_timeout)
    route = pick(routes, excluded, now, rng, strategy=strategy)
    if route is not None:
        route.limiter.acquire_nowait()  # `pick` saw room, and nothing has run since
        return Reservation(route, _holds_probe(route))
    if queue_timeout <= 0:
        return None
    busy = pick(routes, excluded, now, rng, need_room=False)
    if busy is None:
        return None
    return await _wait_for_slot(busy, queue_timeout)


async def _wait_for_slot(route: Route, queue_timeout: float) -> Reservation | None:
    """A slot of ``route``, whose breaker has let us through: now, or within ``queue_timeout``."""
    probe = _holds_probe(route)
    try:
        route.limiter.acquire_nowait()
        return Reservation(route, probe)
    except trio.WouldBlock:
        pass
    got = False
    try:
        with trio.move_on_after(queue_timeout):
            await route.limiter.acquire()
            got = True
    finally:
        if not got and probe:
            route.breaker.abandon()  # timed out or cancelled in line: let another probe
    return Reservation(route, probe) if got else None


def _holds_probe(route: Route) -> bool:
    """Just allowed through: a half-open breaker lets exactly one request through, ours."""
    return route.breaker.state == "half_open"
