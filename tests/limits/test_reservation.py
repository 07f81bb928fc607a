"""server/limits/reservation.py: a backend's slot and probe for one attempt, in virtual time.

Every test runs on trio's autojump clock (`trio.testing.MockClock` with
``autojump_threshold=0``): waits in line and breaker cooldowns take no real
time, and the times asserted are exact. Routes are real: simulated backends
with their concurrency limits and circuit breakers.
"""

from __future__ import annotations

import random

import pytest
import trio
import trio.testing

from server.backends.simulated import SimulatedBackend
from server.backends.upstream_errors import status_error
from server.config import BackendSettings, BreakerSettings
from server.errors import UpstreamUnavailable
from server.limits.reservation import no_backend, reserve
from server.limits.routing import Route, make_routes

COOLDOWN = 30.0
QUEUE = 5.0


def routes(*, primary_slots: int | None = 2, fallback_slots: int | None = 2) -> tuple[Route, ...]:
    """A primary (priority 0) and a fallback (priority 1); one failure opens a circuit."""
    def backend(name: str, priority: int, slots: int | None) -> SimulatedBackend:
        return SimulatedBackend(BackendSettings(name=name, kind="simulated", models=("*",),
                                                priority=priority, max_concurrency=slots))

    return make_routes([backend("primary", 0, primary_slots),
                        backend("fallback", 1, fallback_slots)],
                       BreakerSettings(consecutive_failures=1, cooldown=COOLDOWN))


async def name_of(model: tuple[Route, ...], excluded: frozenset[str] = frozenset(),
                  queue_timeout: float = QUEUE, prefer: str | None = None) -> str | None:
    """Which route a reservation gets (given back at once, no outcome recorded)."""
    async with reserve(model, set(excluded), random.Random(1), queue_timeout=queue_timeout,
                       prefer=prefer) as reservation:
        return None if reservation is None else reservation.route.name


async def held(nursery: trio.Nursery, model: tuple[Route, ...], release: trio.Event,
               excluded: frozenset[str] = frozenset()) -> str | None:
    """Reserve in a task of its own, kept until ``release`` is set; which route it got."""
    taken: list[str | None] = []

    async def hold() -> None:
        async with reserve(model, set(excluded), random.Random(1), queue_timeout=QUEUE) as got:
            taken.append(None if got is None else got.route.name)
            await release.wait()

    nursery.start_soon(hold)
    await trio.testing.wait_all_tasks_blocked()
    return taken[0]


def trip(route: Route) -> None:
    route.breaker.record(False, trio.current_time())
    assert route.breaker.state == "open"


# ------------------------------------------------------------------ slots


async def test_the_first_tier_is_reserved_and_its_slot_given_back(
        autojump_clock: trio.testing.MockClock) -> None:
    model = routes()
    async with reserve(model, set(), random.Random(1), queue_timeout=QUEUE) as reservation:
        assert reservation is not None and reservation.route.name == "primary"
        assert (model[0].in_flight, model[1].in_flight) == (1, 0)
    assert (model[0].in_flight, model[1].in_flight) == (0, 0)


async def test_the_slot_is_given_back_however_the_attempt_ends(
        autojump_clock: trio.testing.MockClock) -> None:
    model = routes()
    with pytest.raises(ValueError, match="a bug"):
        async with reserve(model, set(), random.Random(1), queue_timeout=QUEUE):
            raise ValueError("a bug")
    with trio.move_on_after(1):
        async with reserve(model, set(), random.Random(1), queue_timeout=QUEUE):
            await trio.sleep_forever()  # the client left
    assert model[0].in_flight == 0


async def test_an_excluded_route_is_not_reserved(autojump_clock: trio.testing.MockClock) -> None:
    model = routes()
    assert await name_of(model, frozenset({"primary"})) == "fallback"
    assert await name_of(model, frozenset({"primary", "fallback"})) is None


async def test_a_full_first_tier_fails_over_to_the_next(
        autojump_clock: trio.testing.MockClock) -> None:
    model = routes(primary_slots=1)
    release = trio.Event()
    async with trio.open_nursery() as nursery:
        assert await held(nursery, model, release) == "primary"
        assert await name_of(model) == "fallback"
        release.set()


async def test_when_all_are_full_it_waits_in_line_for_the_least_busy(
        autojump_clock: trio.testing.MockClock) -> None:
    model = routes(primary_slots=1, fallback_slots=1)
    first, second = trio.Event(), trio.Event()
    async with trio.open_nursery() as nursery:
        assert await held(nursery, model, first) == "primary"
        assert await held(nursery, model, second) == "fallback"
        started = trio.current_time()
        nursery.start_soon(_set_after, 3.0, first)
        assert await name_of(model) == "primary"  # the primary's slot, as soon as it was free
        assert trio.current_time() - started == 3.0
        second.set()


async def test_the_wait_in_line_ends_at_queue_timeout(
        autojump_clock: trio.testing.MockClock) -> None:
    model = routes(primary_slots=1, fallback_slots=1)
    release = trio.Event()
    async with trio.open_nursery() as nursery:
        assert await held(nursery, model, release) == "primary"
        assert await held(nursery, model, release) == "fallback"
        started = trio.current_time()
        assert await name_of(model) is None
        assert trio.current_time() - started == QUEUE
        assert await name_of(model, queue_timeout=0) is None  # 0: no wait at all
        assert trio.current_time() - started == QUEUE
        release.set()
    assert model[0].in_flight == model[1].in_flight == 0


# ------------------------------------------------------------------ breakers and probes


