"""End-to-end: the span tree of real streams, read from the SDK's in-memory exporter.

Sluice runs under hypercorn with ``[telemetry] traces = true`` in front of two
fake upstreams (a primary and a fallback, as in `tests.e2e.test_failover`);
the spans go to an `InMemorySpanExporter` through a `SimpleSpanProcessor`
(exported as each ends). Each test drives one stream and checks the tree:
one SERVER span for the client's request, one CLIENT child per upstream
attempt — and that every span *ended*, whatever ended the stream (only
ended spans are exported).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from server.config import parse_settings
from server.testing.fake_upstream import FakeUpstream, Scenario
from tests.conftest import RunningSluice, chat_body, running_sluice, wait_until
from tests.e2e.leaving import assert_upstream_closed, leave_mid_stream
from tests.e2e.test_failover import TEN, URL, stream, two_tier
from tests.e2e.test_failover import fallback as fallback
from tests.e2e.test_failover import primary as primary

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
SLOW_FIRST_TOKEN = 20.0  # a primary this slow is hedged (and loses)
HEDGE_AFTER = 0.3


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@asynccontextmanager
async def traced(exporter: InMemorySpanExporter, primary: FakeUpstream,
                 fallback: FakeUpstream, **sections: Any) -> AsyncIterator[RunningSluice]:
    telemetry = {"traces": True, **sections.pop("telemetry", {})}
    settings = two_tier(primary, fallback, telemetry=telemetry, **sections)
    async with running_sluice(settings, span_processor=SimpleSpanProcessor(exporter)) as sluice:
        yield sluice


async def server_span(exporter: InMemorySpanExporter) -> ReadableSpan:
    """The request's span, once it has ended (just after the client's last byte)."""
    def servers() -> list[ReadableSpan]:
        return [s for s in exporter.get_finished_spans() if s.kind is SpanKind.SERVER]

    await wait_until(lambda: len(servers()) > 0)
    [span] = servers()
    return span


def attempts(exporter: InMemorySpanExporter, parent: ReadableSpan) -> list[ReadableSpan]:
    """The CLIENT children of ``parent``, in the order they started."""
    children = [s for s in exporter.get_finished_spans() if s.kind is SpanKind.CLIENT
                and s.parent is not None and s.parent.span_id == parent.context.span_id]
    assert all(s.context.trace_id == parent.context.trace_id for s in children)
    return sorted(children, key=lambda s: s.start_time or 0)


def attrs(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})


async def test_a_stream_is_a_server_span_with_one_client_child(
    exporter: InMemorySpanExporter, primary: FakeUpstream, fallback: FakeUpstream
) -> None:
    async with traced(exporter, primary, fallback) as sluice:
        got = await stream(sluice, stream_options={"include_usage": True})
        assert got.content == TEN and got.done
        server = await server_span(exporter)
    assert server.name == "POST /v1/chat/completions"
    assert server.parent is None  # no traceparent came: a trace of its own
    assert server.status.status_code is StatusCode.UNSET
    a = attrs(server)
    assert a["gen_ai.operation.name"] == "chat"
    assert a["gen_ai.request.model"] == "fake-model"
    assert a["gen_ai.response.model"] == "fake-model"
    assert a["gen_ai.response.finish_reasons"] == ("stop",)
    assert a["gen_ai.usage.output_tokens"] == 10
    assert isinstance(a["gen_ai.usage.input_tokens"], int)
    assert a["gen_ai.response.time_to_first_chunk"] > 0
    assert a["sluice.outcome"] == "completed"
    assert a["sluice.backend"] == "primary"
    assert a["sluice.attempts"] == 1
    assert a["http.response.status_code"] == 200
    assert a["http.route"] == "/v1/chat/completions"
    assert "error.type" not in a and "sluice.error_id" not in a
    [attempt] = attempts(exporter, server)
    assert attempt.name == "chat fake-model"
    assert attempt.status.status_code is StatusCode.UNSET
    b = attrs(attempt)
    assert b["gen_ai.provider.name"] == "openai"
    assert b["gen_ai.request.model"] == "fake-model"
    assert b["gen_ai.response.model"] == "fake-model"
    assert b["gen_ai.response.finish_reasons"] == ("stop",)
    assert b["gen_ai.usage.output_tokens"] == 10
    assert b["sluice.backend"] == "primary"
    assert b["sluice.outcome"] == "completed"
    assert b["sluice.attempt"] == 1
    assert b["sluice.hedge"] is False and b["sluice.continuation"] is False
    assert 0 < b["gen_ai.response.time_to_first_chunk"] <= a["gen_ai.response.time_to_first_chunk"]
    # The child lies within its parent.
    assert server.start_time is not None and attempt.start_time is not None
    assert server.end_time is not None and attempt.end_time is not None
    assert server.start_time <= attempt.start_time <= attempt.end_time <= server.end_time


# Every endpoint that answers with a stream: its route, operation and body.
ENDPOINTS = [
    ("/v1/chat/completions", "chat", chat_body(stream=False)),
    ("/v1/completions", "text_completion", {"model": "fake-model", "prompt": "x",
                                            "stream": True}),
    ("/v1/responses", "chat", {"model": "fake-model", "input": "hello", "stream": True}),
    ("/chat", "chat", {"model": "fake-model", "stream": True,
                       "conversation": [{"role": "user", "content": "hello"}]}),
]


@pytest.mark.parametrize(("path", "operation", "body"), ENDPOINTS)
async def test_every_stream_endpoint_is_traced(
    exporter: InMemorySpanExporter, primary: FakeUpstream, fallback: FakeUpstream,
    path: str, operation: str, body: dict[str, Any],
) -> None:
    async with traced(exporter, primary, fallback,
                      primary_extra={"completions": True}) as sluice:
        async with httpx.AsyncClient(timeout=10) as client:
            response = await client.post(sluice.base_url + path, json=body)
        assert response.status_code == 200
        server = await server_span(exporter)
    assert server.name == f"POST {path}"
    assert attrs(server)["gen_ai.operation.name"] == operation
    assert attrs(server)["sluice.outcome"] == "completed"
    [attempt] = attempts(exporter, server)
    assert attempt.name == f"{operation} fake-model"
    assert attrs(attempt)["sluice.outcome"] == "completed"


async def test_a_client_leaving_mid_stream_ends_both_spans(
    exporter: InMemorySpanExporter, primary: FakeUpstream, fallback: FakeUpstream,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="opentelemetry")
    primary.scenario = Scenario(tokens=1000, tps=20)
    async with traced(exporter, primary, fallback) as sluice:
        left_at = await leave_mid_stream(sluice.base_url, URL, chat_body(), b'"content":"t',
                                         count=3)
        await assert_upstream_closed(primary, left_at)  # the upstream saw it end
        server = await server_span(exporter)
    assert attrs(server)["sluice.outcome"] == "client_disconnect"
    # The client left: not the gateway's failure, nor its upstream's.
    assert server.status.status_code is StatusCode.UNSET
    [attempt] = attempts(exporter, server)
    assert attrs(attempt)["sluice.outcome"] == "cancelled"
    assert attempt.status.status_code is StatusCode.UNSET
    assert "gen_ai.response.finish_reasons" not in attrs(attempt)  # it never finished
    assert attempt.end_time is not None and server.end_time is not None
    assert attempt.end_time <= server.end_time
    # No context was attached, so none failed to detach (the Trio hazard; README).
    assert not [r for r in caplog.records if r.name.startswith("opentelemetry")]


async def test_a_fail_over_is_two_children_the_first_failed(
    exporter: InMemorySpanExporter, primary: FakeUpstream, fallback: FakeUpstream
) -> None:
    primary.scenario = Scenario(status=500)
    async with traced(exporter, primary, fallback, retry={"same_backend_retries": 0}) as sluice:
        got = await stream(sluice)
        assert got.content == TEN and got.done
        server = await server_span(exporter)
    assert server.status.status_code is StatusCode.UNSET
    assert attrs(server)["sluice.outcome"] == "completed"
    assert attrs(server)["sluice.attempts"] == 2
    assert attrs(server)["sluice.backend"] == "fallback"
    failed, served = attempts(exporter, server)
    assert attrs(failed)["sluice.backend"] == "primary"
    assert failed.status.status_code is StatusCode.ERROR
    assert attrs(failed)["sluice.outcome"] == "upstream_error"
    assert attrs(failed)["error.type"]
    assert str(attrs(failed)["sluice.error_id"]).startswith("err_")
    assert attrs(served)["sluice.backend"] == "fallback"
    assert attrs(served)["sluice.attempt"] == 2
    assert served.status.status_code is StatusCode.UNSET
    assert attrs(served)["sluice.outcome"] == "completed"


async def test_a_continuation_is_a_child_of_its_own(
    exporter: InMemorySpanExporter, primary: FakeUpstream, fallback: FakeUpstream
) -> None:
    primary.scenario = Scenario(tokens=10, cut_after=4)
    async with traced(exporter, primary, fallback,
                      fallback_extra={"continuation": "prefill"}) as sluice:
        got = await stream(sluice)
        assert got.content == TEN and got.done and not got.errors
        server = await server_span(exporter)
    assert attrs(server)["sluice.outcome"] == "completed"
    assert attrs(server)["sluice.attempts"] == 2
    cut, continued = attempts(exporter, server)
    assert cut.status.status_code is StatusCode.ERROR
    assert attrs(cut)["error.type"] == "stream_truncated"
    assert attrs(cut)["sluice.continuation"] is False
    assert attrs(continued)["sluice.continuation"] is True
    assert attrs(continued)["sluice.backend"] == "fallback"
    assert attrs(continued)["sluice.outcome"] == "completed"
    assert attrs(continued)["gen_ai.response.finish_reasons"] == ("stop",)


async def test_a_hedge_race_is_two_children_the_loser_lost(
    exporter: InMemorySpanExporter, primary: FakeUpstream, fallback: FakeUpstream
) -> None:
    primary.scenario = Scenario(tokens=10, first_delay=SLOW_FIRST_TOKEN)
    async with traced(exporter, primary, fallback,
                      timeouts={"first_chunk": 60, "idle": 60},
                      models={"fake-model": {"hedge_after": HEDGE_AFTER}}) as sluice:
        got = await stream(sluice)
        assert got.content == TEN and got.done
        server = await server_span(exporter)
    assert attrs(server)["sluice.outcome"] == "completed"
    assert attrs(server)["sluice.backend"] == "fallback"
    loser, winner = attempts(exporter, server)
    assert attrs(loser)["sluice.backend"] == "primary"
    assert attrs(loser)["sluice.hedge"] is False
    assert attrs(loser)["sluice.outcome"] == "lost"
    assert loser.status.status_code is StatusCode.UNSET  # neither a success nor a failure
    assert attrs(winner)["sluice.backend"] == "fallback"
    assert attrs(winner)["sluice.hedge"] is True
    assert attrs(winner)["sluice.outcome"] == "completed"


async def test_an_incoming_traceparent_is_the_parent_and_goes_upstream(
    exporter: InMemorySpanExporter, primary: FakeUpstream, fallback: FakeUpstream
) -> None:
    headers = {"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01", "tracestate": "vendor=abc"}
    async with traced(exporter, primary, fallback) as sluice:
        async with httpx.AsyncClient(timeout=10) as client:
            response = await client.post(sluice.base_url + URL, headers=headers,
                                         json=chat_body(stream=False))
        assert response.status_code == 200
        server = await server_span(exporter)
    assert f"{server.context.trace_id:032x}" == TRACE_ID
    assert server.parent is not None and f"{server.parent.span_id:016x}" == PARENT_ID
    [attempt] = attempts(exporter, server)
    sent = primary.requests[0].headers
    # The upstream's parent is the attempt's span, in the caller's trace.
    assert sent["traceparent"] == f"00-{TRACE_ID}-{attempt.context.span_id:016x}-01"
    assert sent["tracestate"] == "vendor=abc"


async def test_a_malformed_traceparent_starts_a_new_trace(
    exporter: InMemorySpanExporter, primary: FakeUpstream, fallback: FakeUpstream
) -> None:
    async with traced(exporter, primary, fallback) as sluice:
        async with httpx.AsyncClient(timeout=10) as client:
            response = await client.post(sluice.base_url + URL, json=chat_body(stream=False),
                                         headers={"traceparent": "00-nonsense-01"})
        assert response.status_code == 200
        server = await server_span(exporter)
    assert server.parent is None
    [attempt] = attempts(exporter, server)
    assert f"{server.context.trace_id:032x}" in primary.requests[0].headers["traceparent"]
    assert attempt.parent is not None


async def test_traces_off_make_no_spans_and_send_no_traceparent(
    exporter: InMemorySpanExporter, primary: FakeUpstream, fallback: FakeUpstream
) -> None:
    headers = {"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01"}
    async with traced(exporter, primary, fallback, telemetry={"traces": False}) as sluice:
        async with httpx.AsyncClient(timeout=10) as client:
            response = await client.post(sluice.base_url + URL, headers=headers,
                                         json=chat_body(stream=False))
        assert response.status_code == 200
        await sluice.settle()
    assert exporter.get_finished_spans() == ()
    assert "traceparent" not in primary.requests[0].headers  # the client's is never forwarded


async def test_a_sample_ratio_of_zero_records_nothing_but_a_sampled_caller_is_obeyed(
    exporter: InMemorySpanExporter, primary: FakeUpstream, fallback: FakeUpstream
) -> None:
    async with traced(exporter, primary, fallback, telemetry={"sample_ratio": 0.0}) as sluice:
        async with httpx.AsyncClient(timeout=10) as client:
            first = await client.post(sluice.base_url + URL, json=chat_body(stream=False))
            assert first.status_code == 200
            await sluice.settle()
            assert exporter.get_finished_spans() == ()
            # Not sampled here, but the upstream still learns the trace (sampled flag off).
            flags = primary.requests[0].headers["traceparent"].rsplit("-", 1)[1]
            assert int(flags, 16) & 1 == 0
            second = await client.post(
                sluice.base_url + URL, json=chat_body(stream=False),
                headers={"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01"})
            assert second.status_code == 200
        server = await server_span(exporter)
    assert f"{server.context.trace_id:032x}" == TRACE_ID




async def test_an_ollama_backend_gets_the_traceparent_too(
    exporter: InMemorySpanExporter, primary: FakeUpstream
) -> None:
    settings = parse_settings({
        "backends": [{"name": "ollama", "kind": "ollama", "base_url": primary.origin,
                      "models": ["*"]}],
        "telemetry": {"traces": True}})
    async with running_sluice(settings, span_processor=SimpleSpanProcessor(exporter)) as sluice:
        got = await stream(sluice)
        assert got.content == TEN and got.done
        server = await server_span(exporter)
    [attempt] = attempts(exporter, server)
    assert attrs(attempt)["gen_ai.provider.name"] == "ollama"
    assert primary.requests[0].path == "/api/chat"
    _version, trace_id, parent_id, flags = primary.requests[0].headers["traceparent"].split("-")
    assert (trace_id, parent_id) == (f"{server.context.trace_id:032x}",
                                     f"{attempt.context.span_id:016x}")
    assert int(flags, 16) & 1  # sampled
