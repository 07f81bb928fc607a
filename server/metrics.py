"""Prometheus metrics, one registry per app (no module-level state).

Recorded once per stream at its scope exit, never per chunk: the hot path
only counts chunks in a local integer. Names follow the field's habits and
carry the ``sluice_`` prefix; the README's reference lists every one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from server.limits.breaker import STATE_VALUES
from server.stream.outcome import OUTCOMES  # the ways a stream can end, each labelled

if TYPE_CHECKING:
    from server.limits.admission import Slots
    from server.limits.routing import Route
    from server.serving.lifecycle import Lifecycle

# Streams run from milliseconds (errors) to many minutes (long generations).
_DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)
_FIRST_CHUNK_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_CHUNK_BUCKETS = (1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.client_disconnects = Counter(
            "sluice_client_disconnects", "Clients that left before their stream ended.",
            registry=r)
        self.stream_outcomes = Counter(
            "sluice_stream_outcomes", "Streams by how they ended.", ["outcome"], registry=r)
        self.upstream_requests = Counter(
            "sluice_upstream_requests", "Requests sent to backends, by how they ended.",
            ["backend", "outcome"], registry=r)
        self.time_to_first_chunk = Histogram(
            "sluice_time_to_first_chunk_seconds",
            "From request received to the first content chunk from the upstream.",
            ["backend"], buckets=_FIRST_CHUNK_BUCKETS, registry=r)
        self.stream_duration = Histogram(
            "sluice_stream_duration_seconds", "From request received to stream end.",
            ["backend"], buckets=_DURATION_BUCKETS, registry=r)
        self.chunks_per_stream = Histogram(
            "sluice_chunks_per_stream", "Upstream chunks relayed per stream.",
            buckets=_CHUNK_BUCKETS, registry=r)
        self.breaker_transitions = Counter(
            "sluice_breaker_transitions", "Circuit breaker state changes, by new state.",
            ["backend", "state"], registry=r)
        self.rate_limited = Counter(
            "sluice_rate_limited", "Requests refused by the per-client rate limit.", registry=r)
        # Fail-over, second round (server.stream.pump, server.stream.hedge).
        self.retry_budget_exhausted = Counter(
            "sluice_retry_budget_exhausted",
            "Requests not tried again because the failing backend's retry budget was spent.",
            registry=r)
        self.prefill_refusals = Counter(
            "sluice_prefill_refusals",
            "Continuations refused by a backend that declared it could continue a prefill.",
            ["backend"], registry=r)
        self.context_fallbacks = Counter(
            "sluice_context_fallbacks",
            "Requests too long for their model, sent on to a fallback model (labelled).",
            ["model"], registry=r)
        self.hedges_started = Counter(
            "sluice_hedges_started", "Second attempts raced against a slow first token.",
            registry=r)
        self.hedges_won = Counter(
            "sluice_hedges_won", "Hedges whose first token came before the first attempt's.",
            registry=r)
        self.hedge_wasted_payloads = Counter(
            "sluice_hedge_wasted_payloads",
            "Upstream payloads a hedge race's loser had read when it lost, never relayed.",
            registry=r)
        for outcome in OUTCOMES:  # export zeros, so rates exist before the first event
            self.stream_outcomes.labels(outcome)

    def watch(self, routes: Callable[[], Iterable[Route]], slots: Slots,
              lifecycle: Lifecycle) -> None:
        """Export live stream, backend and admission state, read at scrape time."""
        self.registry.register(_LiveState(routes, slots, lifecycle))

    def render(self) -> bytes:
        return generate_latest(_WithoutCreated(self.registry))


class _WithoutCreated(Collector):
    """The registry without the ``*_created`` series prometheus_client adds to each counter
    and histogram: a start timestamp per label set, half the lines of a scrape, read by
    nothing here. (Its switch, ``disable_created_metrics``, is process-wide; this is per app.)"""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry = registry

    def collect(self) -> Iterator[Metric]:
        for metric in self._registry.collect():
            metric.samples = [s for s in metric.samples if not s.name.endswith("_created")]
            yield metric


class _LiveState(Collector):
    """Gauges computed when scraped: nothing to keep in step on the hot path."""

    def __init__(self, routes: Callable[[], Iterable[Route]], slots: Slots,
                 lifecycle: Lifecycle) -> None:
        self._routes = routes
        self._slots = slots
        self._lifecycle = lifecycle

    def collect(self) -> Iterator[Metric]:
        # The lifecycle counts live streams for the drain; the gauge reads that count.
        yield GaugeMetricFamily("sluice_active_streams",
                                "Streams (and aggregated requests) in flight.",
                                value=self._lifecycle.active.value)
        in_flight = GaugeMetricFamily(
            "sluice_backend_in_flight", "Upstream requests in flight per backend.",
            labels=["backend"])
        circuit = GaugeMetricFamily(
            "sluice_backend_circuit_state",
            "Circuit breaker per backend: 0 closed, 1 half-open, 2 open.", labels=["backend"])
        # Counted by routing itself (`Route.panic_routes`), which has no metrics to hand.
        panic = CounterMetricFamily(
            "sluice_breaker_panic_routes",
            "Attempts sent to a backend whose circuit was open, because every backend "
            "the request could use was (panic routing).", labels=["backend"])
        for route in self._routes():
            in_flight.add_metric([route.name], route.in_flight)
            circuit.add_metric([route.name], STATE_VALUES[route.breaker.state])
            panic.add_metric([route.name], route.panic_routes)
        yield in_flight
        yield circuit
        yield panic
        yield GaugeMetricFamily("sluice_admission_slots_used",
                                "Admission slots held by running requests.",
                                value=self._slots.used)
        yield GaugeMetricFamily("sluice_admission_waiting",
                                "Requests waiting for an admission slot.",
                                value=self._slots.waiting)
