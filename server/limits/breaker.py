"""The circuit breaker: a backend that keeps failing is taken out, then probed back in.

A pure state machine; the caller passes the time, so it is tested with plain
numbers.

    closed ──(N consecutive failures, or failure ratio over the window)──► open
    open ──(cooldown elapsed; one request allowed through as a probe)──► half_open
    half_open ──probe succeeds──► closed      half_open ──probe fails──► open

While open, routing skips the backend, so a flapping primary does not tax
every request with its timeout. A probe whose outcome never comes (the
client left) is `abandon`-ed, which lets the next request probe instead.

    breaker = CircuitBreaker(settings)
    if breaker.allow(now):
        ... breaker.record(ok, now)   # or breaker.abandon()
"""

from __future__ import annotations

from collections import deque
from typing import Literal

from server.config import BreakerSettings

State = Literal["closed", "open", "half_open"]
STATE_VALUES: dict[State, int] = {"closed": 0, "half_open": 1, "open": 2}


class CircuitBreaker:
    def __init__(self, settings: BreakerSettings) -> None:
        self._settings = settings
        self.state: State = "closed"
        self._opened_at = 0.0
        self._consecutive = 0
        self._window: deque[bool] = deque(maxlen=settings.window)
        self._probing = False

    def allow(self, now: float) -> bool:
        """May a request go to this backend now? In half-open, only one (the probe)."""
        if self.state == "open":
            if now - self._opened_at < self._settings.cooldown:
                return False
            self.state = "half_open"
        if self.state == "half_open":
            if self._probing:
                return False
            self._probing = True
        return True

    def retry_in(self, now: float) -> float:
        """Seconds until an open breaker lets a probe through (0 if it would now)."""
        if self.state != "open":
            return 0.0
        return max(0.0, self._opened_at + self._settings.cooldown - now)

    def record(self, success: bool, now: float) -> State | None:
        """Account one outcome; return the new state if it changed."""
        before = self.state
        self._probing = False
        self._window.append(success)
        if success:
            self._consecutive = 0
            if self.state == "half_open":
                self.state = "closed"
                self._window.clear()
        else:
            self._consecutive += 1
            if self.state == "half_open" or self._tripped():
                self.state = "open"
                self._opened_at = now
        return self.state if self.state != before else None

    def abandon(self) -> None:
        """The request allowed through never finished (cancelled): free the probe."""
        self._probing = False

    def _tripped(self) -> bool:
        s = self._settings
        if self._consecutive >= s.consecutive_failures:
            return True
        if len(self._window) < s.min_requests:
            return False
        failures = self._window.count(False)
        return failures / len(self._window) >= s.failure_ratio
