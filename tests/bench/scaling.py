"""``python -m tests.bench.scaling``: how Sluice's throughput scales with worker processes.

    python -m tests.bench.scaling --out bench-results/      # ~2 minutes

On this 2-core machine a 2-worker run leaves no core for the load generator
and the upstream, so "twice the workers, twice the chunks" cannot be shown
directly. Two ratios are measured instead, each against 1 worker on core 0
in the same run, with the same paced load (the `pacer` upstream and the load
generator on core 1, as in `run`):

- **sharding cost**: 2 workers *both pinned to core 0*. Same core, same
  load: if relay CPU per chunk stays at 1 worker's, splitting the streams
  over processes costs nothing (nothing shared between workers contends),
  and N workers on N free cores relay N times what one does.
- **2 workers on both cores**: unpinned, sharing core 1 with the load and
  the upstream. At a load one worker cannot carry (1,000 streams at 50
  tok/s), the delivered ratio is what the second core adds *after* the
  tools have taken their share of it; the report shows that share.

Each worker's CPU is read from /proc over the measurement window; the split
between the workers (the kernel spreads accepted connections) is printed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tests.bench import processes, procfs
from tests.bench.loadgen import LoadSpec, raise_fd_limit
from tests.bench.processes import RELAY_CORE
from tests.bench.run import run_loadgen

BOTH_CORES = {0, 1}
SETUPS = (("1 worker, core 0", 1, RELAY_CORE),
          ("2 workers, core 0", 2, RELAY_CORE),
          ("2 workers, cores 0+1", 2, BOTH_CORES))
LOADS = (400, 1000)  # streams at 50 tok/s: below and above what one worker relays


def start_workers(stack: contextlib.ExitStack, workdir: Path, upstream_port: int,
                  workers: int, cores: set[int]) -> tuple[int, list[int]]:
    """``sluice serve --workers N``; returns its port and the worker PIDs (pinned to `cores`)."""
    config = processes.write_sluice_config(workdir, upstream_port)
    port = processes.free_port()
    argv = [sys.executable, "-m", "server.cli", "serve", "--bind", f"127.0.0.1:{port}",
            "--config", str(config), "--workers", str(workers)]
    proc = processes.spawn(stack, f"sluice-{workers}", argv, workdir / f"sluice-{workers}.log",
                           cores)
    deadline = time.monotonic() + 30
    while True:
        pids = [child for child in procfs.children(proc.pid)
                if "spawn_main" in procfs.cmdline(child)] if workers > 1 else [proc.pid]
        ready = len(pids) == workers
        with contextlib.suppress(OSError, ValueError):
            ready = ready and processes.http_get(port, "/healthz", 1.0)[0] == 200
        if ready:
            break
        if proc.popen.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"sluice --workers {workers} did not start:\n{proc.log_tail()}")
        time.sleep(0.1)
    proc.extra = pids
    for pid in pids:
        processes.pin(pid, cores)
    return port, pids


def measure(port: int, workers: list[int], upstream: int, streams: int) -> dict[str, Any]:
    spec = LoadSpec(port=port, driver="epoll", streams=streams, tokens=1000,
                    ramp=streams / 250, warm=1.0, duration=6.0, latency_every=20,
                    warmup_requests=20,
                    monitor={"upstream": upstream,
                             **{f"worker{i}": pid for i, pid in enumerate(workers)}})
    raw = run_loadgen(spec, spec.ramp + spec.warm + spec.duration + 90)
    window = float(raw["window_s"])
    cpu = [raw["monitored"][f"worker{i}"]["cpu_s"] for i in range(len(workers))]
    chunks = int(raw["chunks_window"])
    return {
        "chunks_per_s": raw["chunks_per_s"],
        "relay_cpu_cores": sum(cpu) / window,
        "relay_us_per_chunk": sum(cpu) / chunks * 1e6 if chunks else None,
        "worker_cpu_split": [round(c / sum(cpu), 3) for c in cpu] if sum(cpu) else None,
        "load_and_upstream_cores": raw["load_cpu_frac"]
        + raw["monitored"]["upstream"]["cpu_s"] / window,
        "ttfb_p99_ms": raw["ttfb_ms"].get("p99"),
        "errors": sum(raw["errors"].values()),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.scaling",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench-results")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args(argv)
    raise_fd_limit()
    results: dict[str, dict[int, list[dict[str, Any]]]] = {}
    with tempfile.TemporaryDirectory(prefix="sluice-scaling-") as tmp, \
            contextlib.ExitStack() as stack:
        workdir = Path(tmp)
        upstream = processes.start_upstream(stack, workdir, kind="pacer",
                                            scenario="tokens=1000000,tps=50,timestamps=true")
        for label, workers, cores in SETUPS:
            with contextlib.ExitStack() as relay_stack:
                port, pids = start_workers(relay_stack, workdir, upstream.port, workers, cores)
                results[label] = {}
                for streams in LOADS:
                    runs = results[label].setdefault(streams, [])
                    for _ in range(args.repeats):
                        runs.append(measure(port, pids, upstream.pid, streams))
                        print(f"  {label:22} {streams:5} streams: "
                              f"{runs[-1]['chunks_per_s']:8,.0f} chunks/s, "
                              f"{runs[-1]['relay_us_per_chunk'] or 0:5.1f} us/chunk, "
                              f"split {runs[-1]['worker_cpu_split']}", flush=True)
                        processes.wait_quiet([upstream.pid, *pids])
    print(report(results))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "scaling.json").write_text(json.dumps(results, indent=2))
    print(f"raw results: {out / 'scaling.json'}")
    return 0


def _median(runs: list[dict[str, Any]], key: str) -> float:
    return statistics.median(float(run[key] or 0.0) for run in runs)


def report(results: dict[str, dict[int, list[dict[str, Any]]]]) -> str:
    base = results[SETUPS[0][0]]
    lines = ["", "== workers: medians, and ratios to 1 worker on core 0 in the same run ==",
             f"{'setup':22} {'streams':>7} {'chunks/s':>9} {'ratio':>6} {'us/chunk':>9} "
             f"{'ratio':>6} {'relay cores':>11} {'load+upstream':>13} {'errors':>6}"]
    for label, by_load in results.items():
        for streams, runs in by_load.items():
            cps, us = _median(runs, "chunks_per_s"), _median(runs, "relay_us_per_chunk")
            base_cps = _median(base[streams], "chunks_per_s")
            base_us = _median(base[streams], "relay_us_per_chunk")
            lines.append(
                f"{label:22} {streams:7} {cps:9,.0f} {cps / base_cps:6.2f} {us:9.1f} "
                f"{us / base_us:6.2f} {_median(runs, 'relay_cpu_cores'):11.2f} "
                f"{_median(runs, 'load_and_upstream_cores'):13.2f} "
                f"{_median(runs, 'errors'):6.0f}")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
