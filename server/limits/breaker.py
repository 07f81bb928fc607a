"""The circuit breaker: a backend that keeps failing is taken out, then probed back in.

A pure state machine; the caller passes the time, so it is tested with plain
numbers.

    closed ──(N consecutive failures, or failure ratio over the window)──► open
    open ──(cooldown elapsed; one request allowed through as a probe)──► half_open
    half_open ──probe succeeds──► closed      half_open ──probe fails──► open

While open, routing skips the backend, so a flapping primary does not tax
every request with its timeout. A probe whose outcome never comes (the
client left) is `abandon`-ed, which lets the next request probe instead.

A breaker routes *around* a failing backend; it must never be the outage
itself. When every backend a request may use refuses it, routing lets one
through anyway (`let_through`, Envoy's "panic" idea): the outcome of such a
request counts like a probe's — a success closes the circuit at once, a
failure opens it for a fresh cooldown.

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
        self._let_through = False  # a request went through while it refused (panic)

    def blocks(self, now: float) -> bool:
        """Would `allow` refuse now? Asking takes nothing (not even the probe)."""
        if self.state == "open":
            return now - self._opened_at < self._settings.cooldown
        return self.state == "half_open" and self._probing

    def allow(self, now: float) -> bool:
        """May a request go to this backend now? In half-open, only one (the probe)."""
        if self.blocks(now):
            return False
        if self.state != "closed":  # open past its cooldown, or half-open with no probe out
            self.state = "half_open"
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
            if self.state == "half_open" or self._let_through:
                self.state = "closed"
                self._window.clear()
        else:
            self._consecutive += 1
            if self.state != "closed" or self._tripped():
                self.state = "open"  # again, if it was: a fresh cooldown from now
                self._opened_at = now
        if self.state != before:
            self._let_through = False
            return self.state
        return None

    def let_through(self) -> bool:
        """A request goes to this backend although it `blocks` (every other one does too).

        Its outcome then decides, as a probe's would: `record` closes the
        circuit on a success. True for the first such request since the
        circuit last changed state, so that routing logs once, not per request.
        """
        first = not self._let_through
        self._let_through = True
        return first

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
