"""Routing as tables: which backend serves the next attempt.

A route is written as a short spec, ``"a p=1 w=2 busy=1 cap=2 open=90 probe"``:
its name, then its priority tier (``p``), weight (``w``), streams in flight
(``busy``), ``max_concurrency`` (``cap``), the time its circuit opened
(``open``, cooldown 30 s) and whether its half-open probe is out (``probe``).
Every row is judged at `NOW`.
"""

from __future__ import annotations

import random
from collections import Counter

import pytest

from server.backends.simulated import SimulatedBackend
from server.config import BackendSettings, BreakerSettings
from server.limits.routing import Route, candidates, least_busy, make_routes, pick

NOW = 100.0
BREAKER = BreakerSettings(consecutive_failures=1, cooldown=30.0)


def route(spec: str, models: tuple[str, ...] = ("*",)) -> Route:
    name, *items = spec.split()
    fields = dict(item.partition("=")[::2] for item in items)
    cap = fields.get("cap")
    settings = BackendSettings(name=name, kind="simulated", models=models,
                               priority=int(fields.get("p", 0)),
                               weight=float(fields.get("w", 1)),
                               max_concurrency=None if cap is None else int(cap))
    (made,) = make_routes([SimulatedBackend(settings)], BREAKER)
    for _ in range(int(fields.get("busy", 0))):
        made.limiter.acquire_on_behalf_of_nowait(object())
    if "open" in fields:
        made.breaker.record(False, float(fields["open"]))
    if "probe" in fields:
        assert made.breaker.allow(NOW)  # the cooldown is over: this takes the probe
    return made


PICKS: list[tuple[str, list[str], set[str], bool, str | None]] = [
    # name, routes, excluded, need_room, expected
    ("the lowest tier wins", ["a p=1", "b p=0", "c p=2"], set(), True, "b"),
    ("a route that failed this request is skipped", ["a p=0", "b p=1"], {"a"}, True, "b"),
    ("an open route is skipped", ["a p=0 open=90", "b p=1"], set(), True, "b"),
    ("a full route is skipped when room is needed",
     ["a p=0 cap=1 busy=1", "b p=1"], set(), True, "b"),
    ("a full route may be waited for", ["a p=0 cap=1 busy=1", "b p=1"], set(), False, "a"),
    ("the least busy of a tier", ["a busy=2", "b busy=1", "c busy=3"], set(), True, "b"),
    ("a busy first tier still beats an idle second", ["a p=0 busy=9", "b p=1"], set(), True, "a"),
    ("a route whose cooldown is over is probed", ["a p=0 open=70", "b p=1"], set(), True, "a"),
    ("a half-open route with its probe out is skipped",
     ["a p=0 open=70 probe", "b p=1"], set(), True, "b"),
    ("the next tier when a whole tier is open",
     ["a p=0 open=90", "b p=0 open=95", "c p=1 busy=4"], set(), True, "c"),
    ("every route failed this request", ["a", "b"], {"a", "b"}, True, None),
    ("every route full", ["a cap=1 busy=1", "b cap=2 busy=2"], set(), True, None),
    # Panic routing: every route not excluded is refused by its breaker.
    ("the only backend, open, is routed to anyway", ["a open=90"], set(), True, "a"),
    ("every route open: the one whose cooldown ends first",
     ["a p=0 open=90", "b p=1 open=80", "c p=0 open=85"], set(), True, "b"),
    ("the open route left when the others failed this request",
     ["a p=0 open=80", "b p=1 open=90"], {"a"}, True, "b"),
    ("a half-open route with its probe out comes first",
     ["a p=0 open=90", "b p=1 open=70 probe"], set(), True, "b"),
    ("equal cooldowns: the lower tier", ["a p=1 open=90", "b p=0 open=90"], set(), True, "b"),
    ("equal cooldowns in one tier: the less busy",
     ["a open=90 busy=2", "b open=90 busy=1"], set(), True, "b"),
    ("no panic while a healthy route is only full: it is waited for",
     ["a p=0 open=90", "b p=1 cap=1 busy=1"], set(), True, None),
    ("...and then the full healthy route is the one",
     ["a p=0 open=90", "b p=1 cap=1 busy=1"], set(), False, "b"),
    ("a panic route needs room too", ["a open=90 cap=1 busy=1", "b open=80 cap=1 busy=1"],
     set(), True, None),
    ("...unless the caller will wait", ["a open=90 cap=1 busy=1", "b open=80 cap=1 busy=1"],
     set(), False, "b"),
    ("a panic route with room over one without",
     ["a open=90", "b open=80 cap=1 busy=1"], set(), True, "a"),
]


@pytest.mark.parametrize(("specs", "excluded", "need_room", "expected"),
                         [row[1:] for row in PICKS], ids=[row[0] for row in PICKS])
