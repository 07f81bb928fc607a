"""From raw load results to what a reader sees: per-run metrics, medians, tables, targets.

`metrics` flattens one `loadgen.LoadResult` (plus the relay's gc numbers,
when the variant reports them) into named values; `median_metrics` takes the
median of each over the repeats; `derive` adds the *overhead* rows, each the
target's median minus the direct median from the same run; `table` prints
one scenario with the targets side by side and the Sluice/nginx ratio.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

Metrics = dict[str, float | None]

HOW_TO_READ = """\
How to read this
  * Columns: "direct" = the load generator talks to the upstream itself (the floor);
    "nginx" = nginx (proxy_buffering off) in front of the same upstream; "sluice" = the
    gateway under test; sluice+X = Sluice started with a bench-only tweak X (variants);
    "sluice-keys" = Sluice requiring an API key whose every limit (rpm, tpm, streams,
    budgets, spend) is on, never reached, and kept in a local redis-server (on core 1).
    The last column is sluice / nginx (lower is better for times and CPU).
  * Cores: the relay under test (Sluice's hypercorn worker, or nginx's worker) is pinned
    alone to core 0; the upstream, the load generator and this script share core 1.
    "load core busy" (from /proc/stat, softirq included: loopback TCP work lands there)
    near 100% means the tools, not the relay, set the pace; "relay CPU" near 1.00 means
    the relay is saturated. "relay core: other than the relay" is CPU on core 0 spent by
    anything else (softirq, or other people's processes on a shared machine): in the
    direct column, where no relay runs, it is pure interference. Non-zero "steal" means
    the VM lost CPU to its host.
  * TTFB = request written -> first response byte. Per-chunk latency = arrival time -
    the upstream's send time stamped in each chunk ("sent_at", same clock). "overhead"
    and "added" rows subtract the direct column's median from the same run.
  * chunks/s counts content chunks delivered in the measurement window (after the
    ramp); "offered" is streams x tok/s. Errors are non-200s, resets, truncated
    streams (no [DONE], wrong chunk count), in-band errors and requests never answered.
  * relay CPU us/chunk = relay CPU seconds in the window / chunks delivered; x1000 it is
    "CPU seconds per 1,000 chunks" (the JSON has both). RSS per live stream = (peak RSS -
    RSS before the run) / peak live streams.
  * Values are medians over the repeats shown in each title; raw runs are in bench.json.
"""


@dataclass(frozen=True, slots=True)
class Row:
    label: str
    unit: str
    digits: int
    better: str = "lower"


ROWS: Mapping[str, Row] = {
    "chunks_per_s": Row("chunks/s delivered", "", 0, "higher"),
    "offered_cps": Row("chunks/s offered", "", 0, "higher"),
    "responses_per_s": Row("streams completed/s", "", 0, "higher"),
    "live_max": Row("live streams (peak)", "", 0, "higher"),
    "ttfb_p50": Row("TTFB p50", "ms", 2),
    "ttfb_p99": Row("TTFB p99", "ms", 2),
    "ttfb_overhead_p50": Row("TTFB overhead p50 (vs direct)", "ms", 2),
    "ttfb_overhead_p99": Row("TTFB overhead p99 (vs direct)", "ms", 2),
    "lat_p50": Row("chunk latency p50", "ms", 2),
    "lat_p99": Row("chunk latency p99", "ms", 2),
    "lat_added_p50": Row("added chunk latency p50", "ms", 2),
    "lat_added_p99": Row("added chunk latency p99", "ms", 2),
    "errors": Row("errors", "", 0),
    "errors_other": Row("errors other than refusals (503)", "", 0),
    "streams_offered": Row("streams offered (2x capacity)", "", 0),
    "refused_share": Row("requests refused (503)", "%", 1),
    "refusal_p50": Row("time to refusal p50", "ms", 2),
    "refusal_p99": Row("time to refusal p99", "ms", 2),
    "lag_p50": Row("Sluice loop lag p50 (<= bucket bound)", "ms", 0),
    "lag_p99": Row("Sluice loop lag p99 (<= bucket bound)", "ms", 0),
    "lag_over_100ms": Row("Sluice loop lag samples over 100 ms", "%", 1),
    "lag_samples": Row("Sluice loop lag samples taken", "", 0, "higher"),
    "relay_cpu_cores": Row("relay CPU", "cores", 2),
    "relay_us_per_chunk": Row("relay CPU per chunk", "us", 1),
    "relay_s_per_1k": Row("relay CPU per 1,000 chunks", "s", 4),
    "relay_ms_per_request": Row("relay CPU per stream", "ms", 2),
    "relay_rss_start_mb": Row("relay RSS before", "MB", 0),
    "relay_rss_max_mb": Row("relay RSS peak", "MB", 0),
    "rss_per_stream_kb": Row("RSS per live stream", "KB", 1),
    "gc_share": Row("gc share of relay CPU", "%", 1),
    "gc_max_pause_ms": Row("gc longest pause", "ms", 1),
    "load_cpu_cores": Row("load gen CPU", "cores", 2),
    "upstream_cpu_cores": Row("upstream CPU", "cores", 2),
    "load_core_busy": Row("load core (1) busy, incl. softirq", "%", 0),
    "relay_core_busy": Row("relay core (0) busy, incl. softirq", "%", 0),
    "relay_core_other": Row("relay core (0): other than the relay", "%", 0),
    "steal": Row("hypervisor steal, both cores", "%", 1),
    "redis_cpu_cores": Row("Redis CPU (sluice-keys)", "cores", 2),
    "keys_added_ms_per_request": Row("keys+Redis: added relay CPU per stream", "ms", 3),
    "keys_added_us_per_chunk": Row("keys+Redis: added relay CPU per chunk", "us", 1),
}


def metrics(result: Mapping[str, Any], gc: Mapping[str, float] | None = None) -> Metrics:
    """Named values of one run (None where they do not apply)."""
    window = max(float(result["window_s"]), 1e-9)
    chunks = int(result["chunks_window"])
    monitored: Mapping[str, Mapping[str, float]] = result["monitored"]
    relay = monitored.get("relay")
    upstream = monitored.get("upstream")
    redis = monitored.get("redis")
    out: Metrics = {
        "chunks_per_s": result["chunks_per_s"],
        "responses_per_s": result["responses_window"] / window,
        "live_max": result["live_max"],
        "ttfb_p50": result["ttfb_ms"].get("p50"),
        "ttfb_p99": result["ttfb_ms"].get("p99"),
        "lat_p50": result["latency_ms"].get("p50"),
        "lat_p99": result["latency_ms"].get("p99"),
        "errors": float(sum(result["errors"].values())),
        "errors_other": float(sum(n for kind, n in result["errors"].items()
                                  if kind != "status_503")),
        "streams_offered": float(result["streams"]),
        "load_cpu_cores": result["load_cpu_frac"],
        "upstream_cpu_cores": upstream["cpu_s"] / window if upstream else None,
        "redis_cpu_cores": redis["cpu_s"] / window if redis else None,
    }
    refused, admitted = result.get("refused", 0), result.get("admitted", 0)
    if refused + admitted:
        out["refused_share"] = 100.0 * refused / (refused + admitted)
        out["refusal_p50"] = result["refusal_ms"].get("p50")
        out["refusal_p99"] = result["refusal_ms"].get("p99")
    lag: Mapping[str, float] = result.get("lag_buckets", {})
    if lag.get("+Inf"):  # Sluice's raw loop-lag samples over the run (cumulative buckets)
        out.update(lag_summary(lag))
    if relay:
        cpu = relay["cpu_s"]
        out["relay_cpu_cores"] = cpu / window
        out["relay_us_per_chunk"] = cpu / chunks * 1e6 if chunks else None
        out["relay_s_per_1k"] = cpu / chunks * 1000 if chunks else None
        responses = result["responses_window"]
        out["relay_ms_per_request"] = cpu / responses * 1000 if responses else None
        out["relay_rss_start_mb"] = relay["rss_start_kb"] / 1024
        out["relay_rss_max_mb"] = relay["rss_max_kb"] / 1024
        live = result["live_max"]
        out["rss_per_stream_kb"] = (relay["rss_max_kb"] - relay["rss_start_kb"]) / live \
            if live else None
        if gc is not None and cpu > 0:
            out["gc_share"] = 100.0 * gc["seconds"] / cpu
            out["gc_max_pause_ms"] = gc["max_pause_s"] * 1000
    cores: Mapping[str, Mapping[str, float]] = result.get("cores", {})
    if "cpu0" in cores and "cpu1" in cores:
        relay_busy = 100 * cores["cpu0"]["busy"]
        relay_share = relay["cpu_s"] / window if relay else 0.0
        out["relay_core_busy"] = relay_busy
        out["relay_core_other"] = max(0.0, relay_busy - 100 * relay_share)
        out["load_core_busy"] = 100 * cores["cpu1"]["busy"]
        out["steal"] = 100 * (cores["cpu0"]["steal"] + cores["cpu1"]["steal"]) / 2
    return out


def lag_summary(buckets: Mapping[str, float]) -> Metrics:
    """p50/p99 of the loop-lag samples (as their bucket's upper bound, ms), the share over
    100 ms, and the samples taken per second of the run's length."""
    total = buckets["+Inf"]
    bounds = sorted((float(le), count) for le, count in buckets.items())

    def quantile(q: float) -> float:
        return next(1000 * le for le, count in bounds if count >= q * total)

    over = total - buckets.get("0.1", total)
    return {"lag_p50": quantile(0.5), "lag_p99": quantile(0.99),
            "lag_over_100ms": 100.0 * over / total, "lag_samples": total}


def median_metrics(runs: Sequence[Metrics]) -> Metrics:
    keys = {key for run in runs for key in run}
    out: Metrics = {}
    for key in sorted(keys):
        values = [v for run in runs if (v := run.get(key)) is not None]
        out[key] = statistics.median(values) if values else None
    return out


def derive(medians: dict[str, Metrics], offered: float | None) -> None:
    """Add offered load and the rows relative to the direct column, in place; and what
    keys with Redis add to the sluice column's CPU (the sluice-keys column's rows)."""
    plain, keyed = medians.get("sluice"), medians.get("sluice-keys")
    if plain is not None and keyed is not None:
        for row, base in (("keys_added_ms_per_request", "relay_ms_per_request"),
                          ("keys_added_us_per_chunk", "relay_us_per_chunk")):
            mine, ref = keyed.get(base), plain.get(base)
            keyed[row] = None if mine is None or ref is None else mine - ref
    direct = medians.get("direct", {})
    for target, values in medians.items():
        values["offered_cps"] = offered
        for row, base in (("ttfb_overhead_p50", "ttfb_p50"), ("ttfb_overhead_p99", "ttfb_p99"),
                          ("lat_added_p50", "lat_p50"), ("lat_added_p99", "lat_p99")):
            mine, floor = values.get(base), direct.get(base)
            values[row] = None if target == "direct" or mine is None or floor is None \
                else mine - floor


def _fmt(value: float | None, row: Row) -> str:
    if value is None:
        return "—"
    if row.digits == 0:
        return f"{value:,.0f}"
    return f"{value:,.{row.digits}f}"


def table(title: str, rows: Sequence[str], medians: Mapping[str, Metrics],
          targets: Sequence[str]) -> str:
    """One scenario: a row per metric, a column per target, then sluice/nginx."""
    ratio_of = "sluice" if "sluice" in targets else None
    show_ratio = ratio_of is not None and "nginx" in targets
    headers = ["metric", *targets] + (["sluice/nginx"] if show_ratio else [])
    lines: list[list[str]] = []
    for key in rows:
        row = ROWS[key]
        label = f"{row.label} ({row.unit})" if row.unit else row.label
        cells = [label]
        for target in targets:
            cells.append(_fmt(medians.get(target, {}).get(key), row))
        if show_ratio:
            mine = medians.get("sluice", {}).get(key)
            ref = medians.get("nginx", {}).get(key)
            if mine is None or ref is None or key in ("errors", "offered_cps", "live_max") \
                    or abs(ref) < 1e-9:
                cells.append("")
            else:
                cells.append(f"{mine / ref:,.1f}x")
        lines.append(cells)
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(headers)]
    out = [title, "  ".join(h.ljust(widths[0]) if i == 0 else h.rjust(widths[i])
                           for i, h in enumerate(headers))]
    out.append("  ".join("-" * w for w in widths))
    for line in lines:
        out.append("  ".join(c.ljust(widths[0]) if i == 0 else c.rjust(widths[i])
                             for i, c in enumerate(line)))
    return "\n".join(out)


@dataclass(frozen=True, slots=True)
class Target:
    """One of the issue's targets: a scenario's metric against a bound."""

    text: str
    scenario: str
    metric: str
    bound: float
    at_most: bool = True
    needs_all_live: bool = False
    """Only meaningful if Sluice held (nearly) all the scenario's streams at once."""


TARGETS: tuple[Target, ...] = (
    Target("TTFB overhead p50 <= 1 ms at 1 stream", "ttfb-1", "ttfb_overhead_p50", 1.0),
    Target("100 streams: TTFB p99 <= 5 ms", "stream-100", "ttfb_p99", 5.0),
    Target("100 streams: added chunk latency p99 <= 5 ms", "stream-100", "lat_added_p99", 5.0),
    Target("1,000 streams: >= 45k chunks/s delivered", "stream-1000", "chunks_per_s", 45000.0,
           at_most=False),
    Target("1,000 streams: TTFB p99 <= 250 ms", "stream-1000", "ttfb_p99", 250.0),
    Target("1,000 streams: zero errors", "stream-1000", "errors", 0.0),
    Target("1,000 streams: CPU per relayed chunk <= 40 us", "stream-1000",
           "relay_us_per_chunk", 40.0),
    Target("10,000 idle streams: zero errors", "idle-10000", "errors", 0.0),
    Target("10,000 idle streams: RSS <= 1.5 GB", "idle-10000", "relay_rss_max_mb", 1536.0,
           needs_all_live=True),
)


def targets_table(results: Mapping[str, Mapping[str, Metrics]],
                  notes: Mapping[str, str] | None = None) -> tuple[str, list[dict[str, Any]]]:
    """The issue's targets, met or not, with nginx's value from the same run.

    `notes` (scenario -> text) are printed under the table for the scenarios it uses.
    """
    header = ["target", "sluice", "nginx", "sluice/nginx", "verdict"]
    lines: list[list[str]] = []
    records: list[dict[str, Any]] = []
    for target in TARGETS:
        medians = results.get(target.scenario)
        row = ROWS[target.metric]
        mine = medians.get("sluice", {}).get(target.metric) if medians else None
        ref = medians.get("nginx", {}).get(target.metric) if medians else None
        live = medians.get("sluice", {}).get("live_max") if medians else None
        expected = medians.get("direct", {}).get("live_max") if medians else None
        if mine is None:
            verdict = "not run"
        elif target.needs_all_live and live is not None and expected and live < 0.95 * expected:
            verdict = f"not reached: {live:,.0f} of {expected:,.0f} live"
            start = medians.get("sluice", {}).get("relay_rss_start_mb") if medians else None
            per = medians.get("sluice", {}).get("rss_per_stream_kb") if medians else None
            if start is not None and per is not None:
                verdict += f" (~{start + per * expected / 1024:,.0f} MB extrapolated)"
        elif (mine <= target.bound) if target.at_most else (mine >= target.bound):
            verdict = "met"
        else:
            verdict = "NOT met"
        ratio = f"{mine / ref:,.1f}x" if mine is not None and ref and target.metric != "errors" \
            else ""
        lines.append([target.text, _fmt(mine, row), _fmt(ref, row), ratio, verdict])
        records.append({"target": target.text, "scenario": target.scenario,
                        "metric": target.metric, "bound": target.bound, "sluice": mine,
                        "nginx": ref, "verdict": verdict})
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(header)]
    last = len(header) - 1

    def join(cells: list[str]) -> str:
        return "  ".join(c.ljust(widths[i]) if i in (0, last) else c.rjust(widths[i])
                         for i, c in enumerate(cells)).rstrip()

    out = ["== targets (issue 4) ==", join(header), join(["-" * w for w in widths])]
    out += [join(line) for line in lines]
    used = dict.fromkeys(t.scenario for t in TARGETS)
    for name in used:
        if notes and notes.get(name):
            out.append(f"  note, {name}: {notes[name]}")
    return "\n".join(out), records


