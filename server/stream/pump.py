"""The upstream reader: a stream's attempts driven with I/O, into one stream of channel items.

`pump_upstream` is the task of a stream's nursery that talks to upstreams.
It owns the send end of the stream's bounded channel; it sends chunk
payloads (``bytes``) and finally one `StreamEnd`, then closes the channel.

Every decision is made elsewhere, without I/O: what to do with each payload
(hold the preamble, commit on the first content chunk, move the idle timer,
finish a stream that lacks ``[DONE]``) is `server.stream.attempt`'s; what
comes after a failed attempt (retry here, fail over, continue after the
commit point, give up) is `server.stream.fail_over`'s. This module only
reads, sends, sleeps and keeps the timer:

* each attempt holds a reservation of its backend (`server.limits.reservation`:
  a concurrency slot, maybe the breaker's probe) and its upstream
  connection, both ``async with``: leaving the attempt releases them;
* the attempt's timer is one cancel scope whose deadline the attempt moves
  (first chunk, then idle); waiting for room in the channel is the client's
  slowness, not the upstream's, so the timer pauses meanwhile;
* after ``[DONE]`` the rest of the body is read briefly, so the connection
  can be reused; an attempt that failed leaves its ``async with`` by its
  error, so its connection is closed, never pooled.
"""

from __future__ import annotations

import logging
import math
import random
from dataclasses import dataclass, field

import trio

from server.api.chat_completions import ChatRequest
from server.config import RetryPolicy
from server.errors import ShuttingDown, SluiceError
from server.limits.reservation import Reservation, no_backend, reserve
from server.limits.routing import Route
from server.metrics import Metrics
from server.stream.attempt import COMPLETE, END, Attempt
from server.stream.channel import ChannelItem, StreamEnd
from server.stream.continuation import prefill_routes
from server.stream.fail_over import FailOver
from server.stream.outcome import Outcome, attempt_outcome
from server.stream.progress import StreamProgress

log = logging.getLogger("sluice.pump")

# After [DONE], how long to keep reading so the connection can be reused.
_DRAIN_SECONDS = 1.0


@dataclass(frozen=True, slots=True)
class PumpContext:
    """What the pump needs besides the request; built once per stream by the view."""

    routes: tuple[Route, ...]  # the model's routes, lowest priority first
    policy: RetryPolicy
    queue_timeout: float
    metrics: Metrics
    rng: random.Random
    # The routes that can continue a cut; if there are none, the relayed text is not kept.
    prefill_routes: tuple[Route, ...] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "prefill_routes", prefill_routes(self.routes))


async def pump_upstream(
    request: ChatRequest,
    context: PumpContext,
    channel: trio.MemorySendChannel[ChannelItem],
    progress: StreamProgress,
    upstream_scope: trio.CancelScope,
) -> None:
    """Relay the request's answer into ``channel``.

    Cancelling ``upstream_scope`` stops the upstream side only (the end of a
    drain does): the stream then ends with an in-band "server shutting down",
    written by the writer in the response's own format.
    """
    with channel:
        with upstream_scope:
            end = await _serve(request, context, channel, progress)
        if upstream_scope.cancelled_caught:
            end = StreamEnd(ShuttingDown())
        if end is not None:
            await channel.send(end)


async def _serve(
    request: ChatRequest,
    context: PumpContext,
    channel: trio.MemorySendChannel[ChannelItem],
    progress: StreamProgress,
) -> StreamEnd | None:
    """Attempts until one completes or nothing more may be tried; return how it ended."""
    plan = FailOver(request, context.policy, progress, context.rng,
                    started=trio.current_time(), keep_text=bool(context.prefill_routes))
    while not isinstance(step := plan.next_attempt(trio.current_time()), StreamEnd):
        routes, wait = ((context.prefill_routes, 0.0) if step.continues
                        else (context.routes, context.queue_timeout))
        async with reserve(routes, plan.excluded, context.rng, queue_timeout=wait,
                           prefer=step.prefer) as reservation:
            if reservation is None:
                return plan.unreserved(no_backend(context.routes, trio.current_time()))
            route = reservation.route
            attempt = plan.start(route.name, route.backend.settings.timeouts,
                                 trio.current_time())
            end = await _attempt(reservation, attempt, channel, context.metrics)
        after = plan.ended(end, trio.current_time())
        if after.over:
            return after.end
        if after.delay:
            await trio.sleep(after.delay)
    return step


async def _attempt(reservation: Reservation, attempt: Attempt,
                   channel: trio.MemorySendChannel[ChannelItem],
                   metrics: Metrics) -> StreamEnd | None:
    """One upstream request, accounted to its backend's breaker and metrics."""
    route = reservation.route
    outcome: Outcome = "cancelled"
    try:
        end = await _relay(route, attempt, channel)
        error = None if end is None else end.error
        outcome = attempt_outcome(error)
        change = reservation.record(error, trio.current_time())
        if change is not None:
            metrics.breaker_transitions.labels(route.name, change).inc()
            log.warning("circuit of backend %s is now %s", route.name, change)
        if error is not None:
            log.info("attempt via %s failed: [%s] %s", route.name, error.error_id, error.detail)
        return end
    finally:
        metrics.upstream_requests.labels(route.name, outcome).inc()


async def _relay(route: Route, attempt: Attempt,
                 channel: trio.MemorySendChannel[ChannelItem]) -> StreamEnd | None:
    """Relay one upstream stream; return how it ended, or None if the clean end was sent."""
    timer = trio.CancelScope(deadline=attempt.deadline)
    try:
        with timer:
            async with route.backend.open_stream(attempt.request) as payloads:
                async for payload in payloads:
                    action = attempt.feed(payload, trio.current_time())
                    if action.rearms:
                        timer.deadline = attempt.deadline
                    if action.flushes:
                        for held in attempt.take_held():
                            await _send(channel, held, timer)
                    if action.sends:
                        await _send(channel, attempt.outgoing, timer)
                    elif action is COMPLETE:
                        await _send(channel, StreamEnd(), timer)
                        timer.deadline = math.inf  # the stream is complete; only drain now
                        with trio.move_on_after(_DRAIN_SECONDS):
                            async for _ in payloads:
                                pass  # read to the end so the connection can be reused
                        return None
                    elif action is END and attempt.error is not None:
                        raise attempt.error  # leave by an error: the connection is not reused
    except SluiceError as error:
        return StreamEnd(error)
    if timer.cancelled_caught:
        return attempt.timed_out()
    return attempt.body_ended()


async def _send(channel: trio.MemorySendChannel[ChannelItem], item: ChannelItem,
                timer: trio.CancelScope) -> None:
    """Send with the upstream timer paused while the channel is full."""
    try:
        channel.send_nowait(item)
    except trio.WouldBlock:
        remaining = timer.deadline - trio.current_time()
        timer.deadline = math.inf
        await channel.send(item)
        timer.deadline = trio.current_time() + remaining
