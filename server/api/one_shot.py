"""A request answered by one upstream JSON body (``/v1/embeddings``): routing, retries, fail-over.

There is no stream, so the commit point is the answer itself: until it is
sent, any failure may be retried or failed over, as a stream's attempts are
before their first content chunk — the same `server.limits.retry_policy`
decision, the same ``max_attempts`` and ``budget``, the same routing
(`server.limits.routing.pick`), circuit breakers and backend slots
(``max_concurrency``). Each attempt is bounded by its backend's
``first_chunk`` timeout: for a one-piece answer, the first chunk is all of it.

    async with admitted(gateway.slots, weight, queue_timeout):
        body = await relay_once(routes, call, context)   # call(route) -> bytes
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import trio

from server.errors import (
    NoBackendAvailable,
    SluiceError,
    TooManyRequests,
    UpstreamError,
    UpstreamTimeout,
)
from server.limits.admission import Slots
from server.limits.retry_policy import counts_against_backend, decide
from server.limits.routing import Route, pick
from server.stream.pump import PumpContext

log = logging.getLogger("sluice.one_shot")

Call = Callable[[Route], Awaitable[bytes]]


@asynccontextmanager
async def admitted(slots: Slots, weight: int, queue_timeout: float) -> AsyncIterator[None]:
    """Hold ``weight`` admission slots for the request's life, or answer 429 in time."""
    if not slots.try_acquire(weight):
        with trio.move_on_after(queue_timeout) as waited:
            await slots.acquire(weight)
        if waited.cancelled_caught:
            raise TooManyRequests("The gateway is at capacity; retry shortly.",
                                  code="gateway_busy", retry_after=1.0)
    try:
        yield
    finally:
        slots.release(weight)


async def relay_once(routes: tuple[Route, ...], call: Call, context: PumpContext) -> bytes:
    """The first answer an attempt gets; the last error when none may be tried any more."""
    policy = context.policy
    budget_ends = trio.current_time() + policy.budget
    excluded: set[str] = set()
    route: Route | None = None
    retries_here = 0
    last_error: SluiceError | None = None
    for _ in range(policy.max_attempts):
        if trio.current_time() >= budget_ends:
            break
        if route is None:
            route = pick(routes, excluded, trio.current_time(), context.rng, need_room=False)
            if route is None:
                break
        try:
            return await _attempt(route, call, context)
        except UpstreamError as error:
            last_error = error
        decision = decide(last_error, retries_here, policy, context.rng)
        if decision.action == "give_up":
            raise last_error
        if decision.action == "retry":
            retries_here += 1
            await trio.sleep(min(decision.delay, max(0.0, budget_ends - trio.current_time())))
        else:
            excluded.add(route.name)
            route, retries_here = None, 0
    if last_error is not None:
        raise last_error
    raise _unavailable("No backend is available for this model right now.")


async def _attempt(route: Route, call: Call, context: PumpContext) -> bytes:
    """One upstream request, holding a slot of its backend; its outcome is counted."""
    outcome = "cancelled"
    with trio.move_on_after(context.queue_timeout) as waited:
        await route.limiter.acquire()
    if waited.cancelled_caught:
        route.breaker.abandon()
        raise _unavailable("Every backend for this model is busy; retry shortly.")
    try:
        seconds = route.backend.settings.timeouts.first_chunk
        with trio.move_on_after(seconds) as timer:
            answer = await call(route)
        if timer.cancelled_caught:
            raise UpstreamTimeout("first_chunk", seconds)
        outcome = "completed"
        _record(route, True, context)
        return answer
    except UpstreamError as error:
        outcome = "upstream_timeout" if isinstance(error, UpstreamTimeout) else (
            "upstream_error" if counts_against_backend(error) else "rejected")
        _record(route, not counts_against_backend(error), context)
        log.info("attempt via %s failed: [%s] %s", route.name, error.error_id, error.detail)
        raise
    finally:
        route.limiter.release()
        if outcome == "cancelled":
            route.breaker.abandon()
        context.metrics.upstream_requests.labels(route.name, outcome).inc()


def _unavailable(message: str) -> NoBackendAvailable:
    error = NoBackendAvailable(message)
    error.retry_after = 1.0
    return error


def _record(route: Route, healthy: bool, context: PumpContext) -> None:
    change = route.breaker.record(healthy, trio.current_time())
    if change is not None:
        context.metrics.breaker_transitions.labels(route.name, change).inc()
        log.warning("circuit of backend %s is now %s", route.name, change)
