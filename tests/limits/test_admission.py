"""`Slots`: weighted FIFO admission, with a no-wait fast path."""

from __future__ import annotations

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
