"""Admission control: slots held for a stream's whole life, and a bounded wait for one.

`Slots` is a weighted, first-come-first-served semaphore: a streaming request
may hold more slots than a buffered one (it holds them far longer). A slot is
taken before any upstream call and released in the ``finally`` of the
stream that holds it — however the stream ends, cancellation before the
first chunk included. The wait is bounded by the caller
(`trio.move_on_after`) and becomes a 429 with Retry-After instead of a hang.

    slots = Slots(total=1000)
    if slots.try_acquire(weight):     # free: no wait, no timer, no trip through the scheduler
        held = weight
    else:
        with trio.move_on_after(queue_timeout):
            await slots.acquire(weight)
            held = weight
    try: ...
    finally: slots.release(held)      # `server.stream.nursery.serve_stream` does exactly this
"""

from __future__ import annotations

from collections import deque

import trio


class Slots:
    def __init__(self, total: int) -> None:
        self.total = total
        self.used = 0
        self._waiters: deque[tuple[int, trio.Event]] = deque()

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    def try_acquire(self, weight: int) -> bool:
        """Take ``weight`` slots if they are free and nobody is waiting; never waits."""
        if self._waiters or self.used + weight > self.total:
            return False
        self.used += weight
        return True

    async def acquire(self, weight: int) -> None:
        """Take ``weight`` slots, waiting in line (FIFO) if they are not free."""
        # Checkpoint *before* taking, never after: a cancel delivered after
        # `used` grew would leave slots taken that nobody holds. (The
        # 1,000-random-cuts test found exactly that.)
        await trio.lowlevel.checkpoint_if_cancelled()
        if self.try_acquire(weight):
            await trio.lowlevel.cancel_shielded_checkpoint()
            return
        entry = (weight, trio.Event())
        self._waiters.append(entry)
        try:
            await entry[1].wait()
        except BaseException:
            if entry[1].is_set():
                self.release(weight)  # granted just as we were cancelled: give it back
            else:
                self._waiters.remove(entry)
                self._grant()  # a heavy waiter leaving may unblock lighter ones behind it
            raise

    def release(self, weight: int) -> None:
        self.used -= weight
        self._grant()

    def _grant(self) -> None:
        while self._waiters and self.used + self._waiters[0][0] <= self.total:
            weight, event = self._waiters.popleft()
            self.used += weight
            event.set()
