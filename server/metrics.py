"""Prometheus metrics, one registry per app (no module-level state).

Recorded once per stream at its scope exit, never per chunk: the hot path
only counts chunks in a local integer. Names follow the field's habits and
carry the ``sluice_`` prefix; the README's reference lists every one.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

# Streams run from milliseconds (errors) to many minutes (long generations).
_DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)
_FIRST_CHUNK_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_CHUNK_BUCKETS = (1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000)

# The ways a stream can end; `sluice_stream_outcomes_total{outcome=...}`.
OUTCOMES = (
    "completed",          # the upstream finished; the client got [DONE]
    "client_disconnect",  # the client left; the upstream was cancelled
    "upstream_error",     # refused, broken, malformed or cut upstream
    "upstream_timeout",   # connect, first-chunk or idle timeout
    "rejected",           # an upstream 4xx relayed to the client
    "cancelled",          # cancelled from outside (server shutdown)
)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.active_streams = Gauge(
            "sluice_active_streams", "Streams (and aggregated requests) in flight.",
            registry=r)
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
        for outcome in OUTCOMES:  # export zeros, so rates exist before the first event
            self.stream_outcomes.labels(outcome)

    def render(self) -> bytes:
        return generate_latest(self.registry)
