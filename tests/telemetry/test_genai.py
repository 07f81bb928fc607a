"""server/telemetry/genai.py: the spans' attributes, from plain values."""

from __future__ import annotations

from dataclasses import replace

import pytest

from server.access_log import StreamRecord
from server.telemetry import genai

RECORD = StreamRecord(
    request_id="req_1", key=None, model="llama3", backend="local", attempts=2,
    outcome="completed", error_id=None, error=None, status=200, stream=True, ttfb=0.25,
    duration=3.0, chunks=40, prompt_tokens=12, completion_tokens=40)


@pytest.mark.parametrize(("endpoint", "operation"), [
    ("/v1/chat/completions", "chat"), ("/chat", "chat"), ("/v1/responses", "chat"),
    ("/v1/completions", "text_completion")])
def test_the_operation_follows_the_endpoint(endpoint: str, operation: str) -> None:
    assert genai.operation_name(endpoint) == operation
    assert genai.stream_start(endpoint, model="m", request_id="r", stream=False) == {
        "http.request.method": "POST", "http.route": endpoint,
        "gen_ai.operation.name": operation, "gen_ai.request.model": "m",
        "sluice.request_id": "r", "sluice.stream": False}


def test_a_completed_stream_says_what_it_cost() -> None:
    assert genai.stream_end(RECORD, response_model="llama3-8b", finish_reasons=("stop",)) == {
        "sluice.outcome": "completed", "sluice.attempts": 2, "sluice.chunks": 40,
        "http.response.status_code": 200, "sluice.backend": "local",
        "gen_ai.response.time_to_first_chunk": 0.25,
        "gen_ai.usage.input_tokens": 12, "gen_ai.usage.output_tokens": 40,
        "gen_ai.response.model": "llama3-8b", "gen_ai.response.finish_reasons": ("stop",)}


def test_a_failed_stream_names_its_error_and_leaves_out_what_is_unknown() -> None:
    record = replace(RECORD, outcome="upstream_timeout", error="upstream_timeout",
                     error_id="err_1", status=None, backend=None, ttfb=None,
                     prompt_tokens=None, completion_tokens=None, key="team-a")
    assert genai.stream_end(record, response_model=None, finish_reasons=()) == {
        "sluice.outcome": "upstream_timeout", "sluice.attempts": 2, "sluice.chunks": 40,
        "sluice.key": "team-a", "error.type": "upstream_timeout", "sluice.error_id": "err_1"}


@pytest.mark.parametrize(("outcome", "status", "failed"), [
    ("completed", 200, False),
    ("client_disconnect", None, False),  # the client's doing
    ("rejected", 400, False),  # the client's request, refused upstream
    ("overloaded", 429, False),
    ("upstream_error", 200, True),  # in-band, after the first byte
    ("upstream_error", 502, True),
    ("upstream_timeout", 504, True),
    ("shutdown", 503, True),
    ("cancelled", 500, True),
])
def test_a_server_span_is_an_error_when_the_gateway_failed_the_client(
        outcome: str, status: int | None, failed: bool) -> None:
    assert genai.stream_failed(outcome, status) is failed


@pytest.mark.parametrize(("kind", "provider"), [
    ("openai", "openai"), ("ollama", "ollama"), ("simulated", "sluice.simulated")])
def test_an_attempts_provider_is_its_backends_kind(kind: str, provider: str) -> None:
    attributes = genai.attempt_start(operation="chat", backend="b", kind=kind, model="m",
                                     number=3, hedge=True, continuation=False)
    assert attributes == {
        "gen_ai.operation.name": "chat", "gen_ai.provider.name": provider,
        "gen_ai.request.model": "m", "sluice.backend": "b", "sluice.attempt": 3,
        "sluice.hedge": True, "sluice.continuation": False}
    assert genai.attempt_span_name("chat", "m") == "chat m"


@pytest.mark.parametrize(("outcome", "lost", "expected"), [
    ("cancelled", True, "lost"), ("cancelled", False, "cancelled"),
    ("completed", True, "completed"),  # a racer that ended before it lost keeps its end
    ("upstream_error", False, "upstream_error")])
def test_a_race_lost_is_its_own_outcome(outcome: str, lost: bool, expected: str) -> None:
    assert genai.attempt_outcome(outcome, lost=lost) == expected


def test_an_attempts_end_reads_the_upstreams_usage() -> None:
    assert genai.attempt_end(
        outcome="completed", error_type=None, error_id=None, response_model="m-1",
        finish_reasons=("stop",), usage={"prompt_tokens": 3, "completion_tokens": "7"},
        time_to_first_chunk=0.5) == {
        "sluice.outcome": "completed", "gen_ai.response.time_to_first_chunk": 0.5,
        "gen_ai.usage.input_tokens": 3,  # a count that is not a number is left out
        "gen_ai.response.model": "m-1", "gen_ai.response.finish_reasons": ("stop",)}
    assert genai.attempt_end(
        outcome="upstream_error", error_type="upstream_status", error_id="err_2",
        response_model=None, finish_reasons=(), usage=None, time_to_first_chunk=None) == {
        "sluice.outcome": "upstream_error", "error.type": "upstream_status",
        "sluice.error_id": "err_2"}
