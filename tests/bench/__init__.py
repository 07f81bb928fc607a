"""The benchmark: Sluice beside a direct connection and nginx, measured in one run.

    python -m tests.bench.run --out bench-results/          # the full set, ~10 min
    python -m tests.bench.run --quick                       # a reduced set, ~2 min
    python -m tests.bench.run --scenario stream-1000        # one scenario
    python -m tests.bench.profile                           # py-spy on Sluice at 1,000 streams

Processes and cores (2-core machine): the fake upstream, the load generator
and this orchestrator share core 1; the relay under test (the Sluice worker,
or the nginx worker) has core 0 to itself. Every process is started here,
pinned by PID, and stopped by PID in a ``finally``.

Modules, one concept each:

- `wire`: sans-IO reading of an HTTP/1.1 SSE response with byte scans only;
- `loadgen`: the load generator process (raw epoll by default; asyncio, trio);
- `pacer`: a paced upstream for the loads the fake upstream cannot offer;
- `procfs`: CPU seconds, RSS and children of a PID from ``/proc``;
- `processes`: starting, pinning and stopping the fake upstream, Sluice and nginx;
- `scenarios`: what each scenario offers, full and ``--quick``;
- `report`: the side-by-side tables and the JSON;
- `variants`: Sluice with experimental start-up tweaks (gc) — measured ideas
  for the hot path, not proposals as is;
- `run`, `profile`: the two entry points.

No module here is named ``test_*``: pytest must not collect the benchmark.
"""