async def test_an_open_circuit_is_skipped_then_probed_after_its_cooldown(
        autojump_clock: trio.testing.MockClock) -> None:
    model = routes()
    trip(model[0])
    assert await name_of(model) == "fallback"
    await trio.sleep(COOLDOWN)
    async with reserve(model, set(), random.Random(1), queue_timeout=QUEUE) as probe:
        assert probe is not None and probe.route.name == "primary" and probe.probe
        assert await name_of(model) == "fallback"  # one probe at a time
        assert probe.record(None, trio.current_time()) == "closed"
    async with reserve(model, set(), random.Random(1), queue_timeout=QUEUE) as again:
        assert again is not None and again.route.name == "primary" and not again.probe


async def test_a_probe_without_an_outcome_is_given_back(
        autojump_clock: trio.testing.MockClock) -> None:
    model = routes()
    trip(model[0])
    await trio.sleep(COOLDOWN)
    assert await name_of(model) == "primary"  # the probe, left without an outcome...
    assert await name_of(model) == "primary"  # ...so the next request probes instead
    assert model[0].breaker.state == "half_open"  # and nothing was recorded


async def test_an_attempt_that_never_ran_records_no_outcome(
        autojump_clock: trio.testing.MockClock) -> None:
    model = routes()
    assert await name_of(model) == "primary"
    assert model[0].breaker.state == "closed"  # one failure would have opened it
    async with reserve(model, set(), random.Random(1), queue_timeout=QUEUE) as failed:
        assert failed is not None
        assert failed.record(UpstreamUnavailable("reset"), trio.current_time()) == "open"


async def test_a_relayed_request_error_does_not_count_against_the_backend(
        autojump_clock: trio.testing.MockClock) -> None:
    model = routes()
    refused = status_error(400, b'{"error": {"message": "context too long"}}', None, secrets=())
    async with reserve(model, set(), random.Random(1), queue_timeout=QUEUE) as reservation:
        assert reservation is not None
        assert reservation.record(refused, trio.current_time()) is None
    assert model[0].breaker.state == "closed"


async def test_a_reservation_without_the_probe_leaves_anothers_probe_alone(
        autojump_clock: trio.testing.MockClock) -> None:
    model = routes()
    early, probing = trio.Event(), trio.Event()
    async with trio.open_nursery() as nursery:
        assert await held(nursery, model, early) == "primary"  # before the trip
        trip(model[0])
        await trio.sleep(COOLDOWN)
        assert await held(nursery, model, probing) == "primary"  # the probe
        early.set()  # the early one ends without an outcome...
        await trio.testing.wait_all_tasks_blocked()
        assert await name_of(model) == "fallback"  # ...and the probe is still out
        probing.set()


async def test_a_probe_waiting_in_line_is_given_back_when_the_wait_ends(
        autojump_clock: trio.testing.MockClock) -> None:
    model = routes(primary_slots=1)
    release = trio.Event()
    async with trio.open_nursery() as nursery:
        await held(nursery, model, release)
        trip(model[0])
        await trio.sleep(COOLDOWN)
        fallback_out = frozenset({"fallback"})
        assert await name_of(model, fallback_out) is None  # took the probe, waited, gave up
        with trio.move_on_after(1):
            await name_of(model, fallback_out)  # took the probe, then the client left
        assert model[0].breaker.allow(trio.current_time())  # the probe is free
        release.set()


async def test_nothing_reservable_says_when_to_retry(
        autojump_clock: trio.testing.MockClock) -> None:
    model = routes()
    now = trio.current_time()
    assert no_backend(model, now).retry_after == 1.0
    trip(model[0])
    assert no_backend(model, now + 10).retry_after == COOLDOWN - 10
    assert no_backend(model, now).status == 503


# ------------------------------------------------------------------ a retry's backend


async def test_a_retry_goes_back_to_its_backend(autojump_clock: trio.testing.MockClock) -> None:
    model = routes()
    assert await name_of(model, prefer="fallback") == "fallback"  # though the primary is free


async def test_a_retry_whose_backend_tripped_goes_elsewhere(
        autojump_clock: trio.testing.MockClock) -> None:
    model = routes()
    trip(model[1])
    assert await name_of(model, prefer="fallback") == "primary"


async def test_a_retry_waits_for_its_backends_slot(
        autojump_clock: trio.testing.MockClock) -> None:
    model = routes(fallback_slots=1)
    release = trio.Event()
    async with trio.open_nursery() as nursery:
        assert await held(nursery, model, release, frozenset({"primary"})) == "fallback"
        started = trio.current_time()
        nursery.start_soon(_set_after, 2.0, release)
        assert await name_of(model, prefer="fallback") == "fallback"
        assert trio.current_time() - started == 2.0
        assert await name_of(model, prefer="fallback") == "fallback"


async def _set_after(seconds: float, event: trio.Event) -> None:
    await trio.sleep(seconds)
    event.set()


async def test_a_last_resort_route_is_taken_only_when_nothing_else_is(
    autojump_clock: trio.testing.MockClock,
) -> None:
    model = routes()

    async def name(excluded: set[str], last: set[str]) -> str | None:
        async with reserve(model, excluded, random.Random(1), queue_timeout=0,
                           last_resort=last) as reservation:
            return None if reservation is None else reservation.route.name

    # The primary cut the answer: the fallback continues it if it can...
    assert await name({"primary"}, {"primary"}) == "fallback"
    # ...and when the fallback is out too, the primary is asked after all.
    assert await name({"primary", "fallback"}, {"primary"}) == "primary"
    assert await name({"primary", "fallback"}, set()) is None
