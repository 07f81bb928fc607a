"""`CircuitBreaker`: when a backend is taken out and how it is let back in, in plain numbers.

Each row is a script of steps at given times (the breaker takes the time as
an argument, so no clock is needed):

    F@t  record a failure         S@t  record a success
    A+@t allow() must say yes     A-@t allow() must say no
    D    abandon the request let through
    P+   let_through() (panic routing), the first since the last change
    P-   let_through(), not the first
    B+@t blocks() must say yes    B-@t blocks() must say no
"""

from __future__ import annotations

import pytest

from server.config import BreakerSettings
from server.limits.breaker import CircuitBreaker, State

# Small numbers so each rule shows in a few steps; each trip rule on its own.
RUN = BreakerSettings(consecutive_failures=3, failure_ratio=1.0, window=6,
                      min_requests=6, cooldown=30.0)  # 3 failures in a row open it
RATIO = BreakerSettings(consecutive_failures=100, failure_ratio=0.5, window=6,
                        min_requests=4, cooldown=30.0)  # half the last 6 (4 at least) open it


def run(breaker: CircuitBreaker, script: str) -> list[State]:
    """Play the steps; return the transitions `record` reported."""
    changes: list[State] = []
    for step in script.split():
        op, _, at = step.partition("@")
        now = float(at or 0)
        if op in ("F", "S"):
            change = breaker.record(op == "S", now)
            if change is not None:
                changes.append(change)
        elif op in ("A+", "A-"):
            assert breaker.allow(now) is (op == "A+"), f"{step} in {script!r}"
        elif op in ("B+", "B-"):
            assert breaker.blocks(now) is (op == "B+"), f"{step} in {script!r}"
        elif op == "D":
            breaker.abandon()
        elif op in ("P+", "P-"):
            assert breaker.let_through() is (op == "P+"), f"{step} in {script!r}"
        else:
            raise ValueError(f"unknown step {step!r}")
    return changes


RULES: list[tuple[str, BreakerSettings, str, State, list[State]]] = [
    # name, settings, script, final state, transitions reported
    ("fewer failures in a row than the threshold stay closed", RUN,
     "F F A+", "closed", []),
    ("the threshold of failures in a row opens", RUN,
     "F F F", "open", ["open"]),
    ("a success breaks the run", RUN,
     "F F S F F", "closed", []),
    ("the failure ratio opens once the window holds min_requests", RATIO,
     "S F S F", "open", ["open"]),
    ("below the ratio stays closed", RATIO,
     "S S F S F", "closed", []),
    ("the ratio is not judged below min_requests", RATIO,
     "F S F", "closed", []),
    ("old outcomes leave the window", RATIO,  # the last 6 are S F S F S F: half failed
     "S S S S F S F S F", "open", ["open"]),
    ("open refuses every request until the cooldown has passed", RUN,
     "F@0 F@0 F@0 A-@0 A-@29.9", "open", ["open"]),
    ("after the cooldown one probe goes through, and only one", RUN,
     "F@0 F@0 F@0 A+@30 A-@30 A-@45", "half_open", ["open"]),
    ("a probe that succeeds closes the circuit", RUN,
     "F@0 F@0 F@0 A+@30 S@31 A+@31 A+@31", "closed", ["open", "closed"]),
    ("a probe that fails opens it for another cooldown from then", RUN,
     "F@0 F@0 F@0 A+@30 F@31 A-@60.9 A+@61", "half_open", ["open", "open"]),
    ("a failed probe reopens, whatever the counts say", RUN,  # the late success reset them
     "F@0 F@0 F@0 S@5 A+@30 F@31 A-@31", "open", ["open", "open"]),
    ("an abandoned probe lets the next request probe", RUN,
     "F@0 F@0 F@0 A+@30 D A+@30 A-@30", "half_open", ["open"]),
    ("closing forgets the failures that opened it", RATIO,
     "F@0 F@0 F@0 F@0 A+@30 S@30 F@31 S@31 F@31", "closed", ["open", "closed"]),
    ("a late success while open does not close it (the probe decides)", RUN,
     "F@0 F@0 F@0 S@5 A-@5", "open", ["open"]),
    ("blocks says what allow would, and takes nothing", RUN,
     "B-@0 F@0 F@0 F@0 B+@29 B-@30 B-@30 A+@30 B+@30 D B-@30", "half_open", ["open"]),
    # Panic routing: every backend refused, one was let through anyway.
    ("a request let through that succeeds closes the circuit", RUN,
     "F@0 F@0 F@0 P+ S@5 A+@5", "closed", ["open", "closed"]),
    ("a request let through that fails opens it for a fresh cooldown", RUN,
     "F@0 F@0 F@0 P+ F@10 B+@39 A-@39 A+@40", "half_open", ["open"]),
    ("...even when the counts alone would not open it", RUN,  # the late success reset them
     "F@0 F@0 F@0 S@5 P+ F@10 B+@39 A+@40", "half_open", ["open"]),
    ("only the first request let through is news", RUN,
     "F@0 F@0 F@0 P+ P- F@10 P- P- S@12", "closed", ["open", "closed"]),
    ("news again after the circuit changed", RUN,
     "F@0 F@0 F@0 P+ A+@30 P- F@31 P+ P-", "open", ["open", "open"]),
    ("beside a probe, a request let through that succeeds closes it", RUN,
     "F@0 F@0 F@0 A+@30 B+@30 P+ S@31 A+@31", "closed", ["open", "closed"]),
    ("once it opens again, a late success no longer closes it", RUN,
     "F@0 F@0 F@0 P+ S@1 F@2 F@2 F@2 S@3 A-@3", "open", ["open", "closed", "open"]),
]


@pytest.mark.parametrize(("settings", "script", "state", "changes"),
                         [row[1:] for row in RULES], ids=[row[0] for row in RULES])
def test_breaker_rules(settings: BreakerSettings, script: str, state: State,
                       changes: list[State]) -> None:
    breaker = CircuitBreaker(settings)
    assert run(breaker, script) == changes
    assert breaker.state == state


@pytest.mark.parametrize(("script", "now", "retry_in"), [
    ("", 0, 0.0),                      # closed: go ahead
    ("F@0 F@0 F@0", 0, 30.0),          # just opened: the whole cooldown
    ("F@0 F@0 F@10", 25, 15.0),        # counted from the failure that opened it
    ("F@0 F@0 F@0", 45, 0.0),          # cooldown over: a probe would go now
    ("F@0 F@0 F@0 A+@30", 31, 0.0),    # half-open
])
def test_retry_in_counts_down_the_cooldown(script: str, now: float, retry_in: float) -> None:
    breaker = CircuitBreaker(RUN)
    run(breaker, script)
    assert breaker.retry_in(now) == retry_in


def test_hours_of_flapping_keep_the_rules() -> None:
    """A backend that fails every probe for ten hours is let in once per cooldown."""
    breaker = CircuitBreaker(RUN)
    run(breaker, "F@0 F@0 F@0")
    probes = 0
    for second in range(1, 10 * 3600):
        if breaker.allow(second):
            probes += 1
            breaker.record(False, second)
    assert probes == 10 * 3600 // 30 - 1
    assert breaker.state == "open"
