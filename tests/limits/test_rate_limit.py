"""Per-client rate limits: the token bucket's arithmetic, then the limiter over virtual hours."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from server.limits.rate_limit import Bucket, MemoryRateLimiter, take

TAKES: list[tuple[str, Bucket | None, float, Bucket, float | None]] = [
    # name, bucket before, now, bucket after, wait   (rate 0.5/s, burst 4)
    ("a new client starts full", None, 10.0, Bucket(3.0, 10.0), None),
    ("a token is spent", Bucket(2.0, 10.0), 10.0, Bucket(1.0, 10.0), None),
    ("the last token is spent", Bucket(1.0, 10.0), 10.0, Bucket(0.0, 10.0), None),
    ("empty: wait for one token", Bucket(0.0, 10.0), 10.0, Bucket(0.0, 10.0), 2.0),
    ("part of a token: wait for the rest", Bucket(0.5, 10.0), 10.0, Bucket(0.5, 10.0), 1.0),
    ("time refills", Bucket(0.0, 10.0), 12.0, Bucket(0.0, 12.0), None),
    ("refill is linear", Bucket(0.0, 10.0), 11.0, Bucket(0.5, 11.0), 1.0),
    ("refill stops at the burst", Bucket(0.0, 10.0), 3600.0, Bucket(3.0, 3600.0), None),
]


@pytest.mark.parametrize(("before", "now", "after", "wait"), [row[1:] for row in TAKES],
                         ids=[row[0] for row in TAKES])
def test_take(before: Bucket | None, now: float, after: Bucket, wait: float | None) -> None:
    assert take(before, now, rate=0.5, burst=4.0) == (after, wait)


async def allowed_in(limiter: MemoryRateLimiter, key: str, seconds: float,
                     every: float) -> int:
    """Ask once every ``every`` seconds for ``seconds``; count the requests allowed."""
    allowed = 0
    for _ in range(round(seconds / every)):
        if await limiter.check(key) is None:
            allowed += 1
        await trio.sleep(every)
    return allowed


async def test_a_burst_then_the_rate(autojump_clock: trio.testing.MockClock) -> None:
    limiter = MemoryRateLimiter(per_minute=60, burst=3)
    assert [await limiter.check("k") for _ in range(4)] == [None, None, None, 1.0]
    await trio.sleep(1.0)
    assert await limiter.check("k") is None
    assert await limiter.check("k") == pytest.approx(1.0)


async def test_hours_of_asking_twice_as_often_get_the_rate(
    autojump_clock: trio.testing.MockClock,
) -> None:
    limiter = MemoryRateLimiter(per_minute=1, burst=10)  # one a minute, ten at once
    allowed = await allowed_in(limiter, "greedy", seconds=4 * 3600, every=30)
    assert allowed == pytest.approx(10 + 4 * 60, abs=1)


async def test_clients_have_buckets_of_their_own(autojump_clock: trio.testing.MockClock) -> None:
    limiter = MemoryRateLimiter(per_minute=6, burst=1)
    assert await limiter.check("a") is None
    assert await limiter.check("a") == pytest.approx(10.0)
    assert await limiter.check("b") is None


async def test_burst_zero_means_a_minutes_worth(autojump_clock: trio.testing.MockClock) -> None:
    limiter = MemoryRateLimiter(per_minute=30, burst=0)
    answers = [await limiter.check("k") for _ in range(31)]
    assert answers[:30] == [None] * 30 and answers[30] == pytest.approx(2.0)


async def test_only_full_buckets_are_forgotten(autojump_clock: trio.testing.MockClock) -> None:
    """Past ``max_clients`` idle buckets are dropped; one still refilling must be kept."""
    limiter = MemoryRateLimiter(per_minute=60, burst=2, max_clients=2)
    assert await limiter.check("old") is None
    await trio.sleep(60)  # "old" is full again: forgetting it changes nothing
    for _ in range(2):
        assert await limiter.check("spender") is None
    assert await limiter.check("newcomer") is None  # over max_clients: forget the idle
    assert await limiter.check("spender") == pytest.approx(1.0)  # still empty, not reset
