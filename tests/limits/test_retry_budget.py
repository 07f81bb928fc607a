"""The retry budget: re-requests bounded by a share of recent requests plus a floor.

Virtual time (`autojump_clock`): the budget is fed `trio.current_time()`, as the pump does.
"""

from __future__ import annotations

import trio

from server.limits.retry_budget import RetryBudget


def spend_all(budget: RetryBudget, now: float) -> int:
    spent = 0
    while budget.withdraw(now):
        spent += 1
    return spent


async def test_retries_are_a_share_of_requests_plus_the_floor(autojump_clock: object) -> None:
    budget = RetryBudget(ratio=0.2, min_per_second=0.1, window=10.0)
    for _ in range(20):
        budget.deposit(trio.current_time())
    # 20 requests x 0.2 + 0.1/s x 10 s = 5 re-requests, then none.
    assert spend_all(budget, trio.current_time()) == 5
    assert not budget.withdraw(trio.current_time())


async def test_with_no_traffic_only_the_floor_remains(autojump_clock: object) -> None:
    budget = RetryBudget(ratio=0.2, min_per_second=0.3, window=10.0)
    assert spend_all(budget, trio.current_time()) == 3


async def test_requests_and_retries_leave_the_window(autojump_clock: object) -> None:
    budget = RetryBudget(ratio=0.5, min_per_second=0.0, window=10.0)
    for _ in range(4):
        budget.deposit(trio.current_time())
    assert spend_all(budget, trio.current_time()) == 2
    await trio.sleep(5)
    for _ in range(2):
        budget.deposit(trio.current_time())
    assert spend_all(budget, trio.current_time()) == 1  # 6 requests, 2 spent: 1 more
    await trio.sleep(5.5)  # the first four requests and the first two retries expired
    assert budget.available(trio.current_time()) == 0.5 * 2 - 1
    await trio.sleep(10)  # everything expired
    assert budget.available(trio.current_time()) == 0
    budget.deposit(trio.current_time())
    budget.deposit(trio.current_time())
    assert spend_all(budget, trio.current_time()) == 1


async def test_a_refused_withdrawal_charges_nothing(autojump_clock: object) -> None:
    budget = RetryBudget(ratio=0.0, min_per_second=0.1, window=10.0)
    assert budget.withdraw(trio.current_time())
    for _ in range(5):
        assert not budget.withdraw(trio.current_time())
    await trio.sleep(10.01)
    assert budget.withdraw(trio.current_time())  # the floor is back, not owed
