"""Sluice started with one bench-only tweak, to measure a hot-path idea before changing code.

    python -m tests.bench.variants --variant gc-freeze --bind 127.0.0.1:8001 --config s.toml

The launcher applies the tweak in its own process, builds ``server.app.app``
there, and then calls the real ``sluice serve`` (`server.cli.main`), which
serves one worker in-process — so what is served is exactly what ``sluice
serve`` serves, plus the tweak. (Should ``sluice serve`` fork its worker
again, the tweaks would not reach it; `processes.start_sluice` refuses such a
variant rather than mislabel stock numbers.) Every variant keeps gc
statistics — the time of each collection, from ``gc.callbacks`` — and
appends them as one JSON line to ``$BENCH_GC_STATS`` on SIGUSR1; the load
generator sends one at the start and one at the end of its window.

- ``gc-stats``: no tweak: the stock app plus gc accounting (~1 µs per collection);
- ``gc-freeze``: ``gc.freeze()`` once serving has started (backends open);
- ``gc-tuned``: ``gc-freeze`` plus ``gc.set_threshold(50_000, 20, 1_000)``;
- ``gc-off``: ``gc.disable()`` — the bound on what gc can cost;
- ``gc-threshold-G0-G1-G2``: ``gc.set_threshold(G0, G1, G2)`` once serving has
  started, over ``sluice serve``'s own tuning (e.g. ``gc-threshold-50000-2-1000``);

(``shard-N`` and ``lean-reader`` measured httpx with sharded pools and a
raw-socket reader; the reader won and is now Sluice's transport,
`server.backends.http`.)
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import signal
import sys
import time
from types import FrameType

VARIANTS = ("gc-stats", "gc-freeze", "gc-tuned", "gc-off", "gc-threshold-G0-G1-G2")


def known(variant: str) -> bool:
    """One of `VARIANTS`, ``gc-threshold-*`` with three integers in place of G0-G1-G2."""
    if variant.startswith("gc-threshold-"):
        parts = variant.removeprefix("gc-threshold-").split("-")
        return len(parts) == 3 and all(part.isdigit() for part in parts)
    return variant in VARIANTS


def install_gc_stats(path: str) -> None:
    """Time every collection; append the totals to `path` as JSON on each SIGUSR1."""
    totals = {"total_s": 0.0, "max_pause_s": 0.0, "collections": 0, "gen2": 0}
    started = [0.0]

    def on_gc(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
            return
        pause = time.perf_counter() - started[0]
        totals["total_s"] += pause
        totals["collections"] += 1
        if info.get("generation") == 2:
            totals["gen2"] += 1
        totals["max_pause_s"] = max(totals["max_pause_s"], pause)

    def dump(signum: int, frame: FrameType | None) -> None:
        with open(path, "a") as out:
            out.write(json.dumps({"t": time.time(), **totals}) + "\n")
        totals["max_pause_s"] = 0.0  # the next dump reports the longest pause since this one

    gc.callbacks.append(on_gc)
    signal.signal(signal.SIGUSR1, dump)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.variants")
    parser.add_argument("--variant", required=True)
    parser.add_argument("--bind", default="127.0.0.1:8000")
    parser.add_argument("--config", required=True)
    args = parser.parse_args(argv)
    variant: str = args.variant
    if not known(variant):
        parser.error(f"unknown variant {variant!r}")
    config = os.path.abspath(args.config)
    os.environ["SLUICE_CONFIG"] = config
    if variant == "gc-off":
        gc.disable()
    if variant == "gc-tuned":
        gc.set_threshold(50_000, 20, 1_000)

    from server.app import app  # the same module object `sluice serve` will serve
    from server.cli import main as sluice

    install_gc_stats(os.environ.get("BENCH_GC_STATS", f"/tmp/sluice-gc-{os.getpid()}.jsonl"))
    if variant.startswith("gc-threshold-"):
        thresholds = tuple(int(part) for part in variant.split("-")[2:])

        @app.before_serving
        async def set_thresholds() -> None:
            # After `sluice serve`'s own tune_gc (which runs before serving starts).
            gc.set_threshold(*thresholds)

    if variant in ("gc-freeze", "gc-tuned"):

        @app.before_serving
        async def freeze() -> None:
            # Registered after the gateway's own hook: the backends are open by now.
            gc.freeze()

    return sluice(["serve", "--bind", args.bind, "--config", config])


if __name__ == "__main__":
    sys.exit(main())
