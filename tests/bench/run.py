"""``python -m tests.bench.run``: every scenario against direct, nginx and Sluice, side by side.

    python -m tests.bench.run --out bench-results/             # full set (~10 min)
    python -m tests.bench.run --quick                          # reduced set (~2 min)
    python -m tests.bench.run --scenario stream-1000 --scenario idle-10000
    python -m tests.bench.run --quick --variants gc-stats,gc-off

For each scenario a fresh upstream, nginx and Sluice are started (so memory
and gc state do not leak between scenarios); each target then gets the same
load from a separate load-generator process, the targets taking turns within
each repeat. Tables are printed as scenarios finish, then the issue's
targets; ``DIR/bench.json`` holds the raw results and the machine's facts.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from importlib import metadata
from pathlib import Path
from typing import Any

from server.keys.secret import new_key
from tests.bench import processes, procfs
from tests.bench.loadgen import DRIVERS, LoadSpec, raise_fd_limit
from tests.bench.processes import LOAD_CORE, Proc
from tests.bench.report import (
    HOW_TO_READ,
    Metrics,
    derive,
    keys_table,
    median_metrics,
    metrics,
    table,
    targets_table,
)
from tests.bench.scenarios import BenchScenario, select
from tests.bench.variants import VARIANTS, known

LOADGEN_SLACK = 90.0  # seconds beyond a run's planned length before the load process is killed
# The overload scenario's capacity probe: this many paced streams (more than a worker
# relays), measured for this long; a worker using this share of a core is saturated.
PROBE_STREAMS = 400
PROBE_SECONDS = 4.0
SATURATED = 0.9
# Sluice with shedding off but its loop lag still measured (a threshold never reached).
NOSHED_CONFIG = "\n[overload]\nlag_threshold_ms = 1000000000\n"


@dataclass
class Options:
    out: Path
    quick: bool
    scenarios: list[str]
    targets: list[str]
    variants: list[str]
    driver: str
    repeats: int | None
    install: bool
    upstream: str
    streams: int | None = None
    """Override the stream count (and skip a capacity measurement): A/B runs at one load."""


@dataclass
class ScenarioResult:
    scenario: BenchScenario
    runs: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    medians: dict[str, Metrics] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)

    def columns(self) -> list[str]:
        return [t for t in self.runs if self.runs[t]]


def parse_args(argv: list[str] | None) -> Options:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.run",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench-results", help="directory for bench.json")
    parser.add_argument("--quick", action="store_true", help="reduced set, about 2 minutes")
    parser.add_argument("--scenario", action="append", default=[],
                        help="run only this scenario (repeatable)")
    parser.add_argument("--targets", default="direct,nginx,sluice,sluice-keys",
                        help="comma-separated subset of direct,nginx,sluice,sluice-keys "
                             "(sluice-keys: with an API key whose limits live in Redis)")
    parser.add_argument("--variants", default="",
                        help=f"extra Sluice columns with a start-up tweak: {', '.join(VARIANTS)}")
    parser.add_argument("--loadgen", default="epoll", choices=DRIVERS,
                        help="load generator driver (default %(default)s)")
    parser.add_argument("--repeats", type=int, help="override every scenario's repeat count")
    parser.add_argument("--upstream", default="auto", choices=("auto", "fake", "pacer"),
                        help="upstream for the paced scenarios (default: pacer where the fake "
                             "cannot keep up; see tests/bench/scenarios.py)")
    parser.add_argument("--no-install", action="store_true",
                        help="do not apt-get nginx when it is missing")
    parser.add_argument("--streams", type=int,
                        help="override every scenario's stream count (the overload scenario "
                             "then skips measuring capacity): to compare two runs at one load")
    parser.add_argument("--list", action="store_true", help="list the scenarios and exit")
    args = parser.parse_args(argv)
    if args.list:
        for scenario in select([], args.quick, args.upstream):
            print(f"{scenario.name:14} {scenario.title}")
        raise SystemExit(0)
    targets = [t for t in args.targets.split(",") if t]
    unknown = set(targets) - {"direct", "nginx", "sluice", "sluice-keys"}
    if unknown:
        parser.error(f"unknown targets {', '.join(sorted(unknown))}")
    variants = [v for v in args.variants.split(",") if v]
    for variant in variants:
        if not known(variant):
            parser.error(f"unknown variant {variant!r}")
    return Options(Path(args.out), args.quick, args.scenario, targets, variants, args.loadgen,
                   args.repeats, not args.no_install, args.upstream, args.streams)


def machine_info(nginx_note: str) -> dict[str, Any]:
    cpu_model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    mem_kb = 0
    with contextlib.suppress(OSError, ValueError, IndexError):
        mem_kb = int(Path("/proc/meminfo").read_text().split()[1])
    versions = {}
    for name in ("trio", "hypercorn", "quart", "quart-trio", "httpx", "httpcore", "h11",
                 "orjson", "prometheus-client"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[name] = metadata.version(name)
    commit = ""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=processes.REPO,
                                capture_output=True, text=True, timeout=5,
                                check=False).stdout.strip()
    return {
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "cpu_model": cpu_model,
        "cpus": os.cpu_count(),
        "affinity": sorted(os.sched_getaffinity(0)),
        "memory_gb": round(mem_kb / 1024 / 1024, 1),
        "fd_limit": raise_fd_limit(),
        "packages": versions,
        "nginx": nginx_note,
        "commit": commit,
    }


def background_load(seconds: float = 1.0) -> tuple[float, list[tuple[str, float]]]:
    """How busy the machine is before we start (cores) and the busiest processes on it.

    The benchmark shares the machine with whatever else runs; on a shared host other
    people's test suites land on the relay core too. Measured, not assumed.
    """
    def snapshot() -> dict[int, float]:
        found: dict[int, float] = {}
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                found[int(entry.name)] = procfs.cpu_seconds(int(entry.name))
        return found

    before_cores, before = procfs.cpu_times(), snapshot()
    time.sleep(seconds)
    after_cores, after = procfs.cpu_times(), snapshot()
    usage = procfs.core_usage(before_cores, after_cores)
    busy = sum(core["busy"] for core in usage.values())
    me = os.getpid()
    hogs = sorted(((procfs.cmdline(pid)[:80] or str(pid), (cpu - before.get(pid, cpu)) / seconds)
                   for pid, cpu in after.items() if pid != me), key=lambda item: -item[1])
    return busy, [hog for hog in hogs[:3] if hog[1] >= 0.05]


def run_loadgen(spec: LoadSpec, limit: float) -> dict[str, Any]:
    """One load-generator process on the load core; its JSON result."""
    argv = [sys.executable, "-m", "tests.bench.loadgen", spec.to_json()]
    popen = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             cwd=processes.REPO, start_new_session=True)
    processes.pin(popen.pid, LOAD_CORE)
    try:
        out, err = popen.communicate(timeout=limit)
    except subprocess.TimeoutExpired:
        popen.kill()
        popen.communicate()
        raise RuntimeError(f"the load generator ran over {limit:.0f} s and was killed") from None
    finally:
        if popen.poll() is None:
            popen.kill()
            popen.wait()
    if popen.returncode != 0:
        raise RuntimeError(f"the load generator failed ({popen.returncode}): "
                           f"{err.decode(errors='replace')[-2000:]}")
    result: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    return result


def measure_capacity(scenario: BenchScenario, sluice: Proc, upstream_pid: int,
                     driver: str) -> float:
    """How many of `scenario`'s paced streams one Sluice worker relays, at most.

    `PROBE_STREAMS` streams — about what a worker carries on a quiet core (the journal's
    scaling run: 400 streams used a whole core) — run for `PROBE_SECONDS`; the chunks it
    delivers per second, divided by the streams' token rate, is its capacity.
    (Extrapolating from a lighter load's CPU per chunk undercounts it: a loop that falls
    behind batches its writes, and each chunk gets cheaper.) Should the worker not
    saturate (less than `SATURATED` of a core), its rate is scaled to a whole core.
    """
    spec = LoadSpec(port=sluice.port, driver=driver, streams=PROBE_STREAMS,
                    tokens=scenario.load["tokens"], ramp=2.0, warm=2.0,
                    duration=PROBE_SECONDS, latency=False,
                    monitor={"upstream": upstream_pid, "relay": sluice.worker})
    raw = run_loadgen(spec, spec.ramp + spec.warm + spec.duration + LOADGEN_SLACK)
    cpu = float(raw["monitored"]["relay"]["cpu_s"]) / max(float(raw["window_s"]), 1e-9)
    if cpu <= 0 or not raw["chunks_per_s"]:
        raise RuntimeError(f"the capacity probe measured nothing: {raw['errors']}")
    return float(raw["chunks_per_s"]) / min(1.0, cpu / SATURATED) / float(scenario.tps)


def run_loadgen_scraping_lag(spec: LoadSpec, limit: float, port: int) -> dict[str, Any]:
    """`run_loadgen`, with Sluice's raw event-loop lag samples over the run (its
    ``sluice_event_loop_lag_samples_seconds`` histogram, scraped before and after: the
    difference is every sample the overload guard took, ramp included)."""
    before = scrape_lag(port)
    raw = run_loadgen(spec, limit)
    after = scrape_lag(port)
    raw["lag_buckets"] = {le: after.get(le, 0.0) - before.get(le, 0.0) for le in after}
    return raw


LAG_BUCKET = 'sluice_event_loop_lag_samples_seconds_bucket{le="'


def scrape_lag(port: int) -> dict[str, float]:
    """The lag histogram's cumulative bucket counts, by upper bound (``"+Inf"`` last)."""
    status, body = processes.http_get(port, "/metrics", 30.0)
    if status != 200:
        raise RuntimeError(f"/metrics answered {status}")
    buckets: dict[str, float] = {}
    for line in body.decode().splitlines():
        if line.startswith(LAG_BUCKET):
            le, _, count = line[len(LAG_BUCKET):].partition('"} ')
            buckets[le] = float(count)
    return buckets


