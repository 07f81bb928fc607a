"""The probe's picture: each run's chunk arrivals, and the gaps between them, per endpoint.

One row per endpoint (two when comparing): on the left every run as a line
of ticks, one tick per content chunk at the moment it reached the client
(a triangle marks the response head, a square the ``[DONE]``, a cross a run
that ended without it); on the right the histogram of the gaps between
content chunks on a log scale, with the 1 ms zero-interval bound drawn in.
A streaming run is an even comb of ticks; a buffered one is a long empty
line and then a solid block at the end.

The figure is a Vega-Lite specification built by pure functions (`figure`),
rendered to PNG or SVG by vl-convert (`render`), which is the ``probe``
extra: one self-contained wheel (its own JavaScript engine and fonts, no
browser, no numpy), chosen over matplotlib for install weight (~84 MB in one
package against ~170 MB in eleven, measured in fresh venvs) with the same
print-quality output. The specification is also the ``--plot x.vl.json``
output, for anyone who wants to restyle it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from server.probe.report import Summary
from server.probe.runs import Run
from server.probe.timeline import ZERO_GAP

_FLOOR_MS = 0.01  # gaps under 10 µs are drawn at 10 µs: a log scale has no zero
_BINS_PER_DECADE = 4
_WHAT = ("content chunk", "response head", "[DONE]", "ended without [DONE]")
_WHAT_COLOURS = ("#1f6fb4", "#8c8c8c", "#222222", "#d62728")


class PlotUnavailable(RuntimeError):
    """vl-convert is not installed: ``pip install 'sluice[probe]'``."""


def figure(runs: Sequence[Run], summaries: Sequence[Summary]) -> dict[str, Any]:
    """The Vega-Lite specification of the whole picture."""
    longest = max((r.timeline.ended_at for r in runs), default=1.0) or 1.0
    all_gaps = [g for r in runs for g in r.stats.gaps]
    top = max([_FLOOR_MS * 10, *(g * 1000 for g in all_gaps)])
    edges = _edges(top)
    rows = []
    for letter, summary in zip("ABCDEFGH", summaries, strict=False):
        mine = sorted((r for r in runs if r.endpoint == summary.endpoint), key=lambda r: r.number)
        counts = ", ".join(f"{k} {n}" for k, n in summary.verdicts.items())
        rows.append({
            "title": {"text": f"{letter}: {summary.endpoint}",
                      "subtitle": f"{summary.verdict.upper()} ({counts} of {summary.runs} runs)"
                                  f" — {summary.reason}",
                      "anchor": "start"},
            "hconcat": [_timeline(mine, longest), _histogram(mine, edges)],
        })
    return {
        "$schema": "https://vega.github.io/schema/vega-lite/v5.json",
        "config": {"font": "Liberation Sans", "view": {"stroke": "#dddddd"},
                   "title": {"fontSize": 14, "subtitleFontSize": 11},
                   "axis": {"labelFontSize": 11, "titleFontSize": 11}},
        "vconcat": rows,
        "spacing": 28,
    }


def _timeline(runs: Sequence[Run], longest: float) -> dict[str, Any]:
    points: list[dict[str, Any]] = []
    for run in runs:
        label = f"run {run.number}"
        t = run.timeline
        points += [{"run": label, "t": at, "what": _WHAT[0]} for at in t.content_at]
        if t.headers_at is not None:
            points.append({"run": label, "t": t.headers_at, "what": _WHAT[1]})
        points.append({"run": label, "t": t.ended_at, "what": _WHAT[2 if t.done else 3]})
    order = [f"run {r.number}" for r in runs]
    step = max(8, min(18, 260 // max(1, len(runs))))
    x = {"field": "t", "type": "quantitative", "title": "seconds since the request",
         "scale": {"domain": [0, round(longest * 1.03, 4)], "nice": False}}
    y = {"field": "run", "type": "nominal", "sort": order, "title": None}
    colour = {"field": "what", "type": "nominal", "title": None,
              "scale": {"domain": list(_WHAT), "range": list(_WHAT_COLOURS)},
              "legend": {"orient": "bottom", "direction": "horizontal"}}
    return {
        "width": 560, "height": {"step": step},
        "data": {"values": points},
        "layer": [
            {"transform": [{"filter": f"datum.what == '{_WHAT[0]}'"}],
             "mark": {"type": "tick", "thickness": 1, "opacity": 0.9},
             "encoding": {"x": x, "y": y, "color": colour}},
            {"transform": [{"filter": f"datum.what != '{_WHAT[0]}'"}],
             "mark": {"type": "point", "filled": True, "size": 45},
             "encoding": {"x": x, "y": y, "color": colour,
                          "shape": {"field": "what", "type": "nominal", "legend": None,
                                    "scale": {"domain": list(_WHAT[1:]),
                                              "range": ["triangle-right", "square", "cross"]}}}},
        ],
    }


def _histogram(runs: Sequence[Run], edges: list[float]) -> dict[str, Any]:
    counts = [0] * (len(edges) - 1)
    for run in runs:
        for gap in run.stats.gaps:
            counts[_bin(max(gap * 1000, _FLOOR_MS), edges)] += 1
    bars = [{"lo": lo, "hi": hi, "gaps": n}
            for lo, hi, n in zip(edges, edges[1:], counts, strict=False) if n]
    x = {"field": "lo", "type": "quantitative", "title": "gap between content chunks (ms)",
         "scale": {"type": "log", "domain": [edges[0], edges[-1]], "nice": False}}
    return {
        "width": 300, "height": 140,
        "layer": [
            {"data": {"values": bars},
             "mark": {"type": "rect", "color": "#1f6fb4", "stroke": "white", "strokeWidth": 0.5},
             "encoding": {"x": x, "x2": {"field": "hi"},
                          "y": {"field": "gaps", "type": "quantitative", "title": "gaps",
                                "scale": {"zero": True}},
                          "y2": {"datum": 0}}},
            {"data": {"values": [{"at": ZERO_GAP * 1000, "label": "1 ms"}]},
             "mark": {"type": "rule", "color": "#d62728", "strokeDash": [4, 3]},
             "encoding": {"x": {"field": "at", "type": "quantitative"}}},
            {"data": {"values": [{"at": ZERO_GAP * 1000, "label": "← zero intervals"}]},
             "mark": {"type": "text", "align": "right", "dx": -4, "dy": -4, "baseline": "top",
                      "color": "#d62728", "fontSize": 10},
             "encoding": {"x": {"field": "at", "type": "quantitative"},
                          "y": {"value": 0}, "text": {"field": "label"}}},
        ],
    }


def _edges(top_ms: float) -> list[float]:
    """Log-spaced bin edges from 10 µs to past ``top_ms``, four per decade."""
    first = round(math.log10(_FLOOR_MS) * _BINS_PER_DECADE)
    last = math.ceil(math.log10(top_ms) * _BINS_PER_DECADE + 1e-9) + 1
    return [10 ** (k / _BINS_PER_DECADE) for k in range(first, last + 1)]


def _bin(value_ms: float, edges: list[float]) -> int:
    for i in range(len(edges) - 1):
        if value_ms < edges[i + 1]:
            return i
    return len(edges) - 2


def render(spec: dict[str, Any], path: Path, *, scale: float = 1.5) -> None:
    """Write the picture as PNG, SVG or the Vega-Lite JSON itself, by the file's suffix.

    ``scale`` multiplies a PNG's pixels (1.5: sharp on most screens, a few hundred KB).
    """
    import orjson

    suffix = path.suffix.lower()
    if path.name.endswith(".vl.json") or suffix == ".json":
        path.write_bytes(orjson.dumps(spec, option=orjson.OPT_INDENT_2))
        return
    if suffix not in (".png", ".svg"):
        raise ValueError(f"--plot: a .png, .svg or .vl.json file, not {path.name!r}")
    try:
        import vl_convert
    except ImportError:
        raise PlotUnavailable("plotting needs vl-convert: pip install 'sluice[probe]'") from None
    text = orjson.dumps(spec).decode()
    if suffix == ".png":
        path.write_bytes(vl_convert.vegalite_to_png(text, scale=scale))
    else:
        path.write_text(vl_convert.vegalite_to_svg(text))
