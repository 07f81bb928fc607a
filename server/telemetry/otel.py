"""The tracer with real spans: OpenTelemetry's SDK, wired the Trio-safe way.

    tracer = OtelTracer(settings.telemetry)        # [telemetry] traces = true
    ...
    await tracer.aclose()                          # when serving ends: flush, stop

Imported only when traces are on (`server.telemetry.open_tracer`); the
optional extra ``sluice[otel]`` installs what it needs.

**Never a current span.** Trio finalises an abandoned async generator in a
system task, outside the task that iterated it, so a context attached in
the generator is detached in another context and OpenTelemetry reports
"Failed to detach context" (and a span made current across an ``await`` in
one task leaks into whatever that task runs next). So nothing here attaches
a context or calls ``use_span``: each span is started with
``start_span(..., context=parent)`` — the request's extracted
``traceparent`` for the server span, the server span for an attempt's —
kept by the object that owns it, and ended by the stream's code in a
``finally``. The upstream's ``traceparent`` is injected from the attempt
span's context the same way, explicitly.

The provider is Sluice's own, not OpenTelemetry's global one: an embedding
application's tracing is left alone, and each app has its own exporter.
Spans are exported by a `BatchSpanProcessor` (its own thread): ending a
span queues it and returns.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import TYPE_CHECKING

import trio
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, set_span_in_context
from opentelemetry.trace import Tracer as SpanMaker
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from server.config import TelemetrySettings
from server.telemetry import genai
from server.telemetry.tracer import (
    TRACE_HEADERS,
    AttemptTrace,
    HeaderLookup,
    StreamTrace,
    Tracer,
)

if TYPE_CHECKING:
    from server.access_log import StreamRecord
    from server.errors import SluiceError
    from server.limits.routing import Route
    from server.stream.attempt import Attempt
    from server.stream.nursery import StreamPlan

# W3C Trace Context, always: the global propagator (OTEL_PROPAGATORS) is the application's.
_PROPAGATOR = TraceContextTextMapPropagator()
# The longest serving's end waits for the last spans to be exported.
CLOSE_SECONDS = 5.0


class OtelTracer(Tracer):
    """Spans for every stream, exported as ``settings`` say (or to ``processor``: tests)."""

    __slots__ = ("_provider", "_tracer")
    enabled = True

    def __init__(self, settings: TelemetrySettings,
                 processor: SpanProcessor | None = None) -> None:
        self._provider = TracerProvider(
            resource=Resource.create({"service.name": settings.service_name}),
            sampler=ParentBased(TraceIdRatioBased(settings.sample_ratio)))
        self._provider.add_span_processor(
            processor if processor is not None else BatchSpanProcessor(_exporter(settings)))
        self._tracer = self._provider.get_tracer("sluice")

    def parent_headers(self, headers: HeaderLookup) -> tuple[tuple[str, str], ...]:
        return tuple((name, value) for name in TRACE_HEADERS
                     if (value := headers.get(name)) is not None)

    def stream(self, plan: StreamPlan) -> StreamTrace:
        # An empty carrier gives an empty context: a new trace, never the task's context.
        parent = _PROPAGATOR.extract(dict(plan.trace_headers))
        clock = _Clock()
        endpoint = plan.endpoint
        span = self._tracer.start_span(
            genai.stream_span_name(endpoint), context=parent, kind=SpanKind.SERVER,
            attributes=genai.stream_start(endpoint, model=plan.request.model,
                                          request_id=plan.request_id,
                                          stream=plan.request.stream),
            start_time=clock.wall_ns(plan.received_at))
        return _OtelStream(self._tracer, span, genai.operation_name(endpoint), clock)

    async def aclose(self) -> None:
        # The exporter's last batch may wait on a slow collector: in a thread, bounded.
        with trio.move_on_after(CLOSE_SECONDS):
            await trio.to_thread.run_sync(self._provider.shutdown, abandon_on_cancel=True)


class _Clock:
    """Trio's clock to the wall clock's nanoseconds, for spans' and events' times."""

    __slots__ = ("_offset",)

    def __init__(self) -> None:
        self._offset = time.time_ns() - int(trio.current_time() * 1e9)

    def wall_ns(self, trio_time: float) -> int:
        return self._offset + int(trio_time * 1e9)


class _OtelStream(StreamTrace):
    """The server span of one request, and what its attempts taught it."""

    __slots__ = ("_clock", "_context", "_operation", "_span", "_tracer", "finish_reasons",
                 "response_model")

    def __init__(self, tracer: SpanMaker, span: Span, operation: str, clock: _Clock) -> None:
        self._tracer = tracer
        self._span = span
        self._context = set_span_in_context(span, Context())  # the attempts' parent
        self._operation = operation
        self._clock = clock
        self.response_model: str | None = None
        self.finish_reasons: tuple[str, ...] = ()

    def attempt(self, route: Route, attempt: Attempt) -> AttemptTrace:
        settings = route.backend.settings
        model = settings.upstream_model or attempt.request.model
        span = self._tracer.start_span(
            genai.attempt_span_name(self._operation, model), context=self._context,
            kind=SpanKind.CLIENT, start_time=self._clock.wall_ns(attempt.started),
            attributes=genai.attempt_start(
                operation=self._operation, backend=route.name, kind=settings.kind, model=model,
                number=attempt.number, hedge=attempt.hedge,
                continuation=attempt.request.continues_answer))
        return _OtelAttempt(self, span)

    def end(self, record: StreamRecord) -> None:
        span = self._span
        span.set_attributes(genai.stream_end(record, response_model=self.response_model,
                                             finish_reasons=self.finish_reasons))
        if genai.stream_failed(record.outcome, record.status):
            span.set_status(Status(StatusCode.ERROR, record.error or record.outcome))
        span.end()


class _OtelAttempt(AttemptTrace):
    """The client span of one upstream attempt."""

    __slots__ = ("_headers", "_span", "_stream")

    def __init__(self, stream: _OtelStream, span: Span) -> None:
        self._stream = stream
        self._span = span
        self._headers: dict[str, str] = {}
        _PROPAGATOR.inject(self._headers, context=set_span_in_context(span, Context()))

    def upstream_headers(self) -> Mapping[str, str]:
        return self._headers

    def end(self, attempt: Attempt, outcome: str, error: SluiceError | None) -> None:
        span = self._span
        first = attempt.first_content_at
        span.set_attributes(genai.attempt_end(
            outcome=genai.attempt_outcome(outcome, lost=attempt.lost),
            error_type=None if error is None else (error.code or error.type),
            error_id=None if error is None else error.error_id,
            response_model=attempt.response_model, finish_reasons=attempt.finish_reasons,
            usage=attempt.usage,
            time_to_first_chunk=None if first is None else first - attempt.started))
        if error is not None:
            span.set_status(Status(StatusCode.ERROR, error.code or error.type))
        stream = self._stream
        if attempt.response_model is not None:
            stream.response_model = attempt.response_model
        if attempt.finish_reasons:
            stream.finish_reasons = attempt.finish_reasons
        span.end()


def _exporter(settings: TelemetrySettings) -> SpanExporter:
    if settings.exporter == "console":
        return ConsoleSpanExporter(service_name=settings.service_name)
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter(endpoint=settings.endpoint or None)
