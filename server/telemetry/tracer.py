"""What the stream core calls to trace a stream, and the tracer that does nothing (the default).

The stream's nursery (`server.stream.nursery`) opens one `StreamTrace` per
client request and ends it after the stream is settled; the pump
(`server.stream.pump`) opens one `AttemptTrace` per upstream attempt and
ends it in the attempt's ``finally``::

    trace = plan.tracer.stream(plan)                  # the server span
    span = trace.attempt(route, attempt)              # a client span, the server span's child
    async with backend.open_stream(request, span.upstream_headers()) as payloads: ...
    span.end(attempt, outcome, error)                 # in a `finally`
    trace.end(record)                                 # after the stream's record is made

The classes here are the *null* tracer: every method does nothing and
returns a shared object, so with ``[telemetry] traces = false`` a stream
pays a handful of method calls and nothing imports OpenTelemetry.
`server.telemetry.otel` subclasses them with real spans.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from server.access_log import StreamRecord
    from server.errors import SluiceError
    from server.limits.routing import Route
    from server.stream.attempt import Attempt
    from server.stream.nursery import StreamPlan

class HeaderLookup(Protocol):
    """A request's headers (a Quart request's, a dict)."""

    def get(self, key: str) -> str | None: ...


NO_HEADERS: Mapping[str, str] = {}
# The request headers a trace continues from (W3C Trace Context).
TRACE_HEADERS = ("traceparent", "tracestate")


class AttemptTrace:
    """One upstream attempt's span. This one records nothing."""

    __slots__ = ()

    def upstream_headers(self) -> Mapping[str, str]:
        """Headers to send upstream with the attempt (``traceparent``); none here."""
        return NO_HEADERS

    def end(self, attempt: Attempt, outcome: str, error: SluiceError | None) -> None:
        """The attempt ended: ``outcome`` as its metric's label, ``error`` how it failed."""


class StreamTrace:
    """One client request's span. This one records nothing."""

    __slots__ = ()

    def attempt(self, route: Route, attempt: Attempt) -> AttemptTrace:
        """A span for ``attempt``, about to be sent to ``route``."""
        return NULL_ATTEMPT

    def end(self, record: StreamRecord) -> None:
        """The stream has ended and been recorded."""


class Tracer:
    """Makes a stream's trace. This one makes none: traces are off."""

    __slots__ = ()
    enabled = False

    def parent_headers(self, headers: HeaderLookup) -> tuple[tuple[str, str], ...]:
        """What to keep of the request's headers for the stream's trace to continue from."""
        return ()

    def stream(self, plan: StreamPlan) -> StreamTrace:
        return NULL_STREAM

    async def aclose(self) -> None:
        """Export what is still buffered, and stop (when serving ends)."""


NULL_ATTEMPT = AttemptTrace()
NULL_STREAM = StreamTrace()
NULL_TRACER = Tracer()
