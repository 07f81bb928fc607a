"""Traces of every stream with OpenTelemetry, optional and free when off.

    tracer = open_tracer(settings.telemetry)   # the null tracer unless [telemetry] traces

One server span per client request, one client span per upstream attempt
as its child — retries, fail-overs, continuations and hedges each show as
one — with the GenAI semantic conventions' attributes. The pieces:

* `server.telemetry.tracer` — what the stream core calls, and the null
  tracer whose every call does nothing (the default: no OpenTelemetry import);
* `server.telemetry.genai` — the spans' attributes, pure functions of plain facts;
* `server.telemetry.otel` — the SDK wiring, spans started and ended explicitly
  (never a current span: Trio finalises async generators in another task).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from server.config import TelemetrySettings
from server.telemetry.tracer import NULL_TRACER, Tracer

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import SpanProcessor


def open_tracer(settings: TelemetrySettings, processor: SpanProcessor | None = None) -> Tracer:
    """The tracer ``settings`` ask for; ``processor`` replaces the exporter (tests)."""
    if not settings.traces:
        return NULL_TRACER
    from server.telemetry.otel import OtelTracer  # only now: the extra may not be installed

    return OtelTracer(settings, processor)
