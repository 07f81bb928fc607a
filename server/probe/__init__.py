"""Is this stream really streaming? ``sluice probe`` as a library.

    from server.probe import ProbeRequest, probe_endpoints, summarise, table

    runs = await probe_endpoints([ProbeRequest("http://127.0.0.1:8000/v1", "m")], runs=5)
    print(table(summarise(runs)))

Modules, inside out: `timeline` (one run as the client saw it, and its
numbers), `verdict` (streaming, buffered, cut or error: the rule),
`measure` (one real request, recorded), `runs` (many, interleaved and
concurrent), `report` (summaries, the table, JSON, the progress line),
`plot` (the picture), `cli` (``sluice probe``). Needs httpx; the picture
needs the ``probe`` extra (``pip install 'sluice[probe]'``).
"""

from __future__ import annotations

from server.probe.measure import ProbeRequest, measure
from server.probe.report import Summary, summarise, table
from server.probe.runs import Run, probe_endpoints
from server.probe.timeline import RunStats, Timeline, run_stats
from server.probe.verdict import Verdict, judge

__all__ = ["ProbeRequest", "Run", "RunStats", "Summary", "Timeline", "Verdict", "judge",
           "measure", "probe_endpoints", "run_stats", "summarise", "table"]
