"""The upstream reader: attempts, retries and fail-over, turned into one stream of channel items.

`pump_upstream` is the task of a stream's nursery that talks to upstreams.
It owns the send end of the stream's bounded channel; it sends chunk
payloads (``bytes``) and finally one `StreamEnd`, then closes the channel.
Each attempt owns its upstream connection (an ``async with``) and its
backend's concurrency slot (a ``with``): leaving the attempt releases both.

**The commit point** is the first content-bearing chunk. Until then nothing
has reached the client — the role-only preamble is held back — so a failure
can be retried on the same backend or failed over to the next, invisibly
(`server.limits.retry_policy` decides which). After it the client has text on
screen: a failure ends the stream in-band, unless a backend of the same
model declares ``continuation = "prefill"``; then the pump asks it to
continue the text relayed so far and streams only the continuation.

**The timers** of an attempt live in one cancel scope whose deadline moves:
*first chunk* (from the attempt to its first content chunk, never past the
request's retry budget) and *idle* (between content chunks; upstream
keepalives and empty deltas don't reset it). Waiting for room in the channel
is the client's slowness, not the upstream's: the timer pauses meanwhile.
"""

from __future__ import annotations

import logging
import math
import random
from dataclasses import dataclass, field
from typing import Any

import orjson
import trio

