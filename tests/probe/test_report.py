"""Summaries, the table, the JSON, the progress line and the picture's specification."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path

import pytest

from server.probe.plot import _edges, figure, render
from server.probe.report import as_json, progress_line, run_lines, summarise, table
from server.probe.runs import Run, judge_run
from server.probe.timeline import Timeline

REPO = Path(__file__).resolve().parents[2]


def run(endpoint: str, number: int, content_at: list[float], *, done: bool = True,
        status: int = 200) -> Run:
    t = Timeline(status=status, headers_at=0.004, chunk_at=tuple(content_at),
                 content_at=tuple(content_at), ended_at=content_at[-1] + 0.001 if content_at
                 else 0.01, done=done, usage={"completion_tokens": len(content_at)},
                 endpoint=endpoint)
    return judge_run(endpoint, number, t)


def paced(n: int, gap: float, first: float) -> list[float]:
    return [first + i * gap for i in range(n)]


RUNS = [run("A", 1, paced(10, 0.02, 0.05)), run("B", 1, paced(10, 0.02, 0.04)),
        run("A", 2, paced(10, 0.02, 0.07)), run("B", 2, paced(10, 0.02, 0.04)),
        run("A", 3, paced(10, 0.02, 0.06)), run("B", 3, [0.5] * 10)]


def test_summaries_in_the_order_given_with_spreads_and_counts() -> None:
    a, b = summarise(RUNS, ["A", "B"])
    assert (a.endpoint, a.runs, a.verdict, a.verdicts, a.done) == (
        "A", 3, "streaming", {"streaming": 3}, 3)
    ttft = a.numbers["ttft"]
    assert (ttft.p50, ttft.p90, ttft.p99) == pytest.approx((0.06, 0.07, 0.07))
    assert b.verdicts == {"streaming": 2, "buffered": 1}
    assert b.verdict == "streaming"
    assert a.statuses == {"200": 3}
    assert a.usage == {"completion_tokens": 10}


def test_a_tie_goes_to_the_worse_verdict() -> None:
    runs = [run("A", 1, paced(10, 0.02, 0.05)), run("A", 2, [0.5] * 10)]
    (summary,) = summarise(runs)
    assert summary.verdict == "buffered"
    assert summary.reason == runs[1].verdict.reason


def test_table_sets_endpoints_side_by_side_with_the_difference() -> None:
    text = table(summarise(RUNS, ["A", "B"]))
    lines = text.splitlines()
    assert lines[:2] == ["A: A", "B: B"]
    header = lines[3].split()
    assert header == ["A", "p50", "A", "p90", "A", "p99", "B", "p50", "B", "p90", "B", "p99",
                      "Δ", "p50", "(A−B)"]
    ttft = next(line for line in lines if line.startswith("time to first content"))
    assert ttft.split()[-2:] == ["+20.0", "ms"]  # 60 ms against 40 ms
    assert "A: STREAMING (streaming 3 of 3 runs)" in text
    assert "B: STREAMING (streaming 2, buffered 1 of 3 runs)" in text


def test_one_endpoint_has_no_difference_column() -> None:
    text = table(summarise([r for r in RUNS if r.endpoint == "A"]))
    assert "Δ" not in text


def test_json_holds_every_run_and_survives_a_round_trip() -> None:
    document = json.loads(json.dumps(as_json(RUNS, summarise(RUNS, ["A", "B"]))))
    a, b = document["endpoints"]
    assert a["summary"]["verdict"] == "streaming"
    assert [r["number"] for r in b["runs"]] == [1, 2, 3]
    assert b["runs"][2]["verdict"] == "buffered"
    assert b["runs"][2]["timeline"]["content_at"] == [0.5] * 10
    assert "gaps" not in b["runs"][2]


def test_progress_line() -> None:
    assert progress_line(3, 6, RUNS[:3], ["A", "B"]) == (
        "probe 3/6 · A: streaming 2 · B: streaming 1 · last: 251 ms, streaming")
    assert progress_line(0, 6, [], ["A", "B"]) == "probe 0/6 · A: – · B: –"


def test_figure_has_a_row_per_endpoint_with_timeline_and_histogram() -> None:
    spec = figure(RUNS, summarise(RUNS, ["A", "B"]))
    rows = spec["vconcat"]
    assert [row["title"]["text"] for row in rows] == ["A: A", "B: B"]
    timeline, histogram = rows[1]["hconcat"]
    points = timeline["data"]["values"]
    chunks = [p for p in points if p["what"] == "content chunk"]
    assert len(chunks) == 30
    assert sum(1 for p in points if p["what"] == "[DONE]") == 3
    bars = histogram["layer"][0]["data"]["values"]
    assert sum(bar["gaps"] for bar in bars) == 27  # 3 runs × 9 gaps
    zeros = [bar for bar in bars if bar["hi"] <= 1.0]
    assert sum(bar["gaps"] for bar in zeros) == 9  # the buffered run's, all under 1 ms


def test_bin_edges_are_log_spaced_from_10_us_past_the_largest_gap() -> None:
    edges = _edges(20.0)
    assert edges[0] == pytest.approx(0.01)
    assert edges[-1] > 20.0
    ratios = {round(b / a, 6) for a, b in itertools.pairwise(edges)}
    assert ratios == {round(10 ** 0.25, 6)}


def test_render_writes_png_svg_and_the_spec(tmp_path: Path) -> None:
    spec = figure(RUNS, summarise(RUNS))
    render(spec, tmp_path / "p.png")
    assert (tmp_path / "p.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    render(spec, tmp_path / "p.svg")
    assert "<svg" in (tmp_path / "p.svg").read_text()[:200]
    render(spec, tmp_path / "p.vl.json")
    assert json.loads((tmp_path / "p.vl.json").read_text()) == spec
    with pytest.raises(ValueError, match=r"not 'p\.gif'"):
        render(spec, tmp_path / "p.gif")


def test_one_line_per_run_in_run_order() -> None:
    lines = run_lines(RUNS, ["A", "B"]).splitlines()
    assert [line.split()[0] for line in lines] == ["A1", "A2", "A3", "B1", "B2", "B3"]
    assert lines[0].split()[1:3] == ["streaming", "200"]
    assert "TTFB 4.0 ms  first 50.0 ms  total 231.0 ms  10 chunks  10 tokens" in lines[0]
    assert lines[5].split()[1] == "buffered"
    assert lines[5].endswith("zero 100 %  burst 10  [DONE]")


def test_the_sluice_command_needs_neither_httpx_nor_vl_convert() -> None:
    """`sluice serve` runs on the core install: the probe's imports wait for `sluice probe`."""
    code = ("import sys\n"
            "sys.modules['httpx'] = sys.modules['vl_convert'] = None  # not installed\n"
            "from server.cli import main\n"
            "try:\n    main(['probe', '--help'])\n"
            "except SystemExit as exit:\n    sys.exit(exit.code)\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                            text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert "--compare URL2" in result.stdout
