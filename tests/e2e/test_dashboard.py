"""The Grafana dashboard (examples/grafana) asks only for metrics and labels Sluice exports."""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import RunningSluice, chat_body
from tests.sse_client import receive_stream

DASHBOARD = Path(__file__).resolve().parents[2] / "examples" / "grafana" / "sluice-dashboard.json"


def expressions() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in dashboard["panels"] for t in p.get("targets", ())]


async def test_every_query_names_an_exported_metric_and_its_labels(
    sluice: RunningSluice, client: httpx.AsyncClient
) -> None:
    async with client.stream("POST", sluice.base_url + "/v1/chat/completions",
                             json=chat_body(stream_options={"include_usage": True})) as response:
        await receive_stream(response)
    await sluice.settle()
    exposition = (await client.get(sluice.base_url + "/metrics")).text
    labels: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            labels.setdefault(sample.name, set()).update(sample.labels)
    exprs = expressions()
    assert len(exprs) >= 12
    for expr in exprs:
        # A metric name is followed by its matchers, its range or a closing parenthesis.
        names = re.findall(r"\b(?:sluice|gen_ai)_\w+(?=[{\[)])", expr)
        assert names, expr
        for name in names:
            assert name in labels, f"{name} is not exported ({expr})"
            used = set(re.findall(r"(\w+)\s*(?:=|!=|=~|!~)\s*\"", expr))
            grouped = re.search(r"by \(([^)]*)\)", expr)
            if grouped:
                used |= {g.strip() for g in grouped.group(1).split(",")} - {"le"}
            assert used <= labels[name], f"{name} has no label {used - labels[name]} ({expr})"
