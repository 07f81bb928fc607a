"""Just enough PromQL to evaluate the Sluice dashboard's queries over scraped ``/metrics`` text.

Grafana cannot run here (no internet, and no Debian package), so
`render_dashboard.py` draws the dashboard's panels itself: it evaluates
each panel's own ``expr`` with this evaluator over scrapes taken during a
real run. The subset is what `sluice-dashboard.json` uses:

    sum|max [by (l, ...)] (EXPR)
    rate(NAME{matchers}[RANGE])          # (last − first) ÷ seconds between them
    histogram_quantile(Q, EXPR)          # linear within the bucket, as Prometheus does
    NAME{label="v", label!="v", label=~"a|b", label!~"a|b"}

    history = [Scrape(t, parse_exposition(text)), ...]
    series = evaluate("sum by (outcome) (rate(x_total[10s]))", history, at=t)
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

Labels = frozenset[tuple[str, str]]
Vector = dict[Labels, float]

_TOKEN = re.compile(r'\s*(=~|!~|!=|[(){}\[\],=]|"[^"]*"|[A-Za-z_][A-Za-z0-9_]*|[0-9.]+[smh]?)')


@dataclass(frozen=True)
class Scrape:
    at: float  # seconds since the run began
    samples: Mapping[str, Vector]  # sample name → labels → value


def parse_exposition(text: str) -> dict[str, Vector]:
    samples: dict[str, Vector] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[frozenset(sample.labels.items())] = sample.value
    return samples


def evaluate(expr: str, history: Sequence[Scrape], at: int, rate_window: float) -> Vector:
    """The value of ``expr`` at scrape number ``at``; ``$__rate_interval`` is ``rate_window``."""
    tokens = [t for t in _TOKEN.findall(expr.replace("$__rate_interval", f"{rate_window:g}s"))]
    parser = _Parser(tokens)
    node = parser.expression()
    if parser.rest():
        raise ValueError(f"cannot parse {expr!r} past {parser.rest()}")
    return node(history, at)


Node = Callable[[Sequence[Scrape], int], Vector]


class _Parser:
    def __init__(self, tokens: list[str]) -> None:
        self.tokens = tokens
        self.i = 0

    def rest(self) -> list[str]:
        return self.tokens[self.i:]

    def take(self, expected: str | None = None) -> str:
        token = self.tokens[self.i]
        if expected is not None and token != expected:
            raise ValueError(f"expected {expected!r}, got {token!r}")
        self.i += 1
        return token

    def expression(self) -> Node:
        word = self.take()
        if word in ("sum", "max"):
            by: list[str] | None = None
            if self.tokens[self.i] == "by":
                self.take("by")
                by = self.names()
            self.take("(")
            inner = self.expression()
            self.take(")")
            return _aggregate(sum if word == "sum" else max, by, inner)
        if word == "rate":
            self.take("(")
            name, matchers = self.selector()
            self.take("[")
            window = _seconds(self.take())
            self.take("]")
            self.take(")")
            return _rate(name, matchers, window)
        if word == "histogram_quantile":
            self.take("(")
            q = float(self.take())
            self.take(",")
            inner = self.expression()
            self.take(")")
            return _quantile(q, inner)
        self.i -= 1
        name, matchers = self.selector()
        return lambda history, at: _select(history[at], name, matchers)

    def names(self) -> list[str]:
        self.take("(")
        names = []
        while self.tokens[self.i] != ")":
            names.append(self.take())
            if self.tokens[self.i] == ",":
                self.take(",")
        self.take(")")
        return names

    def selector(self) -> tuple[str, list[tuple[str, str, str]]]:
        name = self.take()
        matchers = []
        if self.i < len(self.tokens) and self.tokens[self.i] == "{":
            self.take("{")
            while self.tokens[self.i] != "}":
                label, op, value = self.take(), self.take(), self.take().strip('"')
                matchers.append((label, op, value))
                if self.tokens[self.i] == ",":
                    self.take(",")
            self.take("}")
        return name, matchers


def _matches(labels: Labels, matchers: list[tuple[str, str, str]]) -> bool:
    values = dict(labels)
    for label, op, wanted in matchers:
        value = values.get(label, "")
        if (op == "=" and value != wanted) or (op == "!=" and value == wanted):
            return False
        if op in ("=~", "!~") and bool(re.fullmatch(wanted, value)) != (op == "=~"):
            return False
    return True


def _select(scrape: Scrape, name: str, matchers: list[tuple[str, str, str]]) -> Vector:
    return {k: v for k, v in scrape.samples.get(name, {}).items() if _matches(k, matchers)}


def _rate(name: str, matchers: list[tuple[str, str, str]], window: float) -> Node:
    def rate(history: Sequence[Scrape], at: int) -> Vector:
        now = history[at]
        start = next((s for s in history[: at + 1] if s.at >= now.at - window - 1e-9), now)
        if now.at - start.at <= 0:
            return {}
        before = _select(start, name, matchers)
        return {k: max(0.0, v - before.get(k, 0.0)) / (now.at - start.at)
                for k, v in _select(now, name, matchers).items()}

    return rate


def _aggregate(combine: Callable[[list[float]], float], by: list[str] | None,
               inner: Node) -> Node:
    def aggregate(history: Sequence[Scrape], at: int) -> Vector:
        groups: dict[Labels, list[float]] = {}
        for labels, value in inner(history, at).items():
            key = frozenset((k, v) for k, v in labels if by is not None and k in by)
            groups.setdefault(key, []).append(value)
        return {k: combine(v) for k, v in groups.items()}

    return aggregate


def _quantile(q: float, inner: Node) -> Node:
    def quantile(history: Sequence[Scrape], at: int) -> Vector:
        series: dict[Labels, list[tuple[float, float]]] = {}
        for labels, value in inner(history, at).items():
            le = dict(labels).get("le")
            if le is None:
                continue
            rest = frozenset((k, v) for k, v in labels if k != "le")
            series.setdefault(rest, []).append((float(le), value))
        result = {}
        for labels, buckets in series.items():
            value = _bucket_quantile(q, sorted(buckets))
            if not math.isnan(value):
                result[labels] = value
        return result

    return quantile


def _bucket_quantile(q: float, buckets: list[tuple[float, float]]) -> float:
    """Prometheus's estimate: find the bucket holding rank q·total, interpolate linearly."""
    total = buckets[-1][1] if buckets else 0.0
    if total <= 0:
        return math.nan
    rank = q * total
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if math.isinf(bound):
                return lower_bound  # the highest finite bound, as Prometheus does
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / (
                (count - lower_count) or 1.0)
        lower_bound, lower_count = bound, count
    return lower_bound


def _seconds(text: str) -> float:
    unit = {"s": 1, "m": 60, "h": 3600}.get(text[-1])
    return float(text[:-1]) * unit if unit else float(text)
