"""`CircuitBreaker`: when a backend is taken out and how it is let back in, in plain numbers.

Each rule is a name, then (indented) the settings it runs with, a script of
steps at given times (the breaker takes the time as an argument, so no clock
is needed) and, after ``=>``, the state it must end in:

    F@t  record a failure         S@t  record a success
    F@t>open  ...and `record` must report that the state changed to open
              (without ``>``, it must report no change)
    A+@t allow() must say yes     A-@t allow() must say no
    B+@t blocks() must say yes    B-@t blocks() must say no
    D    abandon the request let through
    P+   let_through() (panic routing) must report the first since the last change
    P-   let_through() must report that it is not the first
"""

from __future__ import annotations

import itertools

import pytest

from server.config import BreakerSettings
from server.limits.breaker import CircuitBreaker

# Small numbers so each rule shows in a few steps; each trip rule on its own.
SETTINGS = {
    # 3 failures in a row open it
    "run": BreakerSettings(consecutive_failures=3, failure_ratio=1.0, window=6,
                           min_requests=6, cooldown=30.0),
    # half of the last 6 outcomes (4 at least) open it
    "ratio": BreakerSettings(consecutive_failures=100, failure_ratio=0.5, window=6,
                             min_requests=4, cooldown=30.0),
}

RULES = """
fewer failures in a row than the threshold stay closed
    run: F F A+ => closed
the threshold of failures in a row opens
    run: F F F>open => open
a success breaks the run
    run: F F S F F => closed
the failure ratio opens once the window holds min_requests
    ratio: S F S F>open => open
below the ratio stays closed
    ratio: S S F S F => closed
the ratio is not judged below min_requests
    ratio: F S F => closed
old outcomes leave the window (the last 6 are S F S F S F: half failed)
    ratio: S S S S F S F S F>open => open
open refuses every request until the cooldown has passed
    run: F@0 F@0 F@0>open A-@0 A-@29.9 => open
after the cooldown one probe goes through, and only one
    run: F@0 F@0 F@0>open A+@30 A-@30 A-@45 => half_open
a probe that succeeds closes the circuit
    run: F@0 F@0 F@0>open A+@30 S@31>closed A+@31 A+@31 => closed
a probe that fails opens it for another cooldown from then
    run: F@0 F@0 F@0>open A+@30 F@31>open A-@60.9 A+@61 => half_open
a failed probe reopens, whatever the counts say (the late success reset them)
    run: F@0 F@0 F@0>open S@5 A+@30 F@31>open A-@31 => open
an abandoned probe lets the next request probe
    run: F@0 F@0 F@0>open A+@30 D A+@30 A-@30 => half_open
closing forgets the failures that opened it
    ratio: F@0 F@0 F@0 F@0>open A+@30 S@30>closed F@31 S@31 F@31 => closed
a late success while open does not close it (the probe decides)
    run: F@0 F@0 F@0>open S@5 A-@5 => open
blocks says what allow would, and takes nothing
    run: B-@0 F@0 F@0 F@0>open B+@29 B-@30 B-@30 A+@30 B+@30 D B-@30 => half_open

Panic routing: every backend refused, one was let through anyway.
a request let through that succeeds closes the circuit
    run: F@0 F@0 F@0>open P+ S@5>closed A+@5 => closed
a request let through that fails opens it for a fresh cooldown
    run: F@0 F@0 F@0>open P+ F@10 B+@39 A-@39 A+@40 => half_open
...even when the counts alone would not open it (the late success reset them)
    run: F@0 F@0 F@0>open S@5 P+ F@10 B+@39 A+@40 => half_open
only the first request let through is news
    run: F@0 F@0 F@0>open P+ P- F@10 P- P- S@12>closed => closed
news again after the circuit changed
    run: F@0 F@0 F@0>open P+ A+@30 P- F@31>open P+ P- => open
beside a probe, a request let through that succeeds closes it
    run: F@0 F@0 F@0>open A+@30 B+@30 P+ S@31>closed A+@31 => closed
once it opens again, a late success no longer closes it
    run: F@0 F@0 F@0>open P+ S@1>closed F@2 F@2 F@2>open S@3 A-@3 => open
"""


def rules() -> list[tuple[str, str, str]]:
    """(name, "settings: script", final state) for each rule in `RULES`."""
    found = []
    lines = RULES.strip().splitlines()
    for name, rule in itertools.pairwise(lines):
        if rule.startswith("    ") and not name.startswith("    "):
            script, _, state = rule.strip().partition(" => ")
            found.append((name, script, state))
    return found


def run(breaker: CircuitBreaker, script: str) -> None:
    """Play the steps, checking each expectation on the way."""
    for step in script.split():
        head, _, change = step.partition(">")
        op, _, at = head.partition("@")
        now = float(at or 0)
        where = f"{step} in {script!r}"
        if op in ("F", "S"):
            assert breaker.record(op == "S", now) == (change or None), where
        elif op in ("A+", "A-"):
            assert breaker.allow(now) is (op == "A+"), where
        elif op in ("B+", "B-"):
            assert breaker.blocks(now) is (op == "B+"), where
        elif op == "D":
            breaker.abandon()
        elif op in ("P+", "P-"):
            assert breaker.let_through() is (op == "P+"), where
        else:
            raise ValueError(f"unknown step {step!r}")


@pytest.mark.parametrize(("rule", "state"), [r[1:] for r in rules()],
                         ids=[r[0] for r in rules()])
def test_breaker_rules(rule: str, state: str) -> None:
    settings, _, script = rule.partition(": ")
    breaker = CircuitBreaker(SETTINGS[settings])
    run(breaker, script)
    assert breaker.state == state


def test_every_rule_is_read() -> None:
    assert len(rules()) == RULES.count(" => ") == 23


@pytest.mark.parametrize(("script", "now", "retry_in"), [
    ("", 0, 0.0),                          # closed: go ahead
    ("F@0 F@0 F@0>open", 0, 30.0),         # just opened: the whole cooldown
    ("F@0 F@0 F@10>open", 25, 15.0),       # counted from the failure that opened it
    ("F@0 F@0 F@0>open", 45, 0.0),         # cooldown over: a probe would go now
    ("F@0 F@0 F@0>open A+@30", 31, 0.0),   # half-open
])
def test_retry_in_counts_down_the_cooldown(script: str, now: float, retry_in: float) -> None:
    breaker = CircuitBreaker(SETTINGS["run"])
    run(breaker, script)
    assert breaker.retry_in(now) == retry_in


def test_hours_of_flapping_keep_the_rules() -> None:
    """A backend that fails every probe for ten hours is let in once per cooldown."""
    breaker = CircuitBreaker(SETTINGS["run"])
    run(breaker, "F@0 F@0 F@0>open")
    probes = 0
    for second in range(1, 10 * 3600):
        if breaker.allow(second):
            probes += 1
            breaker.record(False, second)
    assert probes == 10 * 3600 // 30 - 1
    assert breaker.state == "open"
