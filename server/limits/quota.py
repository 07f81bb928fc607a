"""A principal's limits, and their arithmetic as pure functions.

`Quota` is what one API key may use: requests per minute, tokens per
minute, streams at once, tokens per day and per month, spend per month
(0 means "no limit"). The functions below are the arithmetic behind them,
on plain numbers (milliseconds and tokens): the memory store runs them
directly and the Redis store runs the same steps in Lua
(`server/limits/scripts/*.lua`), so the contract tests hold both to one
behaviour.

**Requests: GCRA** (the generic cell rate algorithm). One number per
principal, the *theoretical arrival time* (TAT): when the bucket would be
empty again at the steady rate. A request conforms when it does not push the
TAT more than ``burst`` intervals past now; ``burst`` defaults to a
minute's worth, so ``rpm = 60`` allows 60 at once, then one a second::

    step = gcra(tat, now, interval=60_000 / rpm, burst=rpm)

**Tokens: a bucket with a reservation.** The bucket holds up to ``tpm``
tokens and refills at ``tpm`` per minute. A request reserves its estimate
(prompt + ``max_tokens``) before it starts — it is admitted when the bucket
holds at least ``min(estimate, capacity)`` (a request larger than the whole
bucket still runs once the bucket is full) and may leave it in debt — and
the difference to the real usage is refunded or charged when it ends::

    level = refill(level, updated, now, capacity, rate)
    ok, wait = bucket_admits(level, cost, capacity, rate)
    level = min(capacity, level - actual_delta)      # at the end
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Quota:
    """What one principal may use; 0 means no limit."""

    rpm: float = 0.0  # requests per minute (GCRA)
    burst: int = 0  # requests at once; 0 = a minute's worth (``rpm``)
    tpm: int = 0  # tokens per minute (bucket with reservations)
    max_streams: int = 0  # requests in flight at once (expiring leases)
    daily_tokens: int = 0  # per UTC day, prompt + completion
    monthly_tokens: int = 0  # per UTC month
    monthly_spend: float = 0.0  # per UTC month, in the price table's currency

    @property
    def request_burst(self) -> int:
        return self.burst or max(1, math.floor(self.rpm))

    @property
    def unlimited(self) -> bool:
        return not (self.rpm or self.tpm or self.max_streams or self.daily_tokens
                    or self.monthly_tokens or self.monthly_spend)


@dataclass(frozen=True, slots=True)
class GcraStep:
    allowed: bool
    tat: float  # the TAT to store (unchanged when refused)
    retry_after: float  # ms until a refused request would conform; 0 when allowed
    remaining: int  # requests that would still conform right now
    reset: float  # ms until the principal is back to a full burst


def gcra(tat: float | None, now: float, interval: float, burst: int) -> GcraStep:
    """Admit one request against a theoretical arrival time (all times in ms)."""
    base = now if tat is None or tat < now else tat
    new_tat = base + interval
    allow_at = new_tat - burst * interval
    if now < allow_at:
        return GcraStep(False, base, allow_at - now, 0, base - now)
    remaining = math.floor((now - allow_at) / interval)
    return GcraStep(True, new_tat, 0.0, remaining, new_tat - now)


def refill(level: float | None, updated: float, now: float, capacity: float,
           rate: float) -> float:
    """The bucket's level at ``now``: full when new, refilled at ``rate`` per ms, capped."""
    if level is None:
        return capacity
    return min(capacity, level + max(0.0, now - updated) * rate)


def bucket_admits(level: float, cost: float, capacity: float,
                  rate: float) -> tuple[bool, float]:
    """Whether a reservation of ``cost`` may start; else the ms until it may."""
    need = min(cost, capacity)
    if level >= need:
        return True, 0.0
    return False, (need - level) / rate


def bucket_reset(level: float, capacity: float, rate: float) -> float:
    """ms until the bucket is full again."""
    return max(0.0, (capacity - level) / rate)
