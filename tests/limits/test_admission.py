"""`Slots`: weighted FIFO admission, with a no-wait fast path."""

from __future__ import annotations

from functools import partial

import pytest
import trio
import trio.testing

from server.limits.admission import Slots


def test_try_acquire_takes_free_slots_and_never_more_than_there_are() -> None:
    slots = Slots(3)
    assert slots.try_acquire(2)
    assert not slots.try_acquire(2)
    assert slots.try_acquire(1)
    assert slots.used == 3
    slots.release(3)
    assert slots.used == 0


async def test_try_acquire_does_not_jump_the_queue() -> None:
    slots = Slots(2)
    assert slots.try_acquire(2)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(slots.acquire, 2)
        await trio.testing.wait_all_tasks_blocked()
        assert slots.waiting == 1
        slots.release(1)
        assert not slots.try_acquire(1)  # one slot is free, but a heavier request waits first
        slots.release(1)  # now the waiter gets both
    assert slots.used == 2 and slots.waiting == 0


async def test_a_cancelled_waiter_leaves_the_line_and_unblocks_those_behind() -> None:
    slots = Slots(2)
    assert slots.try_acquire(1)
    got: list[int] = []

    async def take(weight: int) -> None:
        await slots.acquire(weight)
        got.append(weight)

    async with trio.open_nursery() as nursery:
        heavy = trio.CancelScope()

        async def heavy_waiter() -> None:
            with heavy:
                await take(2)

        nursery.start_soon(heavy_waiter)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(take, 1)
        await trio.testing.wait_all_tasks_blocked()
        assert got == [] and slots.waiting == 2
        heavy.cancel()
    assert got == [1] and slots.used == 2 and slots.waiting == 0


@pytest.mark.parametrize("weight", [1, 2])
async def test_acquire_when_free_takes_at_once(weight: int) -> None:
    slots = Slots(2)
    with trio.fail_after(1):
        await slots.acquire(weight)
    assert slots.used == weight


async def wait_for(slots: Slots, index: int, weight: int, granted: list[int]) -> None:
    await slots.acquire(weight)
    granted.append(index)


GRANTS: list[tuple[str, int, list[int], list[int], list[list[int]]]] = [
    # name, total (all held at first), weights in order of arrival,
    # slots released step by step, who holds a grant after each step
    ("first come, first served", 1, [1, 1, 1], [1, 1, 1], [[0], [0, 1], [0, 1, 2]]),
    ("a heavy head is not overtaken by lighter ones", 3, [3, 1], [1, 1, 1, 3],
     [[], [], [0], [0, 1]]),
    ("one release grants as many as fit", 4, [1, 2, 1, 1], [4, 1],
     [[0, 1, 2], [0, 1, 2, 3]]),
    ("granting stops at the first that does not fit", 4, [1, 3, 1], [2, 2, 1],
     [[0], [0, 1], [0, 1, 2]]),
]


@pytest.mark.parametrize(("total", "weights", "releases", "expected"),
                         [row[1:] for row in GRANTS], ids=[row[0] for row in GRANTS])
async def test_waiters_are_granted_in_order(total: int, weights: list[int],
                                            releases: list[int],
                                            expected: list[list[int]]) -> None:
    slots = Slots(total)
    assert slots.try_acquire(total)
    granted: list[int] = []
    async with trio.open_nursery() as nursery:
        for index, weight in enumerate(weights):
            nursery.start_soon(wait_for, slots, index, weight, granted)
            await trio.testing.wait_all_tasks_blocked()  # arrivals in this order
        seen = []
        for count in releases:
            slots.release(count)
            await trio.testing.wait_all_tasks_blocked()
            seen.append(sorted(granted))
    assert seen == expected
    assert slots.waiting == 0


QUEUE_TIMEOUTS: list[tuple[str, float, float, float | None]] = [
    # name, when the holder releases, the waiter's bound, when the waiter got its slot
    ("a slot freed within the bound is taken at once", 4.0, 10.0, 4.0),
    ("a slot freed at the bound's last moment is too late", 10.0, 10.0, None),
    ("no slot within the bound: give up at the bound", 12.0, 10.0, None),
    ("an hour's bound is kept to the second", 7200.0, 3600.0, None),
    ("a stream that holds its slot for hours", 3 * 3600.0, 4 * 3600.0, 3 * 3600.0),
]


@pytest.mark.parametrize(("release_at", "bound", "granted_at"),
                         [row[1:] for row in QUEUE_TIMEOUTS],
                         ids=[row[0] for row in QUEUE_TIMEOUTS])
async def test_a_wait_is_bounded_by_the_caller(
    autojump_clock: trio.testing.MockClock, release_at: float, bound: float,
    granted_at: float | None,
) -> None:
    slots = Slots(1)
    assert slots.try_acquire(1)
    got: list[float] = []
    gave_up: list[float] = []

    async def holder() -> None:
        await trio.sleep(release_at)
        slots.release(1)

    async def waiter() -> None:
        with trio.move_on_after(bound):
            await slots.acquire(1)
            got.append(trio.current_time())
            slots.release(1)
            return
        gave_up.append(trio.current_time())
        assert slots.waiting == 0  # it left the line as it gave up

    async with trio.open_nursery() as nursery:
        nursery.start_soon(holder)
        nursery.start_soon(waiter)
    assert (got, gave_up) == (([granted_at], []) if granted_at is not None else ([], [bound]))
    assert slots.used == 0 and slots.waiting == 0


async def test_a_waiter_cancelled_mid_line_keeps_the_order_of_the_rest() -> None:
    slots = Slots(1)
    assert slots.try_acquire(1)
    granted: list[int] = []
    middle = trio.CancelScope()

    async def leaves() -> None:
        with middle:
            await wait_for(slots, 1, 1, granted)

    async with trio.open_nursery() as nursery:
        for task in (partial(wait_for, slots, 0, 1, granted), leaves,
                     partial(wait_for, slots, 2, 1, granted)):
            nursery.start_soon(task)
            await trio.testing.wait_all_tasks_blocked()
        middle.cancel("client gone")
        await trio.testing.wait_all_tasks_blocked()
        assert slots.waiting == 2
        for _ in range(2):
            slots.release(1)
            await trio.testing.wait_all_tasks_blocked()
    assert granted == [0, 2] and slots.used == 1


async def test_a_grant_that_races_a_cancel_is_given_back() -> None:
    """Cancelled, then granted before it could run: the slots must not stay taken."""
    slots = Slots(2)
    assert slots.try_acquire(2)
    scope = trio.CancelScope()
    granted: list[int] = []

    async def doomed() -> None:
        with scope:
            await slots.acquire(2)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(doomed)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(wait_for, slots, 1, 1, granted)
        await trio.testing.wait_all_tasks_blocked()
        scope.cancel("client gone")  # the waiter is woken with Cancelled...
        slots.release(2)  # ...but is still first in line: the grant goes to it
        assert slots.used == 2  # granted to the cancelled waiter, for now
    assert scope.cancelled_caught
    assert granted == [1]  # it gave both back, so the one behind it got its slot
    assert slots.used == 1 and slots.waiting == 0
