"""What many runs add up to: per-endpoint summaries, the text table, the JSON, the progress line.

    summaries = summarise(runs)          # one per endpoint, in the order given
    print(table(summaries))              # side by side, with Δ = first − second
    json.dumps(as_json(runs, summaries))

A summary gives each number's median, p90 and p99 over the runs (nearest
rank, so with 5 runs p90 and p99 are the worst run), the verdicts counted,
and the verdict most runs got — on a tie, the worse one (error, cut,
buffered, streaming).
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from server.probe.runs import Run
from server.probe.timeline import percentile
from server.probe.verdict import VERDICTS, VerdictKind

# The table's rows, in order: label | RunStats field | unit (ms = seconds shown in
# milliseconds, % = a share in percent) and decimals.
_ROW_TABLE = """
TTFB (response head)     | ttfb              | ms 1
time to first content    | ttft              | ms 1
total time               | total             | ms 0
chunks                   | chunks            | -  0
content tokens           | tokens            | -  0
tokens/s after the first | tokens_per_second | -  1
gap p50                  | gap_p50           | ms 2
gap p90                  | gap_p90           | ms 2
gap p99                  | gap_p99           | ms 2
gap max                  | gap_max           | ms 2
zero intervals (<1 ms)   | zero_share        | %  0
largest burst            | largest_burst     | -  0
"""


def _shower(unit: str, decimals: int) -> Callable[[float], str]:
    scale, suffix = {"ms": (1000, " ms"), "%": (100, " %"), "-": (1, "")}[unit]
    return lambda v: f"{v * scale:.{decimals}f}{suffix}"


def _rows() -> tuple[tuple[str, str, Callable[[float], str]], ...]:
    rows = []
    for line in _ROW_TABLE.strip().splitlines():
        label, name, shown = (part.strip() for part in line.split("|"))
        unit, decimals = shown.split()
        rows.append((label, name, _shower(unit, int(decimals))))
    return tuple(rows)


_ROWS = _rows()  # (label, the RunStats field, how to show a value)
_WORST_FIRST = ("error", "cut", "buffered", "streaming")


@dataclass(frozen=True, slots=True)
class Spread:
    p50: float
    p90: float
    p99: float


@dataclass(frozen=True, slots=True)
class Summary:
    endpoint: str
    runs: int
    verdict: VerdictKind  # what most runs got
    reason: str  # the reason of the first run with that verdict
    verdicts: dict[str, int]  # every verdict, counted
    statuses: dict[str, int]  # HTTP statuses ("none": no response), counted
    done: int  # runs that ended with [DONE]
    usage: dict[str, int] | None  # the last usage reported
    numbers: dict[str, Spread]  # RunStats field → spread over the runs that have it


def summarise(runs: Sequence[Run], endpoints: Sequence[str] = ()) -> list[Summary]:
    """One summary per endpoint, in the order of ``endpoints`` (else first seen)."""
    order = list(dict.fromkeys([*endpoints, *(run.endpoint for run in runs)]))
    return [_summary(e, mine) for e in order if (mine := [r for r in runs if r.endpoint == e])]


def _summary(endpoint: str, runs: list[Run]) -> Summary:
    runs = sorted(runs, key=lambda r: r.number)
    counted = Counter(run.verdict.kind for run in runs)
    verdict = max(counted, key=lambda kind: (counted[kind], -_WORST_FIRST.index(kind)))
    reason = next(run.verdict.reason for run in runs if run.verdict.kind == verdict)
    numbers = {}
    for _, name, _ in _ROWS:
        values = [v for run in runs if (v := getattr(run.stats, name)) is not None]
        if values:
            numbers[name] = Spread(*(float(percentile(values, q) or 0.0)
                                     for q in (0.5, 0.9, 0.99)))
    usage = next((dict(r.timeline.usage) for r in reversed(runs) if r.timeline.usage), None)
    return Summary(
        endpoint=endpoint, runs=len(runs), verdict=verdict, reason=reason,
        verdicts={kind: counted[kind] for kind in VERDICTS if counted[kind]},
        statuses=dict(Counter(str(r.timeline.status or "none") for r in runs)),
        done=sum(r.timeline.done for r in runs), usage=usage, numbers=numbers)


def table(summaries: Sequence[Summary]) -> str:
    """The summaries side by side; with two endpoints, Δ p50 = first − second."""
    letters = "ABCDEFGH"
    lines = [f"{letters[i]}: {s.endpoint}" for i, s in enumerate(summaries)]
    header = ["", *(f"{letters[i]} {q}" for i in range(len(summaries))
                   for q in ("p50", "p90", "p99"))]
    compare = len(summaries) == 2
    if compare:
        header.append("Δ p50 (A−B)")
    rows: list[list[str]] = [header]
    for label, name, show in _ROWS:
        row = [label]
        for s in summaries:
            spread = s.numbers.get(name)
            row += [show(v) for v in (spread.p50, spread.p90, spread.p99)] if spread \
                else ["–"] * 3
        if compare:
            a, b = (s.numbers.get(name) for s in summaries)
            row.append(_signed(show, a.p50 - b.p50) if a and b else "–")
        rows.append(row)
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines.append("")
    lines += ["  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                        for i, (c, w) in enumerate(zip(row, widths, strict=True))).rstrip()
              for row in rows]
    lines.append("")
    for i, s in enumerate(summaries):
        counts = ", ".join(f"{k} {n}" for k, n in s.verdicts.items())
        statuses = ", ".join(f"{k} ×{n}" for k, n in s.statuses.items())
        usage = ", ".join(f"{k} {v}" for k, v in (s.usage or {}).items()) or "none reported"
        lines += [f"{letters[i]}: {s.verdict.upper()} ({counts} of {s.runs} runs) — {s.reason}",
                  f"   status {statuses}; [DONE] in {s.done} of {s.runs}; usage: {usage}"]
    return "\n".join(lines)


def run_lines(runs: Sequence[Run], endpoints: Sequence[str]) -> str:
    """One line per run, in run order: ``A1 streaming  200  TTFB 12.1 ms  first 12.3 ms ...``."""
    lines = []
    for letter, endpoint in zip("ABCDEFGH", endpoints, strict=False):
        for run in sorted((r for r in runs if r.endpoint == endpoint), key=lambda r: r.number):
            st, t = run.stats, run.timeline
            zero = "–" if st.zero_share is None else f"{st.zero_share * 100:.0f} %"
            lines.append(
                f"{letter}{run.number:<3} {run.verdict.kind:<9} {t.status or '–':>4}  "
                f"TTFB {_ms(st.ttfb)}  first {_ms(st.ttft)}  total {_ms(st.total)}  "
                f"{st.chunks} chunks  {st.tokens} tokens  gaps p50 {_ms(st.gap_p50)} "
                f"max {_ms(st.gap_max)}  zero {zero}  burst {st.largest_burst}  "
                f"{'[DONE]' if t.done else 'no [DONE]'}")
    return "\n".join(lines)


def _ms(value: float | None) -> str:
    return "–" if value is None else f"{value * 1000:.1f} ms"


def _signed(show: Callable[[float], str], value: float) -> str:
    text = show(abs(value))
    return ("+" if value >= 0 else "−") + text


def as_json(runs: Sequence[Run], summaries: Sequence[Summary]) -> dict[str, Any]:
    """Everything, for machines: each endpoint's summary and every run."""
    return {"endpoints": [
        {"summary": dataclasses.asdict(s),
         "runs": [_run_json(r) for r in sorted(runs, key=lambda r: r.number)
                  if r.endpoint == s.endpoint]}
        for s in summaries
    ]}


def _run_json(run: Run) -> dict[str, Any]:
    stats = dataclasses.asdict(run.stats)
    stats.pop("gaps")
    timeline = dataclasses.asdict(run.timeline)
    timeline.pop("endpoint")
    return {"number": run.number, "verdict": run.verdict.kind, "reason": run.verdict.reason,
            **stats, "timeline": timeline}


def progress_line(finished: int, total: int, runs: Sequence[Run],
                  endpoints: Sequence[str]) -> str:
    """``probe 7/20 · A: streaming 4 · B: streaming 3 · last: 412 ms, streaming``."""
    parts = [f"probe {finished}/{total}"]
    for letter, endpoint in zip("ABCDEFGH", endpoints, strict=False):
        counts = Counter(run.verdict.kind for run in runs if run.endpoint == endpoint)
        parts.append(f"{letter}: " + (" ".join(f"{k} {n}" for k, n in counts.items()) or "–"))
    if runs:
        last = runs[-1]
        parts.append(f"last: {last.stats.total * 1000:.0f} ms, {last.verdict.kind}")
    return " · ".join(parts)
