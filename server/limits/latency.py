"""What a backend's first token has cost lately: an average for routing, a p95 for hedging.

One `FirstTokenStats` per route, fed with the seconds from an attempt's
start to its first content chunk. Two views of the same samples:

* ``ewma`` — an exponentially weighted average (weight ``ALPHA`` on the
  newest sample), for the ``latency`` routing strategy: quick to follow a
  backend that slows down or recovers, steady against one odd request;
* ``p95(min_samples)`` — the 95th percentile of the last ``WINDOW`` samples,
  for ``hedge_after = "auto"``: hedge a request once it is slower than
  nineteen in twenty recent ones. With fewer than ``min_samples`` there is
  no p95 (and no hedge): a guess would hedge at random.

Only attempts that reached their first token on their own count: a hedge's
loser, cancelled, says nothing about the backend (it might have been a
second from its first token).

    stats = FirstTokenStats()
    stats.add(0.42)
    stats.ewma            # None before the first sample
    stats.p95(10)         # None with fewer than 10 samples
"""

from __future__ import annotations

import math
from collections import deque

ALPHA = 0.3  # weight of the newest sample in the average
WINDOW = 50  # samples kept for the percentile


class FirstTokenStats:
    """Recent first-token times of one backend, in seconds."""

    __slots__ = ("_recent", "ewma")

    def __init__(self) -> None:
        self.ewma: float | None = None
        self._recent: deque[float] = deque(maxlen=WINDOW)

    def add(self, seconds: float) -> None:
        """One attempt's first content chunk came ``seconds`` after it started."""
        self.ewma = seconds if self.ewma is None else ALPHA * seconds + (1 - ALPHA) * self.ewma
        self._recent.append(seconds)

    @property
    def samples(self) -> int:
        return len(self._recent)

    def p95(self, min_samples: int) -> float | None:
        """The 95th percentile (nearest rank) of the recent samples; None with too few."""
        if len(self._recent) < max(1, min_samples):
            return None
        ordered = sorted(self._recent)
        return ordered[math.ceil(0.95 * len(ordered)) - 1]
