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
  error, so its connection is closed, never pooled;
* a model with ``hedge_after`` runs its first attempt as a race
  (`server.stream.hedge`), a continuation goes to the backends that can
  continue — the one that cut the answer last, one that refused a prefill
  not for ``prefill_cooldown`` — and the plan's model may change on a
  context-length refusal (``context_fallback``: that model's routes then);
* each attempt is a span of the stream's trace (`server.telemetry`), ended
  in the attempt's ``finally`` whatever ends it; its ``traceparent`` goes
  upstream with the request.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial

import trio

from server.api.chat_completions import ChatRequest
from server.config import ModelSettings, RetryPolicy, Settings
from server.errors import ShuttingDown, SluiceError
from server.limits.reservation import Reservation, no_backend, reserve
from server.limits.retry_budget import RetryBudget
from server.limits.routing import Route, candidates
from server.metrics import Metrics
from server.stream.attempt import COMPLETE, END, LOST, Attempt
from server.stream.channel import ChannelItem, StreamEnd
from server.stream.continuation import capable_routes, prefill_routes, refused_prefill
from server.stream.fail_over import AfterAttempt, FailOver
from server.stream.hedge import race
from server.stream.outcome import Outcome, attempt_outcome
from server.stream.progress import StreamProgress
from server.telemetry.tracer import NULL_STREAM, StreamTrace

log = logging.getLogger("sluice.pump")

# After [DONE], how long to keep reading so the connection can be reused.
_DRAIN_SECONDS = 1.0
_NO_MODEL_SETTINGS = ModelSettings()


@dataclass(frozen=True, slots=True)
class PumpContext:
    """What the pump needs besides the request; built once per stream by the view."""

    routes: tuple[Route, ...]  # the model's routes, lowest priority first
    policy: RetryPolicy
    queue_timeout: float
    metrics: Metrics
    rng: random.Random
    model: ModelSettings = _NO_MODEL_SETTINGS  # hedging, strategy, context fallback
    # The routes of each context-fallback model that has any, in the order to try them.
    fallback_routes: Mapping[str, tuple[Route, ...]] = field(default_factory=dict)
    # Whether any route can continue a cut; if none can, the relayed text is not kept.
    keeps_text: bool = field(init=False)
    budgets: Mapping[str, RetryBudget] = field(init=False)

    def __post_init__(self) -> None:
        every = (*self.routes, *(r for rs in self.fallback_routes.values() for r in rs))
        object.__setattr__(self, "keeps_text", bool(prefill_routes(every)))
        object.__setattr__(self, "budgets", {r.name: r.retry_budget for r in every})

    def routes_for(self, model: str) -> tuple[Route, ...]:
        return self.fallback_routes.get(model, self.routes)


def fallback_routes(routes: tuple[Route, ...], settings: Settings,
                    model: str) -> dict[str, tuple[Route, ...]]:
    """The routes of each of ``model``'s context fallbacks that has any, in order."""
    found = {}
    for other in settings.model(model).context_fallback:
        serving = candidates(routes, other)
        if serving:
            found[other] = serving
    return found


async def pump_upstream(
    request: ChatRequest,
    context: PumpContext,
    channel: trio.MemorySendChannel[ChannelItem],
    progress: StreamProgress,
    upstream_scope: trio.CancelScope,
    trace: StreamTrace = NULL_STREAM,
) -> None:
    """Relay the request's answer into ``channel``; each attempt is a span of ``trace``.

    Cancelling ``upstream_scope`` stops the upstream side only (the end of a
    drain does): the stream then ends with an in-band "server shutting down",
    written by the writer in the response's own format.
    """
    with channel:
        with upstream_scope:
            end = await _serve(request, context, channel, progress, trace)
        if upstream_scope.cancelled_caught:
            end = StreamEnd(ShuttingDown())
        if end is not None:
            await channel.send(end)


async def _serve(
    request: ChatRequest,
    context: PumpContext,
    channel: trio.MemorySendChannel[ChannelItem],
    progress: StreamProgress,
    trace: StreamTrace,
) -> StreamEnd | None:
    """Attempts until one completes or nothing more may be tried; return how it ended."""
    plan = FailOver(request, context.policy, progress, context.rng,
                    started=trio.current_time(), keep_text=context.keeps_text,
                    budgets=context.budgets, fallback_models=tuple(context.fallback_routes))
    while not isinstance(step := plan.next_attempt(now := trio.current_time()), StreamEnd):
        routes = context.routes_for(plan.model)
        wait = context.queue_timeout
        if step.continues:  # only backends that can continue, the one that cut last
            routes, wait = capable_routes(prefill_routes(routes), now), 0.0
        async with reserve(routes, plan.excluded, context.rng, queue_timeout=wait,
                           prefer=step.prefer, strategy=context.model.strategy,
                           last_resort=plan.last_resort if step.continues else frozenset()
                           ) as reservation:
            if reservation is None:
                return plan.unreserved(no_backend(routes, trio.current_time()))
            route = reservation.route
            attempt = plan.start(route.name, route.backend.settings.timeouts,
                                 trio.current_time())
            delay = None if step.continues else hedge_delay(context.model, route)
            if delay is None:
                end = await _attempt(reservation, attempt, None, channel=channel,
                                     metrics=context.metrics, trace=trace)
                backend = None
            else:
                backend, end = await race(
                    plan, reservation, attempt, delay,
                    partial(reserve, routes, rng=context.rng, queue_timeout=0.0,
                            strategy=context.model.strategy),
                    context.metrics,
                    partial(_attempt, channel=channel, metrics=context.metrics, trace=trace))
        if refused_prefill(attempt.request, None if end is None else end.error):
            _refused_prefill(route, context, trio.current_time())
        after = plan.ended(end, trio.current_time(), backend=backend)
        _note(after, plan, context)
        if after.over:
            return after.end
        if after.delay:
            await trio.sleep(after.delay)
    return step


def _refused_prefill(route: Route, context: PumpContext, now: float) -> None:
    """A backend declared prefill but refused one: not asked again for the cool-down."""
    route.prefill_refused_until = now + context.policy.prefill_cooldown
    context.metrics.prefill_refusals.labels(route.name).inc()
    log.warning("backend %s declares continuation = \"prefill\" but refused a continuation: "
                "not asked to continue for %.0f s", route.name, context.policy.prefill_cooldown)


def _note(after: AfterAttempt, plan: FailOver, context: PumpContext) -> None:
    """Metrics and logs of a verdict that is more than routine."""
    if after.budget_exhausted:
        context.metrics.retry_budget_exhausted.inc()
        log.warning("retry budget spent: request not tried again (model %s)", plan.model)
    elif after.verdict == "fall_back":
        context.metrics.context_fallbacks.labels(plan.model).inc()
        log.info("request too long for its model: trying model %s", plan.model)


def hedge_delay(model: ModelSettings, route: Route) -> float | None:
    """Seconds without content after which the attempt on ``route`` is hedged; None: never."""
    if model.hedge_after == "auto":
        return route.first_token.p95(AUTO_HEDGE_MIN_SAMPLES)
    return model.hedge_after


# With hedge_after = "auto", a backend's p95 is trusted from this many first tokens on.
AUTO_HEDGE_MIN_SAMPLES = 10


async def _attempt(reservation: Reservation, attempt: Attempt,
                   on_commit: Callable[[], None] | None, *,
                   channel: trio.MemorySendChannel[ChannelItem],
                   metrics: Metrics, trace: StreamTrace) -> StreamEnd | None:
    """One upstream request, accounted to its backend's breaker and metrics, and traced.

    ``on_commit`` is called when the attempt commits (a hedge race's winner).
    An attempt cancelled (the client left, it lost a race) records nothing
    but its span, which ends here whatever ends the attempt.
    """
    route = reservation.route
    outcome: Outcome = "cancelled"
    error: SluiceError | None = None
    span = trace.attempt(route, attempt)
    try:
        end = await _relay(route, attempt, channel, on_commit, span.upstream_headers())
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
        span.end(attempt, outcome, error)


async def _relay(route: Route, attempt: Attempt, channel: trio.MemorySendChannel[ChannelItem],
                 on_commit: Callable[[], None] | None,
                 headers: Mapping[str, str]) -> StreamEnd | None:
    """Relay one upstream stream; return how it ended, or None if the clean end was sent."""
    timer = trio.CancelScope(deadline=attempt.deadline)
    committed = False
    try:
        with timer:
            async with route.backend.open_stream(attempt.request, headers) as payloads:
                async for payload in payloads:
                    action = attempt.feed(payload, trio.current_time())
                    if action.rearms:
                        timer.deadline = attempt.deadline
                    if action.flushes:
                        if not committed:
                            committed = True
                            _committed(route, attempt, on_commit)
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
                    elif action is LOST:
                        await trio.lowlevel.checkpoint()  # its scope is cancelled: this raises
                        raise RuntimeError("an attempt lost its race but was not cancelled")
    except SluiceError as error:
        return StreamEnd(error)
    if timer.cancelled_caught:
        return attempt.timed_out()
    return attempt.body_ended()


def _committed(route: Route, attempt: Attempt, on_commit: Callable[[], None] | None) -> None:
    """The attempt's first content (or its finish) is going to the client."""
    if not attempt.request.continues_answer:  # a continuation's first token is not comparable
        route.first_token.add(trio.current_time() - attempt.started)
    if on_commit is not None:
        on_commit()


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
