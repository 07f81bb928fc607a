"""Which backend serves the next attempt of a request.

A `Route` is a backend plus what Sluice knows of it right now: streams in
flight (its `trio.CapacityLimiter`, sized by ``max_concurrency``) and its
circuit breaker. A model's routes form priority *tiers*: the lowest tier with
a usable route is used; higher tiers are the fail-over order.

Within a tier the strategy is **least in-flight, ties broken by weight**
(weighted random among the least busy). With streams that last seconds to
minutes, in-flight count is the load signal that matters — a backend busy
with long generations answers new requests slower — while weights still
split an idle tier in proportion. Round-robin or pure weighted random would
keep sending new streams to a backend that is still holding many.

    route = pick(routes, excluded, now, rng)     # None: nothing usable
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import trio

from server.backends.base import Backend
from server.config import BreakerSettings
from server.limits.breaker import CircuitBreaker


@dataclass(eq=False)
class Route:
    backend: Backend
    breaker: CircuitBreaker
    limiter: trio.CapacityLimiter = field(init=False)

    def __post_init__(self) -> None:
        limit = self.backend.settings.max_concurrency
        self.limiter = trio.CapacityLimiter(math.inf if limit is None else limit)

    @property
    def name(self) -> str:
        return self.backend.settings.name

    @property
    def in_flight(self) -> int:
        return int(self.limiter.borrowed_tokens)

    @property
    def has_room(self) -> bool:
        return self.limiter.available_tokens >= 1


def make_routes(backends: Iterable[Backend], breaker: BreakerSettings) -> tuple[Route, ...]:
    return tuple(Route(b, CircuitBreaker(breaker)) for b in backends)


def candidates(routes: Sequence[Route], model: str) -> tuple[Route, ...]:
    """The routes serving ``model``, lowest priority first (stable: config order)."""
    serving = [r for r in routes if r.backend.settings.serves(model)]
    return tuple(sorted(serving, key=lambda r: r.backend.settings.priority))


def least_busy(tier: Sequence[Route], rng: random.Random) -> Route:
    """Least in-flight; among equals, a weighted random choice."""
    fewest = min(r.in_flight for r in tier)
    idle = [r for r in tier if r.in_flight == fewest]
    if len(idle) == 1:
        return idle[0]
    return rng.choices(idle, weights=[r.backend.settings.weight for r in idle])[0]


def pick(routes: Sequence[Route], excluded: set[str], now: float, rng: random.Random,
         *, need_room: bool = True) -> Route | None:
    """The route for the next attempt: first usable tier, least busy within it.

    A route is usable when it is not excluded (it failed this request), its
    breaker lets a request through and, with ``need_room``, it has a free
    concurrency slot. The chosen route's breaker is asked last: in half-open
    state, asking *is* taking the single probe.
    """
    by_tier: dict[int, list[Route]] = {}
    for route in routes:
        if route.name in excluded or (need_room and not route.has_room):
            continue
        if route.breaker.state == "open" and route.breaker.retry_in(now) > 0:
            continue
        by_tier.setdefault(route.backend.settings.priority, []).append(route)
    for priority in sorted(by_tier):
        tier = by_tier[priority]
        while tier:
            route = least_busy(tier, rng)
            if route.breaker.allow(now):
                return route
            tier.remove(route)  # half-open with its probe already out
    return None
