"""What each scenario offers, in its full and its ``--quick`` form.

A scenario is an upstream behaviour plus a load shape; `run` plays it against
every target (direct, nginx, Sluice) with the same numbers. Streams open at a
steady rate over ``ramp`` seconds, run ``warm`` more seconds, and are then
measured for ``duration`` seconds (see `loadgen`); each stream is a closed
loop of requests on one keep-alive connection.

Upstream choice (``--upstream auto``): the fake upstream (``sluice
fake-upstream``) where it keeps up — one stream, and the unpaced scenarios,
where it coalesces its writes; the bench's `pacer` (same bytes, one epoll
loop) for the paced multi-stream scenarios. Measured on the 2-core machine,
sharing core 1 with the load generator, the fake's paced path costs ~30 µs
of CPU per chunk: it tops out near 20k chunks/s (stream-1000 needs 50k),
holds only ~6,800 of 10,000 idle streams, and its own TTFB p99 at 100
streams (7–10 ms) is above the 5 ms target being checked. ``--upstream
fake`` forces the fake everywhere (to measure exactly that).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any


@dataclass(frozen=True, slots=True)
class BenchScenario:
    name: str
    title: str
    upstream: str
    """``fake`` (sluice fake-upstream) or ``pacer`` (tests.bench.pacer)."""
    upstream_scenario: str
    load: dict[str, Any]
    """`loadgen.LoadSpec` fields: streams, tokens, ramp, warm, duration, ..."""
    repeats: int = 1
    tps: float = 0.0
    note: str = ""
    warmup_requests: int = 20
    rows: tuple[str, ...] = field(default=())
    capacity_factor: float = 0.0
    """If set: first measure how many of these streams one Sluice worker relays (`run.
    measure_capacity`), then offer this many times that (``load["streams"]`` is replaced)."""
    extra_targets: tuple[str, ...] = ()
    """Columns only this scenario has (``sluice-noshed``: Sluice with ``[overload]`` off)."""

    @property
    def offered_cps(self) -> float | None:
        """Content chunks per second offered (paced scenarios only)."""
        return self.load["streams"] * self.tps if self.tps else None

    def run_seconds(self) -> float:
        load = self.load
        if load.get("requests_per_stream"):
            per_request = load["tokens"] / self.tps if self.tps else 0.01
            return float(load["requests_per_stream"] * per_request + 0.5)
        return float(load.get("ramp", 0.0) + load.get("warm", 0.0) + load.get("duration", 0.0))


def _paced(tps: float) -> str:
    return f"tokens=1000000,tps={tps:g},timestamps=true"


_ROWS_LATENCY = ("ttfb_p50", "ttfb_p99", "ttfb_overhead_p50", "ttfb_overhead_p99",
                 "lat_p50", "lat_p99", "lat_added_p50", "lat_added_p99", "errors")
_ROWS_LOAD = ("relay_cpu_cores", "relay_us_per_chunk", "relay_s_per_1k", "relay_rss_max_mb",
              "load_cpu_cores", "upstream_cpu_cores", "load_core_busy", "relay_core_busy",
              "relay_core_other", "steal")
_ROWS_LAG = ("lag_p50", "lag_p99", "lag_over_100ms")
_ROWS_KEYS = ("relay_ms_per_request", "keys_added_ms_per_request", "keys_added_us_per_chunk",
              "redis_cpu_cores")

_ROWS_OVERLOAD = ("streams_offered", "refused_share", "refusal_p50", "refusal_p99",
                  "ttfb_p50", "ttfb_p99", "lat_p50", "lat_p99", "chunks_per_s",
                  "errors_other", "relay_cpu_cores", "relay_us_per_chunk", "lag_p50",
                  "lag_p99", "lag_over_100ms", "lag_samples", "load_core_busy",
                  "relay_core_other")

OVERLOAD = BenchScenario(
    "overload", "twice what one worker relays: streams @ 50 tok/s, 250 chunks each (5 s)",
    "pacer", _paced(50), tps=50, repeats=1, capacity_factor=2.0,
    extra_targets=("sluice-noshed",),
    load={"streams": 0, "tokens": 250, "ramp": 4.0, "warm": 2.0, "duration": 10.0,
          "latency_every": 10, "refused_retry_delay": 1.0},
    note="streams open over the ramp and loop (a new request every 5 s); a refused one "
         "waits 1 s (the Retry-After) and asks again; TTFB and chunk latency are the "
         "admitted streams'",
    rows=_ROWS_OVERLOAD)

FULL: tuple[BenchScenario, ...] = (
    BenchScenario(
        "ttfb-1", "1 stream, 200 sequential requests of 3 chunks @ 50 tok/s",
        "fake", _paced(50), tps=50, repeats=2,
        load={"streams": 1, "tokens": 3, "requests_per_stream": 200, "duration": 120.0},
        rows=(*_ROWS_LATENCY, "relay_core_other", "steal")),
    BenchScenario(
        "stream-100", "100 concurrent streams @ 50 tok/s, 100 chunks each (closed loop)",
        "pacer", _paced(50), tps=50, repeats=3, extra_targets=("sluice-noshed",),
        note="sluice-noshed: the same Sluice with the overload guard off, so a worker that "
             "falls behind on a busy machine still relays every stream (CPU per chunk "
             "without refusals mixed in)",
        load={"streams": 100, "tokens": 100, "ramp": 2.0, "warm": 0.0, "duration": 6.0},
        rows=("chunks_per_s", "offered_cps", *_ROWS_LATENCY, *_ROWS_LOAD, *_ROWS_LAG,
              *_ROWS_KEYS)),
    BenchScenario(
        "stream-1000", "1,000 concurrent streams @ 50 tok/s (50k chunks/s offered)",
        "pacer", _paced(50), tps=50, repeats=2,
        load={"streams": 1000, "tokens": 1000, "ramp": 4.0, "warm": 1.0, "duration": 8.0,
              "latency_every": 20},
        note="streams open at 250/s during the ramp; TTFB covers those opens",
        rows=("chunks_per_s", "offered_cps", "ttfb_p50", "ttfb_p99", "lat_p50", "lat_p99",
              "lat_added_p99", "errors", *_ROWS_LOAD, "gc_share", "gc_max_pause_ms",
              *_ROWS_LAG, *_ROWS_KEYS)),
    BenchScenario(
        "saturate-100", "saturation: 100 streams, no pacing (tps=0), 1M tokens each",
        "fake", "tokens=1000000,tps=0,timestamps=true", repeats=3,
        load={"streams": 100, "tokens": 1_000_000, "ramp": 0.5, "warm": 1.5, "duration": 5.0,
              "latency": False},
        note="unpaced, the fake upstream serves its streams unevenly: TTFB is not a metric here",
        rows=("chunks_per_s", "live_max", "errors", *_ROWS_LOAD, *_ROWS_KEYS)),
    BenchScenario(
        "idle-5000", "5,000 mostly idle streams (1 chunk/s each)",
        "pacer", _paced(1), tps=1, repeats=1,
        load={"streams": 5000, "tokens": 1000, "ramp": 20.0, "warm": 2.0, "duration": 8.0,
              "latency_every": 5},
        note="streams open at 250/s",
        rows=("live_max", "chunks_per_s", "offered_cps", "ttfb_p50", "ttfb_p99", "lat_p99",
              "errors", "relay_rss_start_mb", "relay_rss_max_mb", "rss_per_stream_kb",
              *_ROWS_LOAD[:3], "load_core_busy", "relay_core_other", "steal",
              "gc_share", "gc_max_pause_ms")),
    BenchScenario(
        "idle-10000", "10,000 mostly idle streams (1 chunk/s each)",
        "pacer", _paced(1), tps=1, repeats=1,
        load={"streams": 10000, "tokens": 1000, "ramp": 40.0, "warm": 2.0, "duration": 8.0,
              "latency_every": 10},
        note="streams open at 250/s",
        rows=("live_max", "chunks_per_s", "offered_cps", "ttfb_p50", "ttfb_p99", "lat_p99",
              "errors", "relay_rss_start_mb", "relay_rss_max_mb", "rss_per_stream_kb",
              *_ROWS_LOAD[:3], "load_core_busy", "relay_core_other", "steal",
              "gc_share", "gc_max_pause_ms")),
    BenchScenario(
        "open-rate", "stream churn: 50 connections, 1-chunk streams back to back (tps=0)",
        "fake", "tokens=1,tps=0,timestamps=true", repeats=2,
        load={"streams": 50, "tokens": 1, "ramp": 0.0, "warm": 1.0, "duration": 5.0,
              "latency": False},
        note="what opening a stream costs: requests/s and relay CPU per request (the "
             "worker is saturated by design, so sluice-noshed, without the overload guard, "
             "is the open cost; sluice sheds part of the churn)",
        extra_targets=("sluice-noshed",),
        rows=("responses_per_s", "ttfb_p50", "ttfb_p99", "errors", "relay_cpu_cores",
              "relay_ms_per_request", "load_cpu_cores", "upstream_cpu_cores",
              "load_core_busy", "relay_core_other", "steal", "keys_added_ms_per_request",
              "redis_cpu_cores")),
    OVERLOAD,
)


def _quick() -> tuple[BenchScenario, ...]:
    full = {s.name: s for s in FULL}

    def shrink(name: str, repeats: int = 1, **load: Any) -> BenchScenario:
        base = full[name]
        return replace(base, repeats=repeats, load={**base.load, **load})

    idle = full["idle-5000"]
    return (
        replace(shrink("ttfb-1", requests_per_stream=100),
                title="1 stream, 100 sequential requests of 3 chunks @ 50 tok/s"),
        shrink("stream-100", ramp=1.0, duration=4.0),
        shrink("stream-1000", ramp=3.0, warm=1.0, duration=4.0),
        shrink("saturate-100", duration=3.0),
        replace(idle, name="idle-2000", title="2,000 mostly idle streams (1 chunk/s each)",
                load={**idle.load, "streams": 2000, "ramp": 8.0, "warm": 1.0,
                      "duration": 3.0}),
        shrink("open-rate", duration=3.0),
        shrink("overload", ramp=3.0, warm=1.0, duration=6.0),
    )


QUICK: tuple[BenchScenario, ...] = _quick()


def select(names: list[str], quick: bool, upstream: str = "auto") -> list[BenchScenario]:
    """The scenarios to run: all of the set, or the named ones (from either set).

    `upstream` ``fake`` or ``pacer`` overrides the choice for paced scenarios (the
    pacer does not play unpaced ones).
    """
    chosen = QUICK if quick else FULL
    known = {s.name: s for s in (*FULL, *QUICK)}
    preferred = {s.name: s for s in chosen}
    missing = [n for n in names if n not in known]
    if missing:
        raise SystemExit(f"unknown scenario {', '.join(missing)}; known: "
                         f"{', '.join(sorted(known))}")
    picked = [preferred.get(n, known[n]) for n in names] if names else list(chosen)
    if upstream in ("fake", "pacer"):
        picked = [replace(s, upstream=upstream) if s.tps else s for s in picked]
    return picked
