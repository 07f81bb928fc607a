"""Per-client request rate limits: a token bucket per client key.

The arithmetic is a pure function over a frozen `Bucket`; `MemoryRateLimiter`
keeps the buckets of one worker process. The limiter sits behind the small
async `RateLimiter` interface so a shared store (Redis, for many workers and
hosts) can replace it without touching the views.

    limiter = MemoryRateLimiter(per_minute=60, burst=10)
    wait = await limiter.check("key:abc")   # None: go ahead; else seconds to wait
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import trio


class RateLimiter(Protocol):
    async def check(self, key: str) -> float | None:
        """Spend one request for ``key``; None if allowed, else seconds until it would be."""
        ...


@dataclass(frozen=True, slots=True)
class Bucket:
    tokens: float
    updated: float


def take(
    bucket: Bucket | None, now: float, rate: float, burst: float
) -> tuple[Bucket, float | None]:
    """Refill at ``rate`` per second up to ``burst``, then spend one token if there is one."""
    tokens = burst if bucket is None else min(burst, bucket.tokens + (now - bucket.updated) * rate)
    if tokens >= 1:
        return Bucket(tokens - 1, now), None
    return Bucket(tokens, now), (1 - tokens) / rate


class MemoryRateLimiter:
    """Buckets in this process's memory; idle (full) buckets are dropped as it grows."""

    def __init__(self, per_minute: float, burst: int, *, max_clients: int = 100_000) -> None:
        self._rate = per_minute / 60.0
        self._burst = float(burst or max(1, round(per_minute)))
        self._buckets: dict[str, Bucket] = {}
        self._max_clients = max_clients

    async def check(self, key: str) -> float | None:
        await trio.lowlevel.checkpoint()
        now = trio.current_time()
        if len(self._buckets) >= self._max_clients:
            self._forget_idle(now)
        bucket, wait = take(self._buckets.get(key), now, self._rate, self._burst)
        self._buckets[key] = bucket
        return wait

    def _forget_idle(self, now: float) -> None:
        full_after = self._burst / self._rate
        self._buckets = {k: b for k, b in self._buckets.items() if now - b.updated < full_after}