def test_pick(specs: list[str], excluded: set[str], need_room: bool,
              expected: str | None) -> None:
    routes = [route(spec) for spec in specs]
    chosen = pick(routes, excluded, NOW, random.Random(1), need_room=need_room)
    assert (chosen.name if chosen else None) == expected


def test_picking_a_route_past_its_cooldown_takes_its_one_probe() -> None:
    routes = [route("a p=0 open=70"), route("b p=1")]
    first = pick(routes, set(), NOW, random.Random(1))
    second = pick(routes, set(), NOW, random.Random(1))
    assert first is not None and second is not None
    assert (first.name, first.breaker.state, second.name) == ("a", "half_open", "b")


def test_panic_routing_is_counted_and_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    routes = [route("a p=0 open=90"), route("b p=1 open=95")]
    for _ in range(3):
        chosen = pick(routes, set(), NOW, random.Random(1))
        assert chosen is routes[0]
    assert [r.panic_routes for r in routes] == [3, 0]
    warnings = [r.getMessage() for r in caplog.records if r.name == "sluice.routing"]
    assert len(warnings) == 1 and "routing to a anyway" in warnings[0]


def test_a_panic_routed_success_closes_the_circuit_and_routing_is_normal_again() -> None:
    routes = [route("a p=0 open=90"), route("b p=1 open=95")]
    chosen = pick(routes, set(), NOW, random.Random(1))
    assert chosen is routes[0]
    assert chosen.breaker.record(True, NOW + 1) == "closed"
    assert pick(routes, set(), NOW + 1, random.Random(1)) is routes[0]
    assert routes[0].panic_routes == 1  # the second pick was an ordinary one


def test_least_busy_splits_an_idle_tier_by_weight() -> None:
    tier = [route("a w=1"), route("b w=3")]
    rng = random.Random(1)
    shares = Counter(least_busy(tier, rng).name for _ in range(4000))
    assert 0.72 < shares["b"] / 4000 < 0.78


def test_least_busy_prefers_fewer_in_flight_over_weight() -> None:
    tier = [route("a w=100 busy=1"), route("b w=1")]
    rng = random.Random(1)
    assert {least_busy(tier, rng).name for _ in range(100)} == {"b"}


def test_candidates_serve_the_model_lowest_tier_first_in_config_order() -> None:
    routes = [route("a p=1", ("x",)), route("b p=0"), route("c p=0", ("y",)),
              route("d p=0", ("x", "y")), route("e p=1")]
    assert [r.name for r in candidates(routes, "x")] == ["b", "d", "a", "e"]
    assert [r.name for r in candidates(routes, "y")] == ["b", "c", "d", "e"]
    assert [r.name for r in candidates(routes, "z")] == ["b", "e"]


def test_in_flight_and_room_follow_the_limiter() -> None:
    made = route("a cap=2 busy=1")
    assert (made.in_flight, made.has_room) == (1, True)
    made.limiter.acquire_on_behalf_of_nowait(object())
    assert (made.in_flight, made.has_room) == (2, False)


# ------------------------------------------------------------- the latency strategy


def latency_pick(routes: list[Route], rng: random.Random) -> str | None:
    chosen = pick(routes, set(), NOW, rng, strategy="latency")
    return None if chosen is None else chosen.name


def test_the_latency_strategy_prefers_the_fastest_first_token() -> None:
    fast, slow, later = route("fast"), route("slow"), route("later p=1")
    for seconds in (0.2, 0.1, 0.1):
        fast.first_token.add(seconds)
    slow.first_token.add(0.5)
    later.first_token.add(0.01)  # a faster backend in a later tier: tiers still come first
    picks = [latency_pick([slow, fast, later], random.Random(seed)) for seed in range(200)]
    assert set(picks) == {"fast", "slow"}
    assert 180 <= picks.count("fast") < 200  # the rest is exploration (5 %, half of it "fast")


def test_an_unmeasured_route_is_tried_first() -> None:
    measured, fresh = route("measured"), route("fresh")
    measured.first_token.add(0.01)
    picks = {latency_pick([measured, fresh], random.Random(seed)) for seed in range(20)}
    assert "fresh" in picks


def test_a_backend_that_slows_down_loses_the_traffic() -> None:
    a, b = route("a"), route("b")
    a.first_token.add(0.1)
    b.first_token.add(0.3)
    rng = random.Random(3)
    assert latency_pick([a, b], random.Random(0)) == "a"
    for _ in range(3):
        a.first_token.add(0.6)  # it slowed down: its average follows in a few requests
    assert a.first_token.ewma is not None and a.first_token.ewma > 0.3
    assert latency_pick([a, b], rng) == "b"


def test_a_busy_tier_still_uses_least_busy_by_default() -> None:
    a, b = route("a busy=2"), route("b")
    a.first_token.add(0.01)
    b.first_token.add(5.0)
    chosen = pick([a, b], set(), NOW, random.Random(1))
    assert chosen is not None and chosen.name == "b"