from server.api.chat_completions import ChatRequest
from server.chunks import MalformedChunk, inspect_chunk
from server.config import RetryPolicy
from server.errors import (
    NoBackendAvailable,
    ShuttingDown,
    SluiceError,
    StreamCut,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from server.limits.retry_policy import counts_against_backend, decide
from server.limits.routing import Route, pick
from server.metrics import Metrics
from server.sse import DONE
from server.stream.channel import ChannelItem, StreamEnd

log = logging.getLogger("sluice.pump")

# After [DONE], how long to keep reading so the connection can be reused.
_DRAIN_SECONDS = 1.0
# The idle timer may fire this share of `idle` early, so it need not move on every chunk.
_REARM_SLACK = 0.01




@dataclass(slots=True)
class PumpStats:
    """What the client has been sent so far; it survives from one attempt to the next."""

    first_content_at: float | None = None
    chunks: int = 0
    finished: bool = False
    # Kept only when a backend of the model can continue a cut (`PumpContext.can_continue`):
    content_chunks: int = 0  # ≈ completion tokens relayed (one token per chunk is the norm)
    tool_calls: bool = False
    text: list[str] = field(default_factory=list)  # content relayed, for a continuation
    served_by: str | None = None  # the backend of the first content chunk
    attempts: int = 0
    continuations: int = 0
    prefill_chunks: int = 0  # content chunks the current continuation was asked to continue

    @property
    def committed(self) -> bool:
        return self.first_content_at is not None


@dataclass(frozen=True, slots=True)
class PumpContext:
    """What the pump needs besides the request; built once per stream by the view."""

    routes: tuple[Route, ...]  # the model's routes, lowest priority first
    policy: RetryPolicy
    queue_timeout: float
    metrics: Metrics
    rng: random.Random
    # Whether a cut could be continued at all; if not, the relayed text is not kept.
    can_continue: bool = field(init=False)

    def __post_init__(self) -> None:
        capable = any(r.backend.settings.continuation == "prefill" for r in self.routes)
        object.__setattr__(self, "can_continue", capable)


async def pump_upstream(
    request: ChatRequest,
    context: PumpContext,
    channel: trio.MemorySendChannel[ChannelItem],
    stats: PumpStats,
    upstream_scope: trio.CancelScope,
) -> None:
    """Relay the request's answer into ``channel``.

    Cancelling ``upstream_scope`` stops the upstream side only (the end of a
    drain does): the stream then ends with an in-band "server shutting down",
    written by the writer in the response's own format.
    """
    with channel:
        with upstream_scope:
            end = await _serve(request, context, channel, stats)
        if upstream_scope.cancelled_caught:
            end = StreamEnd(ShuttingDown())
        if end is not None:
            await channel.send(end)


async def _serve(
    request: ChatRequest,
    context: PumpContext,
    channel: trio.MemorySendChannel[ChannelItem],
    stats: PumpStats,
) -> StreamEnd | None:
    """Attempts until one completes or nothing more may be tried; return how it ended."""
    policy = context.policy
    budget_ends = trio.current_time() + policy.budget
    excluded: set[str] = set()  # backends that failed this request
    route: Route | None = None
    slot_held = False  # a slot of `route` taken while waiting for one
    retries_here = 0
    last_error: SluiceError | None = None
    while True:
        if stats.committed:
            route = _continuation_route(context, excluded, stats)
            if route is None:
                return StreamEnd(last_error)
            stats.continuations += 1
            stats.prefill_chunks = stats.content_chunks
            attempt_request = request.continued("".join(stats.text))
        else:
            if stats.attempts >= policy.max_attempts or trio.current_time() >= budget_ends:
                return StreamEnd(last_error or _exhausted())
            if route is None:
                route, slot_held = await _wait_for_route(context, excluded)
                if route is None:
                    return StreamEnd(last_error or _exhausted(context))
            attempt_request = request
        stats.attempts += 1
        committed_before = stats.committed
        end = await _attempt(route, attempt_request, channel, stats, context,
                             budget_ends, continuing=committed_before, slot_held=slot_held)
        slot_held = False
        if end is None or end.error is None:
            return end  # complete (None: the clean end was sent already)
        error = end.error
        if stats.committed:
            # Cut after the commit point (maybe during a continuation): only a
            # continuation elsewhere may still save the answer. A continuation
            # the backend refused (a 400 "prefill not supported") is not what
            # the client should read: the cut it tried to repair is.
            if last_error is None or counts_against_backend(error):
                last_error = error
            excluded.add(route.name)
            log.info("stream cut after commit via %s: %s", route.name, error.detail)
            continue
        last_error = error
        decision = decide(error, retries_here, policy, context.rng)
        if decision.action == "give_up":
            return StreamEnd(error)
        if decision.action == "retry":
            retries_here += 1
            delay = min(decision.delay, max(0.0, budget_ends - trio.current_time()))
            await trio.sleep(delay)
            if not route.breaker.allow(trio.current_time()):
                excluded.add(route.name)  # it tripped meanwhile
                route, retries_here = None, 0
        else:
            excluded.add(route.name)
            route, retries_here = None, 0


async def _wait_for_route(context: PumpContext,
                          excluded: set[str]) -> tuple[Route | None, bool]:
    """A usable route, and whether a slot of it is already held for the attempt.

    When every usable backend is at its ``max_concurrency``, wait in line for
    the least busy one, up to ``queue_timeout``, and keep the slot we got.
    """
    now = trio.current_time()
    route = pick(context.routes, excluded, now, context.rng)
    if route is not None:
        return route, False
    busy = pick(context.routes, excluded, now, context.rng, need_room=False)
    if busy is None:
        return None, False
    with trio.move_on_after(context.queue_timeout):
        await busy.limiter.acquire()
        return busy, True
    busy.breaker.abandon()  # if `pick` took its half-open probe, give it back
    return None, False


def _continuation_route(context: PumpContext, excluded: set[str],
                        stats: PumpStats) -> Route | None:
    """A backend of this model that can continue a final assistant message, if any may."""
    if stats.tool_calls or stats.finished:
        return None  # tool-call arguments cannot be prefilled; a finished answer needs none
    if stats.continuations >= context.policy.continuation_attempts:
        return None
    capable = [r for r in context.routes if r.backend.settings.continuation == "prefill"]
    return pick(capable, excluded, trio.current_time(), context.rng)


def _exhausted(context: PumpContext | None = None) -> SluiceError:
    error = NoBackendAvailable("No backend is available for this model right now.")
    if context is not None:
        now = trio.current_time()
        waits = [r.breaker.retry_in(now) for r in context.routes if r.breaker.state == "open"]
        error.retry_after = min(waits) if waits else 1.0
    else:
        error.retry_after = 1.0
    return error


async def _attempt(
    route: Route,
    request: ChatRequest,
    channel: trio.MemorySendChannel[ChannelItem],
    stats: PumpStats,
    context: PumpContext,
    budget_ends: float,
    *,
    continuing: bool,
    slot_held: bool,
) -> StreamEnd | None:
    """One upstream request; it holds a slot of its backend for its whole life."""
    metrics = context.metrics
    outcome = "cancelled"
    if not slot_held:
        try:
            route.limiter.acquire_nowait()
        except trio.WouldBlock:
            # Taken since `pick` saw it free (a retry after a sleep, a continuation):
            # wait for it like anyone else, within the queue bound.
            with trio.move_on_after(context.queue_timeout):
                await route.limiter.acquire()
                slot_held = True
            if not slot_held:
                route.breaker.abandon()
                return StreamEnd(_exhausted(context))
    try:
        end = await _relay(route, request, channel, stats, budget_ends, continuing=continuing,
                           keep_text=context.can_continue)
        error = None if end is None else end.error
        outcome = _attempt_outcome(error)
        now = trio.current_time()
        healthy = error is None or not counts_against_backend(error)
        change = route.breaker.record(healthy, now)
        if change is not None:
            metrics.breaker_transitions.labels(route.name, change).inc()
            log.warning("circuit of backend %s is now %s", route.name, change)
        if error is not None:
            log.info("attempt via %s failed: [%s] %s", route.name, error.error_id, error.detail)
        return end
    finally:
        route.limiter.release()
        if outcome == "cancelled":
            route.breaker.abandon()
        metrics.upstream_requests.labels(route.name, outcome).inc()


def _attempt_outcome(error: SluiceError | None) -> str:
    if error is None:
        return "completed"
    if isinstance(error, UpstreamTimeout):
        return "upstream_timeout"
    if not counts_against_backend(error):
        return "rejected"
    return "upstream_error"


async def _relay(
    route: Route,
    request: ChatRequest,
    channel: trio.MemorySendChannel[ChannelItem],
    stats: PumpStats,
    budget_ends: float,
    *,
    continuing: bool,
    keep_text: bool,
) -> StreamEnd | None:
    """Relay one upstream stream; return how it ended, or None if the clean end was sent."""
    timeouts = route.backend.settings.timeouts
    first_chunk = timeouts.first_chunk
    if not continuing:
        first_chunk = min(first_chunk, max(0.0, budget_ends - trio.current_time()))
    timer = trio.CancelScope(deadline=trio.current_time() + first_chunk)
    preamble: list[bytes] = []
    content_here = False
    try:
        with timer:
            async with route.backend.open_stream(request) as payloads:
                async for payload in payloads:
                    if not payload.strip():
                        continue  # `data:` with nothing in it: a keepalive in disguise
                    if payload == DONE:
                        if not content_here and not stats.finished:
                            return StreamEnd(_cut("before any content"))
                        await _flush(preamble, channel, timer)
                        await _send(channel, StreamEnd(), timer)
                        timer.deadline = math.inf  # the stream is complete; only drain now
                        with trio.move_on_after(_DRAIN_SECONDS):
                            async for _ in payloads:
                                pass  # read to the end so the connection can be reused
                        return None
                    facts, chunk = inspect_chunk(payload)
                    if facts.error is not None:
                        return StreamEnd(_in_band_error(facts.error))
                    if facts.content:
                        now = trio.current_time()
                        if not content_here:
                            content_here = True
                            timer.deadline = now + timeouts.idle
                            if stats.first_content_at is None:
                                stats.first_content_at = now
                                stats.served_by = route.name
                                await _flush(preamble, channel, timer)
                        elif now + timeouts.idle - timer.deadline > timeouts.idle * _REARM_SLACK:
                            # Moving a deadline re-sorts trio's deadline heap: at 50 chunks/s
                            # it was 8.6% of the worker's CPU. Re-arm only when it moved
                            # by more than 1% of the idle timeout.
                            timer.deadline = now + timeouts.idle
                        if keep_text:  # only a continuation needs the text so far
                            _note_content(chunk, stats)
                    elif not facts.finished and not _has_usage(chunk):
                        if continuing:
                            continue  # a continuation's own preamble: the client has one
                        if not stats.committed:
                            preamble.append(payload)
                            continue
                    if facts.finished:
                        stats.finished = True
                        await _flush(preamble, channel, timer)
                    if continuing and _has_usage(chunk):
                        payload = _usage_of_whole_answer(chunk, stats)
                    stats.chunks += 1
                    await _send(channel, payload, timer)
    except MalformedChunk as error:
        return StreamEnd(UpstreamUnavailable("The upstream sent a malformed chunk.",
                                             detail=str(error)))
    except SluiceError as error:
        return StreamEnd(error)
    if timer.cancelled_caught:
        if not content_here:
            return StreamEnd(UpstreamTimeout("first_chunk", first_chunk))
        return StreamEnd(UpstreamTimeout("idle", timeouts.idle))
    if stats.finished:
        return StreamEnd()  # complete without [DONE]: we end it properly ourselves
    return StreamEnd(_cut("before its finish_reason"))


def _note_content(chunk: dict[str, Any], stats: PumpStats) -> None:
    """Keep what a continuation needs: the text so far; whether tool calls began."""
    stats.content_chunks += 1
    for choice in chunk.get("choices") or ():
        delta = choice.get("delta") if isinstance(choice, dict) else None
        if not isinstance(delta, dict):
            continue
        if delta.get("tool_calls") or delta.get("function_call"):
            stats.tool_calls = True
        content = delta.get("content")
        if isinstance(content, str):
            stats.text.append(content)


def _has_usage(chunk: dict[str, Any]) -> bool:
    return isinstance(chunk.get("usage"), dict)


def _usage_of_whole_answer(chunk: dict[str, Any], stats: PumpStats) -> bytes:
    """A continuation's usage counts the prefill as prompt: move it back to completion.

    Exact when the upstream sends one token per content chunk (vLLM, llama.cpp).
    """
    usage = dict(chunk["usage"])
    relayed = stats.prefill_chunks
    if isinstance(usage.get("completion_tokens"), int):
        usage["completion_tokens"] += relayed
    if isinstance(usage.get("prompt_tokens"), int):
        usage["prompt_tokens"] = max(0, usage["prompt_tokens"] - relayed)
    return orjson.dumps({**chunk, "usage": usage})


async def _flush(preamble: list[bytes], channel: trio.MemorySendChannel[ChannelItem],
                 timer: trio.CancelScope) -> None:
    for payload in preamble:
        await _send(channel, payload, timer)
    preamble.clear()


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


def _cut(when: str) -> StreamCut:
    return StreamCut("The upstream stream ended before it was complete.",
                     detail=f"upstream closed the stream {when}")


def _in_band_error(error: dict[str, object]) -> UpstreamUnavailable:
    return UpstreamUnavailable("The upstream model server reported an error mid-stream.",
                               detail=f"upstream error event: {error!r:.500}")
