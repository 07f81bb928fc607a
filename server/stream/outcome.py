"""How a stream, or one upstream attempt of it, ended: one vocabulary for both and the metrics.

`Outcome` labels ``sluice_stream_outcomes_total{outcome}`` (a stream, from
its nursery) and ``sluice_upstream_requests_total{backend,outcome}`` (an
attempt, from the pump); `OUTCOMES` lists every label, so the metrics can
export zeros before the first event. An attempt ends in ``completed``,
``upstream_error``, ``upstream_timeout``, ``rejected`` or ``cancelled``; the
other labels describe only whole streams.

    outcome = stream_outcome(error)     # error: what the writer returned, None if complete
    outcome = attempt_outcome(error)    # error: how the attempt ended, None if complete
"""

from __future__ import annotations

from typing import Literal, get_args

from server.errors import (
    ShuttingDown,
    SluiceError,
    TooManyRequests,
    UpstreamStatusError,
    UpstreamTimeout,
)
from server.limits.retry_policy import counts_against_backend

Outcome = Literal[
    "completed",  # the upstream finished; the client got [DONE]
    "client_disconnect",  # the client left; the upstream was cancelled
    "upstream_error",  # refused, broken, malformed or cut upstream
    "upstream_timeout",  # connect, first-chunk or idle timeout
    "rejected",  # an upstream 4xx relayed to the client
    "overloaded",  # no admission slot freed in time (429)
    "shutdown",  # still running when the drain (or hypercorn's grace) ended: told to retry
    "cancelled",  # cancelled from outside with nothing left to tell; an attempt: never finished
]
OUTCOMES: tuple[Outcome, ...] = get_args(Outcome)


def stream_outcome(error: SluiceError | None) -> Outcome:
    """How a stream ended, from the error its writer returned (the client's leaving aside)."""
    if error is None:
        return "completed"
    if isinstance(error, UpstreamTimeout):
        return "upstream_timeout"
    if isinstance(error, TooManyRequests):
        return "overloaded"
    if isinstance(error, ShuttingDown):
        return "shutdown"
    if isinstance(error, UpstreamStatusError) and not error.retryable:
        return "rejected"
    return "upstream_error"


def attempt_outcome(error: SluiceError | None) -> Outcome:
    """How an upstream attempt that ran to its end went."""
    if error is None:
        return "completed"
    if isinstance(error, UpstreamTimeout):
        return "upstream_timeout"
    if not counts_against_backend(error):
        return "rejected"
    return "upstream_error"
