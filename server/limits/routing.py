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

A breaker exists to route *around* a failing backend, never to be the
outage: when the circuit of every route a request may still use refuses it
(the common deployment has one backend per model; a model server restarting
answers 503 a few times), the request goes anyway — **panic routing**, after
Envoy's panic threshold — to the route whose cooldown ends first. Its
outcome then counts like a probe's: a success closes the circuit.

    route = pick(routes, excluded, now, rng)     # None: nothing usable

The ``latency`` strategy (a model's ``strategy = "latency"``) chooses within
a tier the route with the lowest exponentially weighted first-token time
(`server.limits.latency`) instead: for backends of different speeds, where
least-busy would share the traffic evenly. A route never measured is tried
first, and one request in ``EXPLORE`` goes to a random route of the tier,
so a backend that was slow and recovered is seen again.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import trio

from server.backends.base import Backend
from server.config import BreakerSettings, RetryPolicy, Strategy
from server.limits.breaker import CircuitBreaker
from server.limits.latency import FirstTokenStats
from server.limits.retry_budget import RetryBudget

log = logging.getLogger("sluice.routing")

EXPLORE = 0.05  # with the latency strategy, the share of picks made at random in the tier


@dataclass(eq=False)
class Route:
    backend: Backend
    breaker: CircuitBreaker
    limiter: trio.CapacityLimiter = field(init=False)
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    panic_routes: int = field(default=0, init=False)  # requests sent although its circuit refused
    # What this backend's failures may cost in re-requests, and its hedges (retry_budget).
    retry_budget: RetryBudget = field(init=False)
    hedge_budget: RetryBudget = field(init=False)
    first_token: FirstTokenStats = field(default_factory=FirstTokenStats, init=False)
    # Until when a declared prefill continuation is not asked of it (it refused one).
    prefill_refused_until: float = field(default=-math.inf, init=False)

    def __post_init__(self) -> None:
        limit = self.backend.settings.max_concurrency
        self.limiter = trio.CapacityLimiter(math.inf if limit is None else limit)
        retry = self.retry
        self.retry_budget = RetryBudget(ratio=retry.budget_ratio,
                                        min_per_second=retry.budget_min_per_second,
                                        window=retry.budget_window)
        self.hedge_budget = RetryBudget(ratio=retry.hedge_share,
                                        min_per_second=retry.budget_min_per_second,
                                        window=retry.budget_window)

    @property
    def name(self) -> str:
        return self.backend.settings.name

    @property
    def in_flight(self) -> int:
        return int(self.limiter.borrowed_tokens)

    @property
    def has_room(self) -> bool:
        return self.limiter.available_tokens >= 1


def make_routes(backends: Iterable[Backend], breaker: BreakerSettings,
                retry: RetryPolicy | None = None) -> tuple[Route, ...]:
    retry = RetryPolicy() if retry is None else retry
    return tuple(Route(b, CircuitBreaker(breaker), retry) for b in backends)


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


def fastest(tier: Sequence[Route], rng: random.Random) -> Route:
    """Lowest average first-token time; unmeasured routes first; sometimes one at random."""
    if len(tier) > 1 and rng.random() < EXPLORE:
        return rng.choice(tier)
    unmeasured = [r for r in tier if r.first_token.ewma is None]
    if unmeasured:
        return least_busy(unmeasured, rng)
    return min(tier, key=lambda r: r.first_token.ewma or 0.0)


def pick(routes: Sequence[Route], excluded: set[str], now: float, rng: random.Random,
         *, need_room: bool = True, strategy: Strategy = "least_busy") -> Route | None:
    """The route for the next attempt: first usable tier, least busy within it.

    A route is usable when it is not excluded (it failed this request), its
    breaker lets a request through and, with ``need_room``, it has a free
    concurrency slot. The chosen route's breaker is asked last: in half-open
    state, asking *is* taking the single probe. When every route not excluded
    is refused by its breaker, the one whose cooldown ends first is chosen
    anyway (panic routing; see the module docstring).
    """
    eligible = [r for r in routes if r.name not in excluded]
    by_tier: dict[int, list[Route]] = {}
    for route in eligible:
        if not route.breaker.blocks(now) and (route.has_room or not need_room):
            by_tier.setdefault(route.backend.settings.priority, []).append(route)
    if by_tier:
        tier = by_tier[min(by_tier)]
        route = fastest(tier, rng) if strategy == "latency" else least_busy(tier, rng)
        route.breaker.allow(now)  # it does not block, so this says yes (and may take the probe)
        return route
    if eligible and all(r.breaker.blocks(now) for r in eligible):
        return _panic(eligible, now, rng, need_room=need_room)
    return None


def _panic(blocked: list[Route], now: float, rng: random.Random, *,
           need_room: bool) -> Route | None:
    """Every route's circuit refuses: take the one whose cooldown ends first, anyway."""
    roomy = [r for r in blocked if r.has_room or not need_room]
    if not roomy:
        return None
    soonest = min(r.breaker.retry_in(now) for r in roomy)
    first = [r for r in roomy if r.breaker.retry_in(now) == soonest]
    top = min(r.backend.settings.priority for r in first)
    route = least_busy([r for r in first if r.backend.settings.priority == top], rng)
    route.panic_routes += 1
    if route.breaker.let_through():
        log.warning("every backend for this request has its circuit open: routing to %s "
                    "anyway until one closes (panic routing)", route.name)
    return route
