"""The limits' arithmetic on plain numbers (times in ms): GCRA and the token bucket."""

from __future__ import annotations

import pytest

from server.limits.quota import Quota, bucket_admits, bucket_reset, gcra, refill


def test_gcra_allows_a_burst_then_one_per_interval() -> None:
    tat, now, steps = None, 1000.0, []
    for _ in range(4):
        step = gcra(tat, now, interval=100, burst=3)
        steps.append((step.allowed, step.remaining, step.retry_after))
        tat = step.tat
    assert steps == [(True, 2, 0), (True, 1, 0), (True, 0, 0), (False, 0, 100)]
    assert gcra(tat, now + 100, 100, 3).allowed  # one interval later: one more


def test_gcra_refused_keeps_the_tat_and_reports_the_reset() -> None:
    full = gcra(1300.0, 1000.0, interval=100, burst=3)  # three in flight at t=1000
    assert not full.allowed and full.tat == 1300.0
    assert full.reset == 300  # until the whole burst is back
    assert full.retry_after == 100


def test_gcra_after_a_long_idle_is_a_whole_burst() -> None:
    step = gcra(500.0, 100_000.0, interval=100, burst=3)
    assert step.allowed and step.remaining == 2 and step.tat == 100_100.0


def test_a_bucket_refills_to_its_capacity() -> None:
    assert refill(None, 0, 5_000, capacity=1000, rate=1) == 1000  # new: full
    assert refill(100, 0, 50, capacity=1000, rate=1) == 150
    assert refill(-500, 0, 100_000, capacity=1000, rate=1) == 1000
    assert refill(100, 50, 10, capacity=1000, rate=1) == 100  # a clock that went back


@pytest.mark.parametrize(("level", "cost", "expected"), [
    (1000, 5000, (True, 0.0)),  # larger than the bucket: runs when it is full
    (999, 5000, (False, 1.0)),
    (300, 300, (True, 0.0)),
    (-100, 1, (False, 101.0)),  # in debt
])
def test_a_reservation_needs_its_cost_or_a_full_bucket(
        level: float, cost: float, expected: tuple[bool, float]) -> None:
    assert bucket_admits(level, cost, capacity=1000, rate=1) == expected


def test_bucket_reset() -> None:
    assert bucket_reset(400, capacity=1000, rate=2) == 300
    assert bucket_reset(1000, capacity=1000, rate=2) == 0


def test_quota_defaults() -> None:
    assert Quota().unlimited
    assert not Quota(max_streams=1).unlimited
    assert Quota(rpm=60).request_burst == 60  # a minute's worth
    assert Quota(rpm=0.5).request_burst == 1
    assert Quota(rpm=60, burst=5).request_burst == 5