def read_gc(path: Path) -> dict[str, float] | None:
    """The gc seconds and longest pause between the last two SIGUSR1 dumps of a variant."""
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return None
    if len(lines) < 2:
        return None
    start, end = json.loads(lines[-2]), json.loads(lines[-1])
    return {"seconds": end["total_s"] - start["total_s"], "max_pause_s": end["max_pause_s"],
            "collections": end["collections"] - start["collections"],
            "gen2": end["gen2"] - start["gen2"]}


FD_SPARE = 200  # descriptors a relay needs besides its two per stream


def fit_fd_limit(scenario: BenchScenario) -> BenchScenario:
    """Fewer streams if a relay could not hold them all: it needs two fds per stream.

    The hard RLIMIT_NOFILE can only be raised with CAP_SYS_RESOURCE; where it cannot,
    the scenario runs as many streams as fit, and its title says so.
    """
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    streams = int(scenario.load["streams"])
    if hard == resource.RLIM_INFINITY or 2 * streams + FD_SPARE <= hard:
        return scenario
    fit = (hard - FD_SPARE) // 2
    why = (f"{streams:,} streams requested, {fit:,} run: the open-files limit is {hard:,} "
           f"here and cannot be raised (no CAP_SYS_RESOURCE); a relay holds 2 per stream")
    print(f"  ! {scenario.name}: {why}", flush=True)
    note = f"{scenario.note}; {why}" if scenario.note else why
    return replace(scenario, load={**scenario.load, "streams": fit}, note=note)


