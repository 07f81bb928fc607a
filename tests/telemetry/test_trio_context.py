"""Why Sluice never makes a span current: the hazard under Trio, shown with the plain SDK.

An async generator that makes a span current (``start_as_current_span``)
and is abandoned mid-iteration — what a client leaving does to a stream's
iterators — is closed by Trio's finaliser in a system task, whose context
is not the one the span was attached in: OpenTelemetry fails to detach it.
And while it was suspended at its ``yield`` the span was current in its
consumer too. The way `server.telemetry.otel` does it — ``start_span``
with an explicit parent, ``end`` in ``finally`` — has neither problem.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator, Callable

import pytest
import trio
from opentelemetry import context, trace
from opentelemetry.context import Context
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

# Trio warns of every generator it has to finalise: here that is the point.
pytestmark = pytest.mark.filterwarnings("ignore:Async generator .*relay:ResourceWarning")
# Time for Trio's finaliser (a system task) to close an abandoned generator.
FINALISED = 0.05


def tracer_with(exporter: InMemorySpanExporter) -> trace.Tracer:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider.get_tracer("test")


async def abandon(relay: Callable[[], AsyncIterator[int]]) -> bool:
    """Take one item, then drop the generator as a client leaving would; let Trio close it.

    Returns whether a span was current in the consumer while the generator was suspended.
    """
    generator = relay()
    await generator.__anext__()
    current = trace.get_current_span().get_span_context().is_valid
    del generator
    gc.collect()
    await trio.sleep(FINALISED)
    return current


async def test_a_span_made_current_in_an_abandoned_generator_fails_to_detach(
        caplog: pytest.LogCaptureFixture) -> None:
    exporter = InMemorySpanExporter()
    tracer = tracer_with(exporter)

    async def relay() -> AsyncIterator[int]:
        # What `start_as_current_span` / `use_span` do, spelled out.
        span = tracer.start_span("relay")
        token = context.attach(trace.set_span_in_context(span))
        try:
            yield 1
            yield 2
        finally:
            context.detach(token)
            span.end()

    assert await abandon(relay)  # the generator's span leaked into its consumer
    assert "Failed to detach context" in caplog.text


async def test_a_span_started_explicitly_and_ended_in_finally_is_safe(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="opentelemetry")
    exporter = InMemorySpanExporter()
    tracer = tracer_with(exporter)

    async def relay() -> AsyncIterator[int]:
        span = tracer.start_span("relay", context=Context())
        try:
            yield 1
            yield 2
        finally:
            span.end()

    assert not await abandon(relay)
    assert [span.name for span in exporter.get_finished_spans()] == ["relay"]  # ended
    assert not caplog.records
