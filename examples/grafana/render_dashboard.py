"""Draw the Sluice dashboard from a real run: the picture in the README's metrics section.

    python examples/grafana/render_dashboard.py [--seconds 75] [--out dashboard.png]

Grafana cannot run on the machine this was made on (no internet; no Debian
package), so this script does what Grafana would, minus Grafana: it runs
Sluice (under hypercorn, as the tests do) in front of two fake upstreams,
drives real streaming clients at it for ``--seconds``, scrapes ``/metrics``
every second, evaluates each panel's own PromQL from `sluice-dashboard.json`
over those scrapes (`promql.py`: the subset the dashboard uses), and draws
the panels in the dashboard's layout with vl-convert.

What happens during the run (the vertical lines in every panel):

- 0 s: 8 clients stream from ``primary`` (60 tokens at 40/s); one request
  in nine leaves after 5 chunks.
- 20 s: ``primary`` answers 500: retries, fail-over to ``fallback`` (40
  tokens at 25/s after 0.3 s), and its breaker opens.
- 40 s: ``primary`` is healthy again; after the breaker's 8 s cooldown a
  probe request closes it.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import trio
from hypercorn.trio import serve
from promql import Scrape, evaluate, parse_exposition

from server.config import parse_settings
from server.gateway import create_app
from server.probe.plot import render
from server.serving import tcp_server
from server.serving.launch import hypercorn_config
from server.testing.fake_upstream import FakeUpstream, Scenario

HERE = Path(__file__).resolve().parent
CLIENTS = 8
RATE_WINDOW = 10.0  # what $__rate_interval stands for
FAIL_AT, HEAL_AT = 20.0, 40.0
EVENTS = [(FAIL_AT, "primary fails"), (HEAL_AT, "primary healthy")]


def settings(primary: str, fallback: str) -> Any:
    return parse_settings({
        "backends": [
            {"name": "primary", "kind": "openai", "base_url": primary, "models": ["chat"],
             "priority": 0},
            {"name": "fallback", "kind": "openai", "base_url": fallback, "models": ["chat"],
             "priority": 1},
        ],
        "breaker": {"consecutive_failures": 3, "cooldown": 8},
        "retry": {"backoff_base": 0.01, "backoff_max": 0.05},
    })


async def run(seconds: float) -> list[Scrape]:
    primary = FakeUpstream(Scenario(tokens=60, tps=40))
    fallback = FakeUpstream(Scenario(tokens=40, tps=25, first_delay=0.3))
    history: list[Scrape] = []
    async with trio.open_nursery() as servers:
        await servers.start(primary.serve, 0)
        await servers.start(fallback.serve, 0)
        app = create_app(settings(primary.base_url, fallback.base_url), environ={})
        config = hypercorn_config("127.0.0.1:0")
        config.errorlog = None
        stop = trio.Event()
        binds = await servers.start(partial(serve, app, config, shutdown_trigger=stop.wait))
        base = binds[0]
        started = trio.current_time()
        deadline = started + seconds
        limits = httpx.Limits(max_connections=CLIENTS + 2)
        async with httpx.AsyncClient(timeout=30, limits=limits) as client, \
                trio.open_nursery() as load:
            for index in range(CLIENTS):
                load.start_soon(stream_loop, client, base, index, deadline)
            load.start_soon(phases, primary, started)
            await scrape_loop(client, base, started, deadline, history)
        stop.set()
        servers.cancel_scope.cancel("the run is over")
    return history


async def stream_loop(client: httpx.AsyncClient, base: str, index: int, deadline: float) -> None:
    body = {"model": "chat", "stream": True, "stream_options": {"include_usage": True},
            "messages": [{"role": "user", "content": "Tell me about rivers."}]}
    number = 0
    while trio.current_time() < deadline:
        number += 1
        leave_after = 5 if (index + number) % 9 == 0 else None
        try:
            async with client.stream("POST", base + "/v1/chat/completions", json=body) as reply:
                content = 0
                async for line in reply.aiter_lines():
                    content += line.startswith("data: {") and '"content":"t' in line
                    if leave_after is not None and content >= leave_after:
                        break
        except httpx.HTTPError:
            pass
        await trio.sleep(0.05)


async def phases(primary: FakeUpstream, started: float) -> None:
    await trio.sleep_until(started + FAIL_AT)
    primary.scenario = Scenario(status=500)
    await trio.sleep_until(started + HEAL_AT)
    primary.scenario = Scenario(tokens=60, tps=40)


async def scrape_loop(client: httpx.AsyncClient, base: str, started: float, deadline: float,
                      history: list[Scrape]) -> None:
    tick = started
    while tick <= deadline:
        text = (await client.get(base + "/metrics")).text
        history.append(Scrape(round(trio.current_time() - started, 3), parse_exposition(text)))
        tick += 1.0
        await trio.sleep_until(tick)


def panel_chart(panel: dict[str, Any], history: list[Scrape], width: int) -> dict[str, Any]:
    seconds = panel["fieldConfig"]["defaults"].get("unit") == "s"
    points: list[dict[str, Any]] = []
    for target in panel["targets"]:
        for at, scrape in enumerate(history):
            if scrape.at < RATE_WINDOW and "rate(" in target["expr"]:
                continue  # no full window yet
            for labels, value in evaluate(target["expr"], history, at, RATE_WINDOW).items():
                legend = target["legendFormat"]
                for key, label in labels:
                    legend = legend.replace("{{" + key + "}}", label)
                points.append({"t": scrape.at, "series": legend,
                               "value": value * 1000 if seconds else value})
    unit = {"s": "ms", "reqps": "per second"}.get(panel["fieldConfig"]["defaults"]["unit"], "")
    queries = [t["expr"] for t in panel["targets"]]
    subtitle = queries[0] if len(queries) == 1 else f"{queries[0]}  (+{len(queries) - 1} more)"
    x = {"field": "t", "type": "quantitative", "title": "seconds into the run",
         "scale": {"domain": [0, history[-1].at]}}
    return {
        "title": {"text": panel["title"], "subtitle": subtitle[:110], "anchor": "start",
                  "subtitleFontSize": 9, "subtitleColor": "#666666"},
        "width": width, "height": 150,
        "layer": [
            {"data": {"values": points},
             "mark": {"type": "line", "interpolate": "step-after" if "circuit" in panel["title"]
                      .lower() else "linear", "strokeWidth": 1.6},
             "encoding": {"x": x, "y": {"field": "value", "type": "quantitative", "title": unit},
                          "color": {"field": "series", "type": "nominal", "title": None,
                                    "legend": {"orient": "bottom", "columns": 3}}}},
            {"data": {"values": [{"t": at, "event": name} for at, name in EVENTS]},
             "mark": {"type": "rule", "color": "#999999", "strokeDash": [3, 3], "clip": True},
             "encoding": {"x": {"field": "t", "type": "quantitative"}}},
        ],
        "resolve": {"scale": {"color": "independent"}},
    }


def figure(dashboard: dict[str, Any], history: list[Scrape]) -> dict[str, Any]:
    rows: dict[int, list[dict[str, Any]]] = {}
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            rows.setdefault(panel["gridPos"]["y"], []).append(panel)
    return {
        "$schema": "https://vega.github.io/schema/vega-lite/v5.json",
        "title": {"text": "Sluice dashboard — the panels of examples/grafana/sluice-dashboard.json",
                  "subtitle": "drawn from a real run's /metrics by render_dashboard.py (not "
                              "Grafana); dashed lines: primary fails at 20 s, healthy at 40 s",
                  "anchor": "start", "fontSize": 15},
        "config": {"font": "Liberation Sans", "legend": {"labelFontSize": 10, "symbolSize": 60}},
        "vconcat": [{"hconcat": [panel_chart(p, history, p["gridPos"]["w"] * 46 - 40)
                                 for p in sorted(row, key=lambda p: p["gridPos"]["x"])]}
                    for _, row in sorted(rows.items())],
        "spacing": 18,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=75.0)
    parser.add_argument("--out", type=Path, default=HERE / "dashboard.png")
    args = parser.parse_args()
    logging.getLogger("sluice").setLevel(logging.ERROR)  # breaker warnings are expected here
    tcp_server.install()
    history = trio.run(run, args.seconds)
    dashboard = json.loads((HERE / "sluice-dashboard.json").read_text())
    render(figure(dashboard, history), args.out, scale=1.25)
    print(f"{len(history)} scrapes; picture: {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