def run_scenario(scenario: BenchScenario, options: Options, nginx: str | None,
                 logs: Path) -> ScenarioResult:
    scenario = fit_fd_limit(scenario)
    result = ScenarioResult(scenario)
    repeats = options.repeats or scenario.repeats
    with tempfile.TemporaryDirectory(prefix="sluice-bench-") as tmp:
        workdir = Path(tmp)
        try:
            with contextlib.ExitStack() as stack:
                _run_targets(stack, workdir, scenario, options, nginx, repeats, result)
        finally:
            for log in workdir.glob("**/*.log"):
                shutil.copy(log, logs / f"{scenario.name}-{log.name}")
    for target, runs in result.runs.items():
        if runs:
            result.medians[target] = median_metrics([run["metrics"] for run in runs])
    derive(result.medians, scenario.offered_cps)
    return result


def _run_targets(stack: contextlib.ExitStack, workdir: Path, scenario: BenchScenario,
                 options: Options, nginx: str | None, repeats: int,
                 result: ScenarioResult) -> None:
    upstream = processes.start_upstream(stack, workdir, kind=scenario.upstream,
                                        scenario=scenario.upstream_scenario)
    relays: dict[str, Proc | None] = {}
    api_keys: dict[str, str] = {}  # target -> the key its requests carry
    redis_pid: dict[str, int] = {}
    wanted = list(options.targets) + [f"sluice+{v}" for v in options.variants]
    if "sluice" in wanted:
        wanted += list(scenario.extra_targets)
    for target in wanted:
        try:
            if target == "direct":
                relays[target] = None
            elif target == "nginx":
                if nginx is None:
                    continue
                relays[target] = processes.start_nginx(stack, workdir, nginx, upstream.port)
            elif target == "sluice-keys":
                redis = processes.start_redis(stack)
                if redis is None or redis.process is None:
                    print("  note: no redis-server (apt-get install redis-server): "
                          "the sluice-keys column is skipped", flush=True)
                    continue
                key = new_key()
                relays[target] = processes.start_sluice(
                    stack, workdir, upstream.port, keys=processes.keys_config(redis.url, key))
                api_keys[target], redis_pid[target] = key.text, redis.process.pid
            elif target == "sluice-noshed":
                relays[target] = processes.start_sluice(stack, workdir, upstream.port,
                                                        extra=NOSHED_CONFIG, label=target)
            else:
                variant = target.partition("+")[2]
                relays[target] = processes.start_sluice(stack, workdir, upstream.port, variant)
        except RuntimeError as error:
            result.failures[target] = str(error)
            print(f"  ! {target} did not start: {error}", flush=True)
    for target in relays:
        result.runs[target] = []
    probe = relays.get("sluice")
    if options.streams is not None:
        scenario = replace(scenario, load={**scenario.load, "streams": options.streams})
        result.scenario = scenario
    elif scenario.capacity_factor and probe is not None:
        capacity = measure_capacity(scenario, probe, upstream.pid, options.driver)
        streams = max(1, round(scenario.capacity_factor * capacity))
        print(f"  capacity of one Sluice worker: {capacity:.0f} streams at {scenario.tps:g} "
              f"tok/s; offering {streams}", flush=True)
        scenario = replace(scenario, load={**scenario.load, "streams": streams})
        result.scenario = scenario
        processes.wait_quiet([upstream.pid, probe.worker])
    limit = scenario.run_seconds() + LOADGEN_SLACK
    for repeat in range(repeats):
        for target, relay in relays.items():
            if target in result.failures:
                continue
            monitor = {"upstream": upstream.pid}
            if relay is not None:
                monitor["relay"] = relay.worker
            if target in redis_pid:
                monitor["redis"] = redis_pid[target]
            gc_file = workdir / f"gc-{target.partition('+')[2]}.jsonl"
            usr1 = (relay.worker,) if relay is not None and "+" in target else ()
            spec = LoadSpec(port=relay.port if relay is not None else upstream.port,
                            driver=options.driver, monitor=monitor, usr1=usr1,
                            warmup_requests=scenario.warmup_requests,
                            api_key=api_keys.get(target, ""), **scenario.load)
            try:
                if relay is not None and target.startswith("sluice"):
                    raw = run_loadgen_scraping_lag(spec, limit, relay.port)
                else:
                    raw = run_loadgen(spec, limit)
            except RuntimeError as error:
                result.failures[target] = str(error)
                print(f"  ! {scenario.name} {target}: {error}", flush=True)
                continue
            gc = read_gc(gc_file) if usr1 else None
            values = metrics(raw, gc)
            result.runs[target].append({"result": raw, "gc": gc, "metrics": values})
            print(f"  {scenario.name} [{repeat + 1}/{repeats}] {target:>16}: "
                  f"{_progress(values)}", flush=True)
            if relay is not None and not procfs.alive(relay.worker):
                result.failures[target] = f"{target} died during the run:\n{relay.log_tail()}"
                print(f"  ! {result.failures[target]}", flush=True)
            pids = [upstream.pid] + ([relay.worker] if relay is not None else [])
            processes.wait_quiet(pids)


