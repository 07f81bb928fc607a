"""Overload: when the worker's event loop falls behind, refuse new streams at once.

    guard = LagGuard(settings.overload)
    await nursery.start(guard.serve)             # samples the loop's lag, decides
    if guard.shedding: ...                       # refuse a new stream: 503 + Retry-After

One worker is one event loop on one core. Past what that core can relay,
every task — admitted streams' chunks, new streams' first bytes, health
checks — waits its turn in the same run queue, and the wait grows with the
load: measured at twice a worker's capacity, 40 % of clients had no first
byte after ten seconds and every admitted stream stuttered. Refusing *new*
streams, cheaply and at once, keeps the admitted ones at their pace and
sends the refused client (or its load balancer) elsewhere within
milliseconds.

**The signal: event-loop lag.** `LagGuard.serve` sleeps `interval` and
measures how late it wakes up. That lateness is exactly the queueing delay
every other task in the loop sees — a chunk waiting to be written, a request
waiting to be read — so it measures the symptom to be prevented, in the
unit clients feel it, with no knowledge of what the worker's capacity is.
CPU use cannot tell "busy and keeping up" from "busy and falling behind"
(both read 100 %), and a relay rate needs to know the capacity it is
compared with, which changes with chunk sizes, stream counts and the
machine. (The benchmark's overload scenario measured the three;
``tests/bench/README.md``.)

**The decision** (`LagGuard.observe`, pure: plain numbers, any clock) is
hysteresis over a smoothed lag: an exponentially weighted mean over about
the last five samples; shedding starts once it has stayed above
``lag_threshold`` for ``onset`` seconds and stops only once it has stayed
below the lower ``lag_clear`` for ``hold`` seconds. Lag that lasts is
overload; a pause is not. The onset is there for pauses longer than
smoothing absorbs: measured at 3,700 idle streams, one 429 ms collection of
gc's generation 1 (and the loop catching up after it) shed a worker that was
40 % busy for two seconds, refusing 150 new streams.

**How much is refused** (`LagGuard.refuse_next`): while shedding, not every
new stream. Above ``lag_threshold`` all are; between the two bounds a share
that falls in proportion to the lag, down to none at ``lag_clear``, spread
evenly (every other one at one half). A worker on its way back takes new
streams gradually instead of in one wave, and one that hovers at the
threshold keeps most of its throughput. (All-or-nothing, measured at
100 streams on a busy machine: whole seconds of refusing everything, then
a wave of opens that drove the lag up again; half the chunks a worker
without the guard delivered, at a worse latency.)

What is refused and how is the app's business (`server.gateway.SluiceApp`):
new streams only, before Quart builds a request; in-flight streams, health,
readiness and metrics are never refused.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import trio
from hypercorn.typing import ASGISendEvent, HTTPScope

from server.config import OverloadSettings
from server.errors import Overloaded, error_headers, openai_error_body

log = logging.getLogger("sluice.overload")

# The weight of each new sample in the smoothed lag: about the last five samples count.
SMOOTHING = 0.2


class LagGuard:
    """Hysteresis over the smoothed event-loop lag: shed new streams, or not.

    >>> guard = LagGuard(OverloadSettings(lag_threshold=0.05, onset=0.5, lag_clear=0.02))
    >>> guard.observe(0.3, now=0.0)   # smoothed: 0.06 > 0.05, from now...
    False
    >>> guard.observe(0.3, now=0.5)   # ...for the onset
    True
    """

    def __init__(self, settings: OverloadSettings) -> None:
        self.settings = settings
        self.lag = 0.0  # smoothed, seconds
        self.shedding = False
        self.refusals = 0
        self._clear_since: float | None = None
        self._over_since: float | None = None  # when the smoothed lag went over the threshold
        self._owed = 0.0  # refusals due but not yet made: spreads a share evenly

    @property
    def refused_share(self) -> float:
        """The share of new streams refused now: 1 above the threshold, falling in
        proportion to the lag between the two bounds, 0 at ``lag_clear`` or not shedding."""
        if not self.shedding:
            return 0.0
        settings = self.settings
        band = settings.lag_threshold - settings.lag_clear
        if band <= 0:  # no band (the config refuses one; a test may not)
            return 1.0 if self.lag >= settings.lag_clear else 0.0
        return min(1.0, max(0.0, (self.lag - settings.lag_clear) / band))

    def refuse_next(self) -> bool:
        """Whether to refuse the next new stream (one call per new stream)."""
        share = self.refused_share
        if share <= 0.0:
            self._owed = 0.0
            return False
        self._owed += share
        if self._owed >= 1.0 - 1e-9:
            self._owed -= 1.0
            return True
        return False

    def observe(self, lag: float, now: float) -> bool:
        """Take one lag sample (seconds, measured at ``now``); return whether to shed."""
        self.lag += SMOOTHING * (lag - self.lag)
        settings = self.settings
        if not self.shedding:
            if self.lag <= settings.lag_threshold:
                self._over_since = None
            else:
                if self._over_since is None:
                    self._over_since = now
                if now - self._over_since >= settings.onset:
                    self.shedding = True
                    self._over_since = self._clear_since = None
        elif self.lag >= settings.lag_clear:
            self._clear_since = None  # not clear (yet, or again): the hold starts over
        else:
            if self._clear_since is None:
                self._clear_since = now
            if now - self._clear_since >= settings.hold:
                self.shedding = False
                self._clear_since = None
        return self.shedding

    async def serve(self, record: Callable[[float], object] | None = None, *,
                    task_status: trio.TaskStatus[trio.CancelScope] = trio.TASK_STATUS_IGNORED,
                    ) -> None:
        """Sample the loop's lag every ``interval`` and `observe` it; log each change of state.

        Started with ``await nursery.start(guard.serve)``, it reports the cancel scope
        that stops it. ``record`` is given each raw sample (a histogram's ``observe``).
        """
        interval = self.settings.interval
        with trio.CancelScope() as scope:
            task_status.started(scope)
            shedding = False
            while True:
                asleep = trio.current_time()
                await trio.sleep(interval)
                now = trio.current_time()
                lag = max(0.0, now - asleep - interval)
                if record is not None:
                    record(lag)
                if self.observe(lag, now) != shedding:
                    shedding = self.shedding
                    self._log_change()

    def _log_change(self) -> None:
        if self.shedding:
            log.warning("overloaded: event-loop lag %.0f ms; refusing new streams (503) "
                        "until it stays under %.0f ms for %g s", self.lag * 1000,
                        self.settings.lag_clear * 1000, self.settings.hold)
        else:
            log.info("overload over: event-loop lag %.0f ms; taking new streams again "
                     "(%d refused so far)", self.lag * 1000, self.refusals)


# The endpoints that start new work: refused while shedding. Everything else — in-flight
# streams, their cancels and resumes, health, readiness, metrics, admin — is served.
NEW_WORK_PATHS = frozenset({"/v1/chat/completions", "/v1/completions", "/v1/responses",
                            "/v1/embeddings", "/chat"})


def is_new_work(scope: HTTPScope) -> bool:
    """Whether this request would start a new stream (a POST to one of `NEW_WORK_PATHS`)."""
    return scope["method"] == "POST" and scope["path"] in NEW_WORK_PATHS


def refusal(settings: OverloadSettings,
            extra_headers: Sequence[tuple[bytes, bytes]] = ()) -> list[ASGISendEvent]:
    """The ASGI messages of a 503 ``gateway_overloaded`` with Retry-After.

    No request object, no parsing, no log line: while the loop is behind, a
    refusal must cost as little as possible. ``extra_headers``: the API's
    CORS headers for the request's origin, so a page can read the 503.
    """
    error = Overloaded(settings.retry_after)
    body = openai_error_body(error)
    headers = [*error_headers(error), (b"content-length", str(len(body)).encode()),
               *extra_headers]
    return [{"type": "http.response.start", "status": error.status, "headers": headers,
             "trailers": False},
            {"type": "http.response.body", "body": body, "more_body": False}]
