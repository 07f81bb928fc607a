"""`LagGuard`: when a worker starts and stops refusing new streams, in plain numbers.

The guard takes each lag sample with the time it was measured, so no clock is
needed: a script of samples gives the decisions. The monitor task itself
(`LagGuard.serve`) runs under trio's `MockClock`, where the loop is never
late unless a test blocks it on purpose.
"""

from __future__ import annotations

import time
from dataclasses import replace

import pytest
import trio
import trio.lowlevel
import trio.testing

from server.config import OverloadSettings
from server.limits.overload import SMOOTHING, LagGuard, is_new_work

# Shed above 50 ms (at once: the smoothing alone), stop below 20 ms held for 1 s; samples
# every 10 ms. The onset has tests of its own, below.
SETTINGS = OverloadSettings(lag_threshold=0.05, onset=0.0, lag_clear=0.02, hold=1.0,
                            interval=0.01)


def play(guard: LagGuard, lag: float, start: float, seconds: float) -> list[bool]:
    """Feed a constant lag, one sample per (interval + lag), for ``seconds``; the decisions."""
    decisions = []
    now = start
    while now < start + seconds:
        now += SETTINGS.interval + lag
        decisions.append(guard.observe(lag, now))
    return decisions


def test_no_lag_never_sheds() -> None:
    guard = LagGuard(SETTINGS)
    assert not any(play(guard, 0.0, 0.0, 10.0))
    assert guard.lag == 0.0


def test_lag_below_the_threshold_never_sheds() -> None:
    guard = LagGuard(SETTINGS)
    assert not any(play(guard, 0.049, 0.0, 10.0))
    assert guard.lag == pytest.approx(0.049, rel=1e-3)


def test_sustained_lag_sheds_within_a_few_samples() -> None:
    guard = LagGuard(SETTINGS)
    decisions = play(guard, 0.2, 0.0, 1.0)
    assert decisions[:1] == [False]  # 0.04 smoothed: one sample is not enough...
    assert decisions[1:] == [True] * (len(decisions) - 1)  # ...two are (0.072)


def test_one_long_pause_does_not_shed() -> None:
    """A single gc pause or burst of opens, 4× the threshold, is smoothed away."""
    guard = LagGuard(SETTINGS)
    assert not guard.observe(0.05 / SMOOTHING - 0.001, 0.0)
    assert not any(play(guard, 0.0, 0.0, 1.0))


def test_shedding_stops_only_after_the_lag_stays_clear_for_the_hold() -> None:
    guard = LagGuard(SETTINGS)
    play(guard, 0.2, 0.0, 1.0)
    assert guard.shedding
    # The lag drops to zero at t=1: the smoothed value needs a few samples to fall
    # below 20 ms, then 1 s more before new streams are taken again.
    lag = guard.lag
    decisions = play(guard, 0.0, 1.0, 3.0)
    first_clear = 1.0 + SETTINGS.interval * next(
        i for i in range(1, 100) if lag * (1 - SMOOTHING) ** i < 0.02)
    stopped_at = 1.0 + SETTINGS.interval * (decisions.index(False) + 1)
    # At the first sample that is `hold` after the first clear one (sums of floats: ± one).
    assert first_clear + SETTINGS.hold - 1e-9 <= stopped_at
    assert stopped_at <= first_clear + SETTINGS.hold + SETTINGS.interval + 1e-9
    assert not any(decisions[decisions.index(False):])


def test_lag_between_the_two_bounds_keeps_shedding() -> None:
    """Hysteresis: once shedding, 30 ms (under the threshold, over the clear mark) holds on."""
    guard = LagGuard(SETTINGS)
    play(guard, 0.2, 0.0, 1.0)
    assert all(play(guard, 0.03, 1.0, 10.0))


def test_a_lag_spike_during_the_hold_starts_it_over() -> None:
    guard = LagGuard(SETTINGS)
    play(guard, 0.2, 0.0, 1.0)
    play(guard, 0.0, 1.0, 0.9)  # clear since ~1.1 s: 0.8 s of the 1 s hold done
    assert guard.shedding
    guard.observe(0.3, 1.91)  # smoothed back over 20 ms
    assert all(play(guard, 0.0, 1.91, 0.9))  # the hold starts again once it is clear
    assert not play(guard, 0.0, 2.81, 1.0)[-1]


def test_a_zero_hold_stops_at_the_first_clear_sample() -> None:
    guard = LagGuard(OverloadSettings(lag_threshold=0.05, onset=0.0, lag_clear=0.02,
                                      hold=0.0))
    assert guard.observe(1.0, 0.0)
    lags = []
    while guard.observe(0.0, 0.1):
        lags.append(guard.lag)
    assert min(lags) >= 0.02 > guard.lag


def test_shedding_starts_once_the_lag_has_lasted_for_the_onset() -> None:
    settings = replace(SETTINGS, onset=0.5)
    guard = LagGuard(settings)
    now, decisions = 0.0, []
    while now < 2.0:
        now += settings.interval + 0.2
        decisions.append((now, guard.observe(0.2, now)))
    over_since = decisions[1][0]  # 0.072 smoothed: the first sample over 0.05
    first_shed = next(at for at, shed in decisions if shed)
    assert over_since + 0.5 <= first_shed <= over_since + 0.5 + settings.interval + 0.2 + 1e-9
    assert all(shed for at, shed in decisions if at >= first_shed)


