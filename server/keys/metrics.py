"""Per-key accounting and the state store's health, as Prometheus metrics.

Labelled by key *name*, never by the key or its hash. Cardinality is bounded
on purpose: at most ``[auth] metrics_max_keys`` names get their own label
(the first seen by this worker; later ones count under ``_other``), and
models are labelled only when configured by name (a ``"*"`` backend's other
models count under ``_other``). So a series count is at most
``metrics_max_keys × (models + 1)`` per metric and token kind.

These counters are this worker's view; the store's usage (the admin API's
``/admin/usage``) is the whole deployment's.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge

OTHER = "_other"


class TenancyMetrics:
    def __init__(self, registry: CollectorRegistry, *, max_keys: int,
                 models: Iterable[str]) -> None:
        self.registry = registry
        self._max_keys = max_keys
        self._names: set[str] = set()
        self._models = frozenset(models)
        r = registry
        self.requests = Counter(
            "sluice_key_requests", "Requests admitted, per API key name and model.",
            ["key", "model"], registry=r)
        self.tokens = Counter(
            "sluice_key_tokens", "Tokens used (as settled), per key, model and kind "
            "(prompt, completion).", ["key", "model", "kind"], registry=r)
        self.streams_cut = Counter(
            "sluice_key_streams_cut", "Streams that did not complete, per key and model.",
            ["key", "model"], registry=r)
        self.spend = Counter(
            "sluice_key_spend", "Spend from the price table, per key and model.",
            ["key", "model"], registry=r)
        self.refused = Counter(
            "sluice_key_refused", "Requests refused by a key's limits (429), per key and "
            "reason.", ["key", "reason"], registry=r)
        self.forbidden = Counter(
            "sluice_key_forbidden", "Requests for a model the key may not use (403).",
            ["key"], registry=r)
        self.unauthorized = Counter(
            "sluice_unauthorized", "Requests without a valid API key (401), by reason.",
            ["reason"], registry=r)
        self.store_errors = Counter(
            "sluice_state_store_errors", "State store calls that failed or ran out of time.",
            ["operation"], registry=r)
        self.store_fallbacks = Counter(
            "sluice_state_store_fallbacks", "Requests decided without the shared store "
            "(on_error: open = counted locally, closed = refused with 503).",
            ["decision"], registry=r)
        self.store_available = Gauge(
            "sluice_state_store_available", "1 while the shared state store answers, else 0.",
            registry=r)
        self.store_available.set(1)

    def key(self, name: str) -> str:
        """The label for a key name: its own for the first ``max_keys`` names, else _other."""
        if name in self._names:
            return name
        if len(self._names) >= self._max_keys:
            return OTHER
        self._names.add(name)
        return name

    def model(self, model: str) -> str:
        return model if model in self._models else OTHER
