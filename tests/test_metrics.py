"""server/metrics.py: the GenAI-convention histograms of one finished stream, with plain numbers."""

from __future__ import annotations

from dataclasses import replace

import pytest

from server.access_log import StreamRecord
from server.backends.simulated import SimulatedBackend
from server.config import parse_settings
from server.limits.breaker import CircuitBreaker
from server.limits.routing import Route
from server.metrics import Metrics

SETTINGS = parse_settings({"backends": [
    {"name": "sim", "kind": "simulated", "models": ["llama3"]},
    {"name": "any", "kind": "simulated", "models": ["*"]},
]})
ROUTES = tuple(Route(SimulatedBackend(b), CircuitBreaker(SETTINGS.breaker))
               for b in SETTINGS.backends)
RECORD = StreamRecord(
    request_id="r", key=None, model="llama3", backend="sim", attempts=1, outcome="completed",
    error_id=None, error=None, status=200, stream=True, ttfb=0.1, duration=2.1, chunks=103,
    prompt_tokens=30, completion_tokens=101)
LABELS = {"gen_ai_operation_name": "chat", "gen_ai_provider_name": "simulated",
          "gen_ai_request_model": "llama3", "backend": "sim"}


def sample(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def test_a_completed_stream() -> None:
    metrics = Metrics()
    metrics.record_genai(RECORD, ROUTES)
    assert sample(metrics, "gen_ai_server_time_to_first_token_seconds_sum", **LABELS) == 0.1
    # (2.1 s − 0.1 s) over the 100 tokens after the first: 20 ms a token.
    assert sample(metrics, "gen_ai_server_time_per_output_token_seconds_sum",
                  **LABELS) == pytest.approx(0.02)
    assert sample(metrics, "gen_ai_server_time_per_output_token_seconds_bucket", **LABELS,
                  le="0.025") == 1
    assert sample(metrics, "gen_ai_client_token_usage_sum", **LABELS,
                  gen_ai_token_type="input") == 30
    assert sample(metrics, "gen_ai_client_token_usage_bucket", **LABELS,
                  gen_ai_token_type="output", le="256.0") == 1
    assert sample(metrics, "gen_ai_server_request_duration_seconds_sum", **LABELS,
                  error_type="") == 2.1


def test_a_failed_stream_counts_only_its_duration_with_its_error_type() -> None:
    metrics = Metrics()
    metrics.record_genai(replace(RECORD, outcome="upstream_timeout", prompt_tokens=None,
                                  completion_tokens=None), ROUTES)
    assert sample(metrics, "gen_ai_server_request_duration_seconds_count", **LABELS,
                  error_type="upstream_timeout") == 1
    assert sample(metrics, "gen_ai_server_time_to_first_token_seconds_count", **LABELS) is None


def test_a_name_only_a_wildcard_matched_is_other() -> None:
    metrics = Metrics()
    for model in ("made-up-1", "made-up-2"):
        metrics.record_genai(replace(RECORD, model=model, backend="any"), ROUTES)
    assert sample(metrics, "gen_ai_server_time_to_first_token_seconds_count",
                  **{**LABELS, "gen_ai_request_model": "other", "backend": "any"}) == 2


def test_one_token_has_no_time_per_output_token() -> None:
    metrics = Metrics()
    metrics.record_genai(replace(RECORD, prompt_tokens=None, completion_tokens=1), ROUTES)
    assert sample(metrics, "gen_ai_server_time_per_output_token_seconds_count", **LABELS) == 0
    assert sample(metrics, "gen_ai_client_token_usage_count", **LABELS,
                  gen_ai_token_type="output") == 1