def test_a_dip_under_the_threshold_starts_the_onset_over() -> None:
    guard = LagGuard(replace(SETTINGS, onset=0.5))
    for at in (0.0, 0.1, 0.2, 0.3, 0.4):
        assert not guard.observe(0.2, at)
    for at in (0.41, 0.42, 0.43, 0.44, 0.45, 0.46):
        guard.observe(0.0, at)  # the smoothed lag falls under 50 ms
    assert guard.lag < 0.05
    assert not any(guard.observe(0.2, at) for at in (0.5, 0.6, 0.7, 0.8, 0.9))
    assert guard.observe(0.2, 1.0)  # over again since 0.5 or 0.6: the onset has passed


# Measured at 3,700 idle streams (tests/bench/README.md): one collection of gc's
# generation 1 held the loop 429 ms; the loop then caught up for a few samples, and
# generation-0 collections of 30-60 ms came twice a second.
def gc_pause_then_catch_up(start: float) -> list[tuple[float, float]]:
    """(lag, measured at) samples for 3 s after a 429 ms pause, the defaults' interval."""
    interval = OverloadSettings().interval
    lags = [0.429, 0.16, 0.08, 0.04, 0.02] + [0.001] * 45 + [0.05] + [0.001] * 49
    samples, now = [], start
    for lag in lags * 3:
        now += interval + lag
        samples.append((lag, now))
    return samples


def test_a_long_gc_pause_and_its_catch_up_do_not_shed_with_the_default_onset() -> None:
    guard = LagGuard(OverloadSettings())
    assert not any(guard.observe(lag, at) for lag, at in gc_pause_then_catch_up(0.0))
    # ...where the smoothing alone would have shed at once.
    eager = LagGuard(replace(OverloadSettings(), onset=0.0))
    assert any(eager.observe(lag, at) for lag, at in gc_pause_then_catch_up(0.0))


def refusals(guard: LagGuard, count: int) -> list[bool]:
    return [guard.refuse_next() for _ in range(count)]


def test_above_the_threshold_every_new_stream_is_refused() -> None:
    guard = LagGuard(SETTINGS)
    play(guard, 0.2, 0.0, 1.0)
    assert guard.shedding and guard.refused_share == 1.0
    assert refusals(guard, 5) == [True] * 5


def test_between_the_bounds_a_share_falling_with_the_lag_is_refused_evenly() -> None:
    guard = LagGuard(SETTINGS)
    play(guard, 0.2, 0.0, 1.0)  # shedding
    play(guard, 0.035, 1.0, 2.0)  # then 35 ms: halfway between 20 and 50
    assert guard.shedding
    assert guard.refused_share == pytest.approx(0.5, abs=0.01)
    assert refusals(guard, 6) == [False, True] * 3
    play(guard, 0.026, 3.0, 2.0)  # 26 ms: a fifth of the way
    assert guard.refused_share == pytest.approx(0.2, abs=0.01)
    assert sum(refusals(guard, 100)) == pytest.approx(20, abs=1)


def test_the_lag_alone_never_refuses_before_shedding_starts() -> None:
    guard = LagGuard(SETTINGS)
    play(guard, 0.045, 0.0, 2.0)  # in the band, but never above the threshold
    assert not guard.shedding and guard.refused_share == 0.0
    assert refusals(guard, 5) == [False] * 5


def test_below_the_clear_bound_none_are_refused_while_the_hold_runs() -> None:
    guard = LagGuard(SETTINGS)
    play(guard, 0.2, 0.0, 1.0)
    play(guard, 0.0, 1.0, 0.5)  # clear, but not yet for the whole hold
    assert guard.shedding and guard.refused_share == 0.0
    assert refusals(guard, 5) == [False] * 5


@pytest.mark.parametrize(("method", "path", "new"), [
    ("POST", "/v1/chat/completions", True),
    ("POST", "/v1/completions", True),
    ("POST", "/v1/responses", True),
    ("POST", "/v1/embeddings", True),
    ("POST", "/chat", True),
    ("POST", "/v1/responses/resp_1/cancel", False),  # ends work: never refused
    ("POST", "/v1/chat/completions/chatcmpl_1/cancel", False),
    ("GET", "/v1/responses/resp_1", False),  # a reader of a stream already running
    ("GET", "/healthz", False),
    ("GET", "/readyz", False),
    ("GET", "/metrics", False),
    ("GET", "/v1/models", False),
    ("OPTIONS", "/v1/chat/completions", False),  # a CORS preflight
])
def test_only_requests_that_start_work_are_refused(method: str, path: str, new: bool) -> None:
    assert is_new_work({"method": method, "path": path}) is new  # type: ignore[typeddict-item]


async def test_the_monitor_measures_how_late_the_loop_runs(
        autojump_clock: trio.testing.MockClock) -> None:
    """Under virtual time the loop is never late, until a task blocks it for real."""
    autojump_clock.rate = 0  # virtual time moves only by autojump
    guard = LagGuard(SETTINGS)
    async with trio.open_nursery() as nursery:
        scope = await nursery.start(guard.serve)
        await trio.sleep(5.0)
        assert guard.lag < 1e-9 and not guard.shedding  # (float sums of virtual times)
        autojump_clock.rate = 1.0  # virtual time follows real time: blocking shows
        for _ in range(20):
            time.sleep(0.1)  # noqa: ASYNC251  (a task that holds the loop: CPU work, say)
            await trio.lowlevel.checkpoint()
        assert guard.shedding
        assert guard.lag > SETTINGS.lag_threshold
        scope.cancel()
