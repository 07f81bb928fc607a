"""Prometheus metrics, one registry per app (no module-level state).

Recorded once per stream at its scope exit, never per chunk: the hot path
only counts chunks in a local integer. Names follow the field's habits and
carry the ``sluice_`` prefix; the README's reference lists every one.

Beside them, the OpenTelemetry GenAI semantic conventions' histograms
(``gen_ai.server.time_to_first_token``, ``gen_ai.server.time_per_output_token``,
``gen_ai.server.request.duration``, ``gen_ai.client.token.usage``; status
"development", semconv 1.41), named as an OTel Prometheus exporter would
name them (dots to underscores, a ``_seconds`` unit suffix) with the
convention's bucket bounds, so dashboards written for them work here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from server.access_log import StreamRecord
from server.limits.breaker import STATE_VALUES
from server.stream.outcome import OUTCOMES  # the ways a stream can end, each labelled

if TYPE_CHECKING:
    from server.limits.admission import Slots
    from server.limits.overload import LagGuard
    from server.limits.routing import Route
    from server.serving.lifecycle import Lifecycle

# Streams run from milliseconds (errors) to many minutes (long generations).
_DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)
_FIRST_CHUNK_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
# The event loop's lag: the overload threshold is tens of milliseconds.
_LAG_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5,
                1.0, 2.0)
_CHUNK_BUCKETS = (1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000)
# The GenAI conventions' own bucket bounds ("SHOULD be specified with ExplicitBucketBoundaries").
_GENAI_TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0,
                       2.5, 5.0, 7.5, 10.0)
_GENAI_TPOT_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5)
_GENAI_DURATION_BUCKETS = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24,
                           20.48, 40.96, 81.92)
_GENAI_TOKEN_BUCKETS = tuple(4 ** k for k in range(14))  # 1, 4, 16, ... 67108864
# gen_ai.operation.name, gen_ai.provider.name, gen_ai.request.model, and Sluice's backend.
_GENAI_LABELS = ("gen_ai_operation_name", "gen_ai_provider_name", "gen_ai_request_model",
                 "backend")


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
        self.genai_time_to_first_token = Histogram(
            "gen_ai_server_time_to_first_token_seconds",
            "Time to generate the first token, for successful responses (GenAI semconv).",
            _GENAI_LABELS, buckets=_GENAI_TTFT_BUCKETS, registry=r)
        self.genai_time_per_output_token = Histogram(
            "gen_ai_server_time_per_output_token_seconds",
            "Time per output token after the first, for successful responses (GenAI semconv).",
            _GENAI_LABELS, buckets=_GENAI_TPOT_BUCKETS, registry=r)
        self.genai_request_duration = Histogram(
            "gen_ai_server_request_duration_seconds",
            "Request to the end of the response (GenAI semconv); error_type set on failures.",
            (*_GENAI_LABELS, "error_type"), buckets=_GENAI_DURATION_BUCKETS, registry=r)
        self.genai_token_usage = Histogram(
            "gen_ai_client_token_usage",
            "Input and output tokens per request, as the upstream reported them (GenAI semconv).",
            (*_GENAI_LABELS, "gen_ai_token_type"), buckets=_GENAI_TOKEN_BUCKETS, registry=r)
        self._genai_children: dict[tuple[str, ...], tuple[Histogram, ...]] = {}
        self._overload: _Overload | None = None
        self.event_loop_lag = Histogram(
            "sluice_event_loop_lag_samples_seconds",
            "How late the worker's event loop woke a task that was due: every sample of the "
            "overload guard ([overload] enabled).", buckets=_LAG_BUCKETS, registry=r)

    def record_genai(self, record: StreamRecord, routes: Iterable[Route]) -> None:
        """The GenAI-convention histograms of one finished stream.

        ``routes`` are the model's: they give the serving backend's kind
        (``gen_ai_provider_name``) and whether the model is one the
        configuration names. A name only a ``"*"`` backend matched is
        recorded as ``other``, so clients cannot grow the label set.
        Per-token numbers need the upstream's usage: streams whose client
        did not ask for it (``stream_options.include_usage``) have none.
        """
        provider, model = "none", "other"
        for route in routes:
            settings = route.backend.settings
            if settings.name == record.backend:
                provider = settings.kind
            if record.model in settings.models:
                model = record.model
        labels = ("chat", provider, model, record.backend or "none")
        ok = record.outcome == "completed"
        if not ok:
            self.genai_request_duration.labels(*labels, record.outcome).observe(record.duration)
            return
        children = self._genai_children.get(labels) or self._genai_children_of(labels)
        ttft, tpot, duration, tokens_in, tokens_out = children
        duration.observe(record.duration)
        if record.ttfb is not None:
            ttft.observe(record.ttfb)
        output, prompt = record.completion_tokens, record.prompt_tokens
        if prompt is not None:
            tokens_in.observe(prompt)
        if output is not None:
            tokens_out.observe(output)
            if output > 1 and record.ttfb is not None:
                tpot.observe((record.duration - record.ttfb) / (output - 1))

    def _genai_children_of(self, labels: tuple[str, ...]) -> tuple[Histogram, ...]:
        # `labels()` costs a lock and a validation each time (~3 µs): a completed
        # stream's five histograms are looked up once per label set and kept.
        children = (self.genai_time_to_first_token.labels(*labels),
                    self.genai_time_per_output_token.labels(*labels),
                    self.genai_request_duration.labels(*labels, ""),
                    self.genai_token_usage.labels(*labels, "input"),
                    self.genai_token_usage.labels(*labels, "output"))
        self._genai_children[labels] = children
        return children

    def watch(self, routes: Callable[[], Iterable[Route]], slots: Slots,
              lifecycle: Lifecycle) -> None:
        """Export live stream, backend and admission state, read at scrape time."""
        self.registry.register(_LiveState(routes, slots, lifecycle))

    def watch_overload(self, guard: LagGuard) -> None:
        """Export the event loop's lag and the overload refusals, read at scrape time."""
        if self._overload is None:
            self._overload = _Overload()
            self.registry.register(self._overload)
        self._overload.guard = guard  # a new serving lifetime: its own guard

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


class _Overload(Collector):
    """The overload guard's state (`server.limits.overload`): kept by the guard as plain
    numbers, so neither a lag sample nor a refusal touches a metric's lock."""

    def __init__(self) -> None:
        self.guard: LagGuard | None = None

    def collect(self) -> Iterator[Metric]:
        guard = self.guard
        if guard is None:
            return
        yield GaugeMetricFamily("sluice_event_loop_lag_seconds",
                                "How late the worker's event loop runs a task that is due "
                                "(smoothed over the last samples).", value=guard.lag)
        yield GaugeMetricFamily("sluice_overload_shedding",
                                "1 while new streams are refused because the loop is behind.",
                                value=int(guard.shedding))
        yield GaugeMetricFamily("sluice_overload_refused_share",
                                "The share of new streams refused now (1 above the lag "
                                "threshold, less as the lag falls toward lag_clear).",
                                value=guard.refused_share)
        yield CounterMetricFamily("sluice_overload_refusals",
                                  "New streams refused (503 gateway_overloaded) because the "
                                  "event loop was behind.", value=guard.refusals)
