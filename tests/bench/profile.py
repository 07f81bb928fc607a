"""``python -m tests.bench.profile``: where Sluice's worker spends its CPU under load.

    python -m tests.bench.profile --out bench-results/           # stream-1000, 10 s of samples
    python -m tests.bench.profile --scenario idle-5000 --variant gc-freeze

Starts the scenario's upstream and Sluice exactly as `run` does, drives the
scenario's load, and once the ramp is over runs ``py-spy record`` on the
worker (``--native``, so garbage collection shows as ``gc_collect_main``
and system calls as libc frames; ``--no-native`` samples without pausing).
It writes ``profile-NAME.txt`` (collapsed stacks: flamegraph.pl, or drop it
on https://www.speedscope.app) and ``profile-NAME.speedscope.json``, and
prints the load it measured, the top functions by own and by total time,
and the CPU by component: each sample goes to the first frame, from the
leaf up, that belongs to a component — so a ``send`` inside trio called by
hypercorn counts as hypercorn's write path, and h11 counts for whoever
called it; a sample with a ``gc_collect_main`` frame counts as gc.

py-spy is not a dependency of the package: ``pip install py-spy``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

from tests.bench import processes
from tests.bench.loadgen import DRIVERS, LoadSpec, raise_fd_limit
from tests.bench.processes import LOAD_CORE
from tests.bench.report import metrics
from tests.bench.scenarios import select

# (component, path fragments), checked in order for each frame from the leaf up.
COMPONENTS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("logging", ("/logging/",)),
    ("prometheus_client", ("/prometheus_client/",)),
    ("httpx/httpcore (upstream read path)", ("/httpcore/", "/httpx/")),
    ("hypercorn (downstream, incl. its h11 and socket writes)", ("/hypercorn/",)),
    ("quart / quart-trio / werkzeug", ("/quart/", "/quart_trio/", "/werkzeug/")),
    ("sluice (server/)", (f"{processes.REPO}/server/",)),
)
# Frames that only carry work for a caller: trio's I/O and scheduling, h11, contextlib...
CARRIERS = ("/trio/", "/h11/", "/anyio/", "/sniffio/", "/outcome/", "contextlib.py",
            "/_weakrefset.py", "<frozen", "abc.py", "/functools.py", "/enum.py", "/typing.py")
NO_OVERLOAD = "\n[overload]\nenabled = false\n"
TRIO_FALLBACK = "trio scheduler and I/O wait (no owner above)"


def component(stack: list[str]) -> str:
    if any(frame.startswith("gc_collect") for frame in stack):
        return "gc (garbage collection)"
    for frame in reversed(stack):
        for name, fragments in COMPONENTS:
            if any(fragment in frame for fragment in fragments):
                return name
    if any("/trio/" in frame for frame in stack):
        return TRIO_FALLBACK
    return "other (interpreter, libc, stdlib)"


def short(frame: str) -> str:
    """``func (/long/path/site-packages/pkg/mod.py:12)`` -> ``func (pkg/mod.py:12)``."""
    name, _, where = frame.partition(" (")
    for marker in ("site-packages/", f"{processes.REPO}/", "lib/python3"):
        if marker in where:
            where = where.split(marker, 1)[1]
            break
    return f"{name} ({where}" if where else name


def read_collapsed(path: Path) -> list[tuple[list[str], int]]:
    stacks: list[tuple[list[str], int]] = []
    for line in path.read_text(errors="replace").splitlines():
        frames, _, count = line.rpartition(" ")
        if frames and count.isdigit():
            stacks.append((frames.split(";"), int(count)))
    return stacks


def _is_python(frame: str) -> bool:
    return ".py:" in frame


def summarise(stacks: list[tuple[list[str], int]], top: int = 25) -> str:
    total = sum(count for _, count in stacks) or 1
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    components: Counter[str] = Counter()
    for frames, count in stacks:
        python = [f for f in frames if _is_python(f)]
        leaf = frames[-1]
        own[short(leaf) if _is_python(leaf) or not python else
            f"[native] {leaf.split(' (')[0]} <- {short(python[-1])}"] += count
        for frame in set(python):
            inclusive[short(frame)] += count
        components[component(frames)] += count

    def block(title: str, counts: Counter[str], limit: int) -> list[str]:
        lines = [title]
        for name, count in counts.most_common(limit):
            lines.append(f"  {100 * count / total:5.1f}%  {name}")
        return lines

    out = [f"{total} samples of a busy worker"]
    out += block("CPU by component (first owner from the leaf up):", components, 20)
    out += block(f"top {top} functions by own time (leaf frame):", own, top)
    out += block(f"top {top} functions by total time (on the stack):", inclusive, top)
    return "\n".join(out)


def speedscope(stacks: list[tuple[list[str], int]], name: str) -> dict[str, object]:
    """The collapsed stacks as a speedscope "sampled" profile."""
    index: dict[str, int] = {}
    frames: list[dict[str, str]] = []
    samples: list[list[int]] = []
    weights: list[int] = []
    for stack, count in stacks:
        ids = []
        for frame in stack:
            if frame not in index:
                index[frame] = len(frames)
                fn, _, where = frame.partition(" (")
                frames.append({"name": fn, "file": where.rstrip(")")})
            ids.append(index[frame])
        samples.append(ids)
        weights.append(count)
    return {
        "$schema": "https://www.speedscope.app/file-format-schema.json",
        "shared": {"frames": frames},
        "profiles": [{"type": "sampled", "name": name, "unit": "none", "startValue": 0,
                      "endValue": sum(weights), "samples": samples, "weights": weights}],
        "name": name,
        "exporter": "tests.bench.profile",
    }


def find_py_spy() -> str | None:
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.profile",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", default="stream-1000")
    parser.add_argument("--quick", action="store_true", help="the scenario's --quick shape")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of sampling")
    parser.add_argument("--rate", type=int, default=100, help="samples per second")
    parser.add_argument("--no-native", action="store_true",
                        help="Python frames only, sampled without pausing the worker")
    parser.add_argument("--variant", default="", help="profile a tests.bench.variants variant")
    parser.add_argument("--streams", type=int,
                        help="override the scenario's stream count (e.g. a load Sluice sustains)")
    parser.add_argument("--loadgen", default="epoll", choices=DRIVERS)
    parser.add_argument("--upstream", default="auto", choices=("auto", "fake", "pacer"))
    parser.add_argument("--out", default="bench-results")
    args = parser.parse_args(argv)
    py_spy = find_py_spy()
    if py_spy is None:
        print("py-spy not found: pip install py-spy", file=sys.stderr)
        return 2
    raise_fd_limit()
    processes.pin(0, LOAD_CORE)
    scenario = select([args.scenario], args.quick, args.upstream)[0]
    settle = scenario.load.get("ramp", 0.0) + scenario.load.get("warm", 0.0)
    load = {**scenario.load, "duration": max(scenario.load.get("duration", 5.0),
                                             args.duration + 3.0)}
    load.pop("requests_per_stream", None)
    if args.streams:
        load["streams"] = args.streams
    scenario = replace(scenario, load=load)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    label = scenario.name + (f"-{args.streams}" if args.streams else "") + \
        (f"-{args.variant}" if args.variant else "")
    collapsed = out / f"profile-{label}.txt"
    with tempfile.TemporaryDirectory(prefix="sluice-profile-") as tmp, \
            contextlib.ExitStack() as stack:
        workdir = Path(tmp)
        upstream = processes.start_upstream(stack, workdir, kind=scenario.upstream,
                                            scenario=scenario.upstream_scenario)
        # py-spy --native pauses the worker to sample it: the overload guard would read the
        # pauses as loop lag and refuse streams (1,278 503s in a stream-100 profile). Off.
        sluice = processes.start_sluice(stack, workdir, upstream.port, args.variant,
                                        extra=NO_OVERLOAD)
        spec = LoadSpec(port=sluice.port, driver=args.loadgen, warmup_requests=20,
                        monitor={"upstream": upstream.pid, "relay": sluice.worker}, **load)
        print(f"profiling {label}: {scenario.title}; sampling {args.duration:g} s after "
              f"{settle:g} s of ramp", flush=True)
        loadgen = subprocess.Popen([sys.executable, "-m", "tests.bench.loadgen", spec.to_json()],
                                   stdout=subprocess.PIPE, cwd=processes.REPO,
                                   start_new_session=True)
        processes.pin(loadgen.pid, LOAD_CORE)
        try:
            time.sleep(settle + 0.5 + (spec.warmup_requests and 1.0))
            command = [py_spy, "record", "--pid", str(sluice.worker), "--duration",
                       str(int(args.duration)), "--rate", str(args.rate), "--format", "raw",
                       "--full-filenames", "--output", str(collapsed)]
            command += ["--nonblocking"] if args.no_native else ["--native"]
            spy = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   start_new_session=True)
            processes.pin(spy.pid, LOAD_CORE)
            spy_out, _ = spy.communicate(timeout=args.duration + 60)
            result_text, _ = loadgen.communicate(timeout=scenario.run_seconds() + 120)
        finally:
            for child in (loadgen,):
                if child.poll() is None:
                    child.kill()
                    child.wait()
    print(spy_out.decode(errors="replace").strip())
    if not collapsed.exists():
        print("py-spy wrote no profile", file=sys.stderr)
        return 1
    with contextlib.suppress(ValueError, IndexError):
        values = metrics(json.loads(result_text.decode().strip().splitlines()[-1]))
        print(f"load while sampling: {values['chunks_per_s']:,.0f} chunks/s, "
              f"TTFB p99 {values['ttfb_p99']} ms, errors {values['errors']:.0f}, "
              f"relay {values['relay_cpu_cores']:.2f} cores, "
              f"{values['relay_us_per_chunk']:.1f} us/chunk")
    stacks = read_collapsed(collapsed)
    text = summarise(stacks)
    print(text)
    document = speedscope(stacks, f"sluice worker, {label}")
    (out / f"profile-{label}.speedscope.json").write_text(json.dumps(document))
    (out / f"profile-{label}.summary.txt").write_text(text + "\n")
    print(f"\nwrote {collapsed} and {out / f'profile-{label}.speedscope.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