def _progress(values: Metrics) -> str:
    def show(key: str, fmt: str) -> str:
        value = values.get(key)
        return "—" if value is None else format(value, fmt)

    return (f"{show('chunks_per_s', ',.0f')} chunks/s, TTFB p50/p99 {show('ttfb_p50', '.2f')}/"
            f"{show('ttfb_p99', '.2f')} ms, chunk lat p99 {show('lat_p99', '.2f')} ms, "
            f"errors {show('errors', '.0f')}, relay {show('relay_cpu_cores', '.2f')} cores "
            f"({show('relay_us_per_chunk', '.1f')} us/chunk), load {show('load_cpu_cores', '.2f')}"
            f" + upstream {show('upstream_cpu_cores', '.2f')} cores")


def scenario_table(outcome: ScenarioResult, repeats: int) -> str:
    s = outcome.scenario
    note = f"; {s.note}" if s.note else ""
    title = (f"== {s.name}: {s.title} ==\n   upstream: {s.upstream} ({s.upstream_scenario}); "
             f"{repeats} repeat{'s' if repeats != 1 else ''}, medians{note}")
    text = table(title, s.rows, outcome.medians, outcome.columns())
    for target, failure in outcome.failures.items():
        text += f"\n   ! {target}: {failure.splitlines()[0] if failure else 'failed'}"
    return text