def keys_table(results: Mapping[str, Mapping[str, Metrics]]) -> str:
    """What API keys with the Redis store add, scenario by scenario, against plain Sluice
    in the same run: relay CPU per stream open and per chunk, TTFB, and Redis's own CPU."""
    lines = ["== API keys + Redis store vs plain Sluice, same run (medians) ==",
             f"{'scenario':14} {'CPU/stream ms':>22} {'CPU/chunk us':>20} "
             f"{'TTFB p50 ms':>18} {'Redis CPU':>9}"]
    found = False
    for name, medians in results.items():
        plain, keyed = medians.get("sluice"), medians.get("sluice-keys")
        if not plain or not keyed:
            continue
        found = True

        def pair(key: str, digits: int, plain: Metrics = plain, keyed: Metrics = keyed) -> str:
            a, b = plain.get(key), keyed.get(key)
            if a is None or b is None:
                return "—"
            return f"{a:.{digits}f} -> {b:.{digits}f} ({b - a:+.{digits}f})"

        redis = keyed.get("redis_cpu_cores")
        lines.append(f"{name:14} {pair('relay_ms_per_request', 3):>22} "
                     f"{pair('relay_us_per_chunk', 1):>20} {pair('ttfb_p50', 2):>18} "
                     f"{'—' if redis is None else f'{redis:.2f}':>9}")
    return "\n".join(lines) if found else ""