def main(argv: list[str] | None = None) -> int:
    options = parse_args(argv)
    raise_fd_limit()
    processes.pin(0, LOAD_CORE)
    if len(os.sched_getaffinity(0)) < 2 and (os.cpu_count() or 1) < 2:
        print("warning: fewer than 2 cores: relay and load share a core; numbers will be low")
    chosen = select(options.scenarios, options.quick, options.upstream)
    nginx: str | None = None
    nginx_note = "not requested"
    if "nginx" in options.targets:
        nginx, nginx_note = processes.find_or_install_nginx(options.install)
        if nginx is None:
            print(f"note: {nginx_note}", flush=True)
    info = machine_info(nginx_note)
    busy, hogs = background_load()
    info["background_cores_busy"] = round(busy, 2)
    if busy > 0.1:
        print(f"warning: the machine is already busy ({busy:.2f} cores) before the benchmark: "
              + "; ".join(f"{name} {cpu:.2f}" for name, cpu in hogs)
              + ". Expect noise; each table's 'relay core: other' row measures it.\n",
              flush=True)
    options.out.mkdir(parents=True, exist_ok=True)
    logs = options.out / "logs"
    logs.mkdir(exist_ok=True)
    planned = sum((options.repeats or s.repeats) * (s.run_seconds() + 3) for s in chosen) * \
        (len(options.targets) + len(options.variants))
    print(HOW_TO_READ)
    print(f"machine: {info['cpu_model']}, {info['cpus']} cores, {info['memory_gb']} GB, "
          f"Python {info['python']}, {info['platform']}")
    print(f"versions: {json.dumps(info['packages'])}; nginx: {nginx_note}")
    print(f"load generator: {options.driver}; scenarios: {', '.join(s.name for s in chosen)}"
          f"; about {planned / 60:.0f} min of load\n", flush=True)
    started = time.monotonic()
    outcomes: dict[str, ScenarioResult] = {}
    tables: list[str] = []
    try:
        for scenario in chosen:
            print(f"-- {scenario.name}: {scenario.title}", flush=True)
            try:
                outcome = run_scenario(scenario, options, nginx, logs)
            except RuntimeError as error:
                print(f"  ! {scenario.name} could not run: {error}", flush=True)
                outcome = ScenarioResult(scenario, failures={"upstream": str(error)})
            outcomes[scenario.name] = outcome
            scenario = outcome.scenario
            text = scenario_table(outcome, options.repeats or scenario.repeats)
            tables.append(text)
            print("\n" + text + "\n", flush=True)
    except KeyboardInterrupt:
        print("interrupted: writing what was measured so far", flush=True)
    summary, records = targets_table({name: o.medians for name, o in outcomes.items()},
                                     {name: o.scenario.note for name, o in outcomes.items()})
    print(summary)
    keys_summary = keys_table({name: o.medians for name, o in outcomes.items()})
    if keys_summary:
        print("\n" + keys_summary)
    elapsed = time.monotonic() - started
    print(f"\n{len(outcomes)} scenarios in {elapsed / 60:.1f} min; "
          f"raw results: {options.out / 'bench.json'}")
    document = {
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": ["python", "-m", "tests.bench.run", *(sys.argv[1:] if argv is None else argv)],
        "quick": options.quick,
        "loadgen": options.driver,
        "upstream": options.upstream,
        "machine": info,
        "elapsed_s": round(elapsed, 1),
        "scenarios": {
            name: {
                "title": o.scenario.title,
                "upstream": o.scenario.upstream,
                "upstream_scenario": o.scenario.upstream_scenario,
                "load": o.scenario.load,
                "offered_cps": o.scenario.offered_cps,
                "note": o.scenario.note,
                "repeats": options.repeats or o.scenario.repeats,
                "runs": o.runs,
                "medians": o.medians,
                "failures": o.failures,
            }
            for name, o in outcomes.items()
        },
        "targets": records,
    }
    (options.out / "bench.json").write_text(json.dumps(document, indent=1))
    (options.out / "bench.txt").write_text(HOW_TO_READ + "\n" + "\n\n".join(tables) + "\n\n"
                                           + summary + "\n"
                                           + (f"\n{keys_summary}\n" if keys_summary else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
